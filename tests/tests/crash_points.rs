//! One test per crash point: arm the failpoint, run concurrent transfers until it fires,
//! restart the crashed process (and only then), wait for quiet, and check that every txn is
//! atomic, nothing acknowledged is lost, and nothing is left in doubt. Plus a seeded run of
//! kill -9 at random moments.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 100;
/// Generous: recovery is driven by backoffs of a few hundred milliseconds.
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
const CRASH_TIMEOUT: Duration = Duration::from_secs(60);

/// Short recovery timers, so the tests spend their time on the protocol, not on waiting.
fn options() -> ClusterOptions {
    ClusterOptions {
        participants: 3,
        coordinator_args: vec![
            "--commit-retry-max-ms".into(),
            "200".into(),
            "--saga-retry-max-ms".into(),
            "200".into(),
            "--prepare-timeout-ms".into(),
            "1000".into(),
        ],
        participant_args: vec![
            "--resolve-after-ms".into(),
            "300".into(),
            "--resolve-interval-ms".into(),
            "50".into(),
            "--resolve-backoff-max-ms".into(),
            "300".into(),
        ],
        ..Default::default()
    }
}

async fn in_doubt_at_live_participants(cluster: &mut Cluster) -> u64 {
    let mut n = 0;
    let names: Vec<String> = cluster
        .participants
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for name in names {
        if !cluster.participant(&name).is_running() {
            continue;
        }
        if let Ok(mut c) = cluster.stats_client(&name).await
            && let Ok(s) = c.get_stats(pb::StatsRequest {}).await
        {
            n += s.into_inner().in_doubt;
        }
    }
    n
}

async fn crash_and_recover(node: &str, failpoint: &str, seed: u64) -> anyhow::Result<()> {
    crash_and_recover_with(node, failpoint, seed, false, options()).await
}

/// The cluster of [`options`] with the coordinator committing 2PC txns at their votes.
fn at_the_votes() -> ClusterOptions {
    let mut o = options();
    o.coordinator_args
        .extend(["--commit-point".into(), "votes".into()]);
    o
}

/// With `local`, every transfer has one branch, so it commits in one phase.
async fn crash_and_recover_with(
    node: &str,
    failpoint: &str,
    seed: u64,
    local: bool,
    options: ClusterOptions,
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    // Let the seeding txn's Commits land first, so the crash point fires under the workload.
    bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
    cluster.set_failpoint(node, failpoint, "crash").await?;

    let workload = Workload {
        clients: 8,
        transfers: 400,
        duration: Duration::from_secs(90),
        overdraft_share: 0.1,
        refusal_share: 0.0,
        seed,
        protocol: bank::Protocol::TwoPhase,
        local,
        commit_point: Default::default(),
    };
    let runner = {
        let accounts = accounts.clone();
        tokio::spawn(async move { bank::run(&client, &accounts, BALANCE, &workload).await })
    };
    let status = cluster.node(node).wait_exit(CRASH_TIMEOUT).await?;
    assert!(
        !status.success(),
        "{node} must die at {failpoint}, exited with {status}"
    );
    // Give the survivors a moment to notice; then count what they hold in doubt.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_doubt = in_doubt_at_live_participants(&mut cluster).await;
    cluster.node(node).start().await?;
    let restarted = Instant::now();
    let history = runner.await?;
    let left = bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
    let resolved_in = restarted.elapsed();
    let tally = bank::tally(&history);
    println!(
        "{failpoint}: {tally:?}; {in_doubt} txns in doubt at survivors after the crash; \
         quiet {resolved_in:?} after restart"
    );
    assert_eq!(left, 0, "txns still in doubt after recovery");
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    let problems = bank::check(&vec![BALANCE; accounts.len()], &history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        tally.committed > 0,
        "the run must commit something: {tally:?}"
    );
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_before_decision_durable() -> anyhow::Result<()> {
    crash_and_recover("coordinator", "coordinator::before_decision_durable", 11).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_decision_durable() -> anyhow::Result<()> {
    crash_and_recover("coordinator", "coordinator::after_decision_durable", 12).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_crash_after_partial_commit() -> anyhow::Result<()> {
    crash_and_recover("coordinator", "coordinator::after_partial_commit", 13).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_before_prepare_durable() -> anyhow::Result<()> {
    crash_and_recover("p2", "participant::before_prepare_durable", 14).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_prepare_durable() -> anyhow::Result<()> {
    crash_and_recover("p2", "participant::after_prepare_durable", 15).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_commit_apply() -> anyhow::Result<()> {
    crash_and_recover("p1", "participant::after_commit_apply", 16).await
}

/// One-phase commit (single-branch transfers): the participant dies with the branch applied
/// but not durable. The coordinator, having lost the answer, settles the txn with an Abort
/// once the participant is back; the client must then hear ABORTED, and nothing may show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_before_one_phase_durable() -> anyhow::Result<()> {
    crash_and_recover_with(
        "p1",
        "participant::before_one_phase_durable",
        17,
        true,
        options(),
    )
    .await
}

/// As above, but the branch is durable when the participant dies: the settling Abort is
/// refused, and the client must hear COMMITTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_crash_after_one_phase_durable() -> anyhow::Result<()> {
    crash_and_recover_with(
        "p1",
        "participant::after_one_phase_durable",
        18,
        true,
        options(),
    )
    .await
}

/// At the votes: the coordinator dies at the commit point (every YES durable, nothing logged,
/// nobody told). The restarted coordinator has no record of those txns; the participants'
/// resolvers are sent to their peers, find every one prepared, and commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_votes_coordinator_crash_after_the_last_yes() -> anyhow::Result<()> {
    let fp = "coordinator::after_decision_durable";
    crash_and_recover_with("coordinator", fp, 21, false, at_the_votes()).await
}

/// At the votes: a participant dies before its YES is durable; the txn must abort behind a
/// fence, and the others' durable YES must not be taken for a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_votes_participant_crash_before_prepare_durable() -> anyhow::Result<()> {
    let fp = "participant::before_prepare_durable";
    crash_and_recover_with("p2", fp, 22, false, at_the_votes()).await
}

/// At the votes: a participant dies with its YES durable but unsent; the coordinator's fence
/// (once the participant is back) finds it prepared, so the txn commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_votes_participant_crash_after_prepare_durable() -> anyhow::Result<()> {
    let fp = "participant::after_prepare_durable";
    crash_and_recover_with("p2", fp, 23, false, at_the_votes()).await
}

/// kill -9 of a random process at random moments during a few thousand transfers. The seed is
/// printed; set TXN_TEST_SEED to replay a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kill_9_keeps_every_txn_atomic() -> anyhow::Result<()> {
    random_kill_9(options(), 3000).await
}

/// The same at the votes, with fewer transfers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_votes_random_kill_9_keeps_every_txn_atomic() -> anyhow::Result<()> {
    random_kill_9(at_the_votes(), 1500).await
}

async fn random_kill_9(options: ClusterOptions, transfers: usize) -> anyhow::Result<()> {
    let seed: u64 = std::env::var("TXN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261126);
    println!("random kill -9 seed: {seed} (replay with TXN_TEST_SEED={seed})");
    let mut cluster = Cluster::start(options).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 60);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    let workload = Workload {
        clients: 8,
        transfers,
        duration: Duration::from_secs(120),
        overdraft_share: 0.1,
        refusal_share: 0.0,
        seed,
        protocol: bank::Protocol::TwoPhase,
        local: false,
        commit_point: Default::default(),
    };
    let runner = {
        let accounts = accounts.clone();
        tokio::spawn(async move { bank::run(&client, &accounts, BALANCE, &workload).await })
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = ["coordinator", "p1", "p2", "p3"];
    let mut kills = Vec::new();
    while !runner.is_finished() && kills.len() < 8 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..800))).await;
        let mut victim = nodes[rng.random_range(0..nodes.len())];
        if kills.len() == 2 && !kills.contains(&"coordinator") {
            // Every run kills the coordinator at least once, whatever the seed.
            victim = "coordinator";
        }
        cluster.node(victim).kill();
        kills.push(victim);
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
        cluster.node(victim).start().await?;
    }
    let history = runner.await?;
    let left = bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
    let tally = bank::tally(&history);
    println!("kills: {kills:?}; {tally:?}");
    assert!(!kills.is_empty(), "the run ended before any kill");
    assert_eq!(left, 0, "txns still in doubt after every process is back");
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    let problems = bank::check(&vec![BALANCE; accounts.len()], &history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "seed {seed}:\n{}", problems.join("\n"));
    cluster.shutdown()?;
    Ok(())
}
