//! The model checker finds known bugs: each test plants one behind a test-only switch and
//! asserts that stateright reports a counterexample to the property it breaks, printing the
//! path it found and how many states it took.

use txn_modelcheck::twopc::{self, Bounds, Cluster};

fn counterexample(bounds: Bounds, cluster: Cluster, property: &'static str) {
    txn_modelcheck::counterexample(twopc::model(&bounds, cluster), property, None);
}

/// (a) The participant votes YES before its prepared record is durable. A crash then loses
/// the record; asked by its peer, the restarted participant records "never prepared" and
/// the peer aborts, while the coordinator had every YES and told the client COMMIT.
#[test]
fn vote_before_durable_breaks_atomicity() {
    let mut cluster = Cluster::new(2);
    cluster.bugs.vote_before_durable = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// (b) The coordinator answers ABORT to Resolve for a txn it is still deciding: an in-doubt
/// participant aborts while the others' YES votes lead to COMMIT.
#[test]
fn resolve_abort_for_undecided_breaks_atomicity() {
    let mut cluster = Cluster::new(2);
    cluster.bugs.resolve_aborts_undecided = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// Participants that drop outcomes, p2 running the resolver (as in the check of `twopc.rs`).
fn dropping_outcomes() -> Cluster {
    let mut cluster = Cluster::dropping_outcomes(2);
    cluster.resolvers = vec![false, true];
    cluster
}

/// (c) The coordinator tells the participants to forget an ended commit before the deletion
/// of its decision is durable. Its crash brings the decision back; the restarted coordinator
/// re-sends Commit to participants that no longer know the txn, which refuse it, and it
/// re-sends forever. Found first as a forgotten txn whose decision is still in the durable
/// log, and, after the crash, as a driven Commit that would be refused.
#[test]
fn forget_before_the_decision_is_gone_is_found() {
    let mut cluster = dropping_outcomes();
    cluster.bugs.forget_before_durable = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    counterexample(
        bounds.clone(),
        cluster.clone(),
        "a logged commit is never forgotten",
    );
    counterexample(bounds, cluster, "a driven commit is never refused");
}

/// (d) The coordinator tells a participant to forget the txn as soon as that one acks, while
/// the other is still in doubt: asked by its peer, the forgetful one finds no record,
/// records "never prepared" and answers ABORTED, and the peer aborts a committed txn.
#[test]
fn forget_before_every_ack_breaks_atomicity() {
    let mut cluster = dropping_outcomes();
    cluster.bugs.forget_before_all_acked = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// (e) A tombstone expires before the coordinator's prepare deadline: p1 recorded "never
/// prepared" for its in-doubt peer, which aborted on that word; the tombstone expires, p1's
/// Prepare arrives in time and is voted YES, and the coordinator commits.
#[test]
fn expiry_before_the_deadline_breaks_atomicity() {
    let mut cluster = dropping_outcomes();
    cluster.bugs.expire_before_deadline = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// (f) At the votes, a participant votes YES before its prepared record is durable (an answer
/// to the client before the last vote is durable): the coordinator tells the client COMMIT at
/// once, a crash loses the record, and the restarted participant, fenced by its peer's
/// question, makes the peer abort.
#[test]
fn at_the_votes_an_answer_before_the_last_vote_is_durable_is_found() {
    let mut cluster = Cluster::at_votes(2);
    cluster.bugs.vote_before_durable = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// (g) At the votes, the coordinator aborts on its deadline without fencing the missing
/// vote: that vote was durable all the same, so every participant is prepared, and a
/// resolver whose peers are all prepared commits what the client was told had aborted.
#[test]
fn at_the_votes_an_abort_without_a_fence_is_found() {
    let mut cluster = Cluster::at_votes(2);
    cluster.bugs.abort_without_fence = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}
