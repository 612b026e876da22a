//! Coordinators over a real three-member etcd cluster (Debian's etcd-server, started here on
//! loopback ports): one killed with kill -9 under load is taken over by the others; an etcd
//! member lost, then its leader, and then a quorum, lose nothing; a coordinator paused past its
//! lease is fenced and stops. Every guarantee is checked from what the participants durably
//! recorded.
//!
//! The tests run one at a time (each starts eight processes on a small machine).

use std::time::{Duration, Instant};

use anyhow::Context;
use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Outcome, Protocol, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 1_000;
/// The coordinators' lease TTL (the default).
const TTL: Duration = Duration::from_secs(2);
/// The failover bound: the lease TTL plus one second.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);
/// The participants' resolver asks every 100 ms and backs off to at most 200 ms between
/// asks (their flags below): a participant learns an outcome up to that long after a
/// coordinator could give it.
const RESOLVER_SCHEDULE: Duration = Duration::from_millis(300);
/// How long any wait for an event here may take before the test gives up.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(coordinators: usize) -> ClusterOptions {
    options_at(coordinators, "decision")
}

fn options_at(coordinators: usize, commit_point: &str) -> ClusterOptions {
    ClusterOptions {
        participants: 3,
        coordinators,
        etcd: true,
        lease_ttl_secs: TTL.as_secs(),
        coordinator_args: [
            "--commit-retry-max-ms",
            "200",
            "--prepare-timeout-ms",
            "1000",
            "--rpc-timeout-ms",
            "1000",
            "--commit-point",
            commit_point,
        ]
        .map(String::from)
        .to_vec(),
        participant_args: [
            "--resolve-after-ms",
            "500",
            "--resolve-interval-ms",
            "100",
            "--resolve-backoff-max-ms",
            "200",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    }
}

async fn stats(cluster: &Cluster, node: &str) -> anyhow::Result<pb::StatsResponse> {
    Ok(cluster
        .stats_client(node)
        .await?
        .get_stats(pb::StatsRequest {})
        .await?
        .into_inner())
}

/// Waits until `cond` holds, polling every 20 ms, for at most [`EVENT_TIMEOUT`].
async fn wait_for<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !cond().await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {EVENT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Checks every guarantee from the participants' records once the cluster is quiet; returns
/// what they recorded.
async fn check_all(
    cluster: &Cluster,
    accounts: &[bank::Account],
    history: &[bank::Record],
    seeding: &[String],
) -> anyhow::Result<bank::Observed> {
    let unresolved = bank::wait_quiet(cluster, EVENT_TIMEOUT).await?;
    anyhow::ensure!(unresolved == 0, "{unresolved} txns still unresolved");
    let observed = bank::observe(cluster, accounts, history, Protocol::TwoPhase).await?;
    let initial = vec![BALANCE; accounts.len()];
    let (_, phantoms) = bank::resolve_unknown(history, &observed, seeding);
    let mut problems = bank::check(&initial, history, &observed);
    problems.extend(phantoms);
    anyhow::ensure!(problems.is_empty(), "violations: {problems:#?}");
    anyhow::ensure!(
        observed.balances.iter().sum::<i64>() == BALANCE * accounts.len() as i64,
        "the bank's total changed"
    );
    Ok(observed)
}

/// The coordinator with the most txns in flight (collecting votes, deciding, or committing),
/// once one has any.
async fn busiest_coordinator(cluster: &Cluster) -> anyhow::Result<String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut best = (0, String::new());
        for name in cluster.coordinator_names() {
            let s = stats(cluster, &name).await?;
            if s.in_flight + s.in_doubt > best.0 {
                best = (s.in_flight + s.in_doubt, name);
            }
        }
        if best.0 > 0 {
            return Ok(best.1);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no coordinator had txns in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_under_load_is_taken_over_within_the_bound() -> anyhow::Result<()> {
    kill_the_busiest_under_load("decision").await
}

/// At the votes nothing is logged: the killed coordinator's txns are settled by their
/// participants (every one prepared: committed) once a live coordinator sends them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_votes_a_killed_coordinators_txns_settle_within_the_bound() -> anyhow::Result<()> {
    kill_the_busiest_under_load("votes").await
}

async fn kill_the_busiest_under_load(commit_point: &str) -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(options_at(3, commit_point)).await?;
    let mut coords = cluster.coordinators()?;
    let accounts = bank::accounts(3, 30);
    let seeding = bank::seed(&mut coords, &accounts, BALANCE).await?;
    let workload = Workload {
        clients: 12,
        transfers: usize::MAX,
        duration: Duration::from_secs(6),
        overdraft_share: 0.1,
        refusal_share: 0.0,
        seed: 18,
        protocol: Protocol::TwoPhase,
        local: false,
        // The coordinators' --commit-point.
        commit_point: pb::CommitPoint::Unspecified,
    };
    let runner = {
        let (coords, accounts, w) = (coords.clone(), accounts.clone(), workload.clone());
        tokio::spawn(async move { bank::run(&coords, &accounts, BALANCE, &w).await })
    };
    // The coordinator with the most txns in flight dies right after a commit decision is
    // durable in etcd, before any Commit is sent: a decision only a takeover can finish. (At
    // the votes the same crash point is "every YES is in, nobody told": nothing to take over.)
    let victim = busiest_coordinator(&cluster).await?;
    let victim_epoch = stats(&cluster, &victim).await?.epoch;
    cluster
        .set_failpoint(&victim, "coordinator::after_decision_durable", "crash")
        .await?;
    cluster.node(&victim).wait_exit(EVENT_TIMEOUT).await?;
    let killed_at = txn_types::unix_ms();
    let others: Vec<String> = cluster
        .coordinator_names()
        .into_iter()
        .filter(|n| *n != victim)
        .collect();
    if commit_point == "decision" {
        wait_for(
            "another coordinator took the victim's decision over",
            || {
                let (cluster, others) = (&cluster, &others);
                async move {
                    let mut adopted = 0;
                    for n in others {
                        adopted += stats(cluster, n).await?.adopted;
                    }
                    Ok(adopted > 0)
                }
            },
        )
        .await?;
    }
    let history = runner.await?;
    let tally = bank::tally(&history);
    anyhow::ensure!(tally.committed > 0, "nothing committed: {tally:?}");
    let observed = check_all(&cluster, &accounts, &history, &seeding).await?;

    // How long the victim's txns stayed in doubt after the kill, from the participants'
    // records: every one of them was settled within the bound.
    let mut failover_ms = 0;
    let victims_txn = format!("{victim_epoch}.");
    for (txn, recs) in &observed.outcomes {
        if !txn.starts_with(&victims_txn) {
            continue;
        }
        for r in recs {
            if r.prepared_at_unix_ms > 0 && r.prepared_at_unix_ms <= killed_at {
                failover_ms = failover_ms.max(r.at_unix_ms.saturating_sub(killed_at));
            }
        }
    }
    anyhow::ensure!(
        failover_ms > 0,
        "no txn of the victim was in doubt at the kill: the test proved nothing"
    );
    println!(
        "commit point {commit_point}: victim {victim} (epoch {victim_epoch}): its txns settled \
         {failover_ms} ms after the kill (bound {} ms + resolver schedule {} ms)",
        FAILOVER_BOUND.as_millis(),
        RESOLVER_SCHEDULE.as_millis()
    );
    anyhow::ensure!(
        Duration::from_millis(failover_ms) <= FAILOVER_BOUND + RESOLVER_SCHEDULE,
        "the victim's txns stayed in doubt {failover_ms} ms after the kill"
    );
    // Clients that used the victim went on at the others.
    let after = history
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Committed { .. }))
        .filter(|r| r.at > Duration::from_millis(500))
        .count();
    anyhow::ensure!(after > 0, "nothing committed after the kill");
    cluster.shutdown()?;
    Ok(())
}

/// One transfer of one unit from account 0 to account 1 through coordinator `i`'s own client,
/// no failover, with a deadline: what the client was told, as the checks take it.
async fn one_transfer(
    cluster: &Cluster,
    i: usize,
    accounts: &[bank::Account],
    started: Instant,
) -> anyhow::Result<(bank::Record, Option<tonic::Status>)> {
    let mut client = cluster.coordinators()?.client(i);
    let add = |a: &bank::Account, delta: i64, min: Option<i64>| pb::Branch {
        participant: a.participant.clone(),
        ops: vec![pb::Op {
            kind: Some(pb::op::Kind::Add(pb::AddOp {
                key: a.key.as_bytes().to_vec(),
                delta,
                min,
                max: None,
            })),
        }],
    };
    let mut req = tonic::Request::new(pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: vec![add(&accounts[0], -1, Some(0)), add(&accounts[1], 1, None)],
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: 0,
    });
    req.set_timeout(Duration::from_secs(3));
    let t0 = Instant::now();
    let (outcome, refusal) = match client.transact(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.outcome == pb::Outcome::Committed as i32 {
                (Outcome::Committed { txn: r.txn_id }, None)
            } else {
                (
                    Outcome::Aborted {
                        txn: r.txn_id,
                        reason: r.reason,
                    },
                    None,
                )
            }
        }
        Err(s) if bank::never_started(&s) => (
            Outcome::NotStarted {
                error: s.message().to_owned(),
            },
            Some(s),
        ),
        Err(s) => (
            Outcome::Unknown {
                error: s.message().to_owned(),
            },
            Some(s),
        ),
    };
    let record = bank::Record {
        transfer: bank::Transfer {
            from: 0,
            to: 1,
            amount: 1,
            refused_credit: false,
        },
        outcome,
        latency: t0.elapsed(),
        at: started.elapsed(),
    };
    Ok((record, refusal))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_member_loss_leader_loss_and_quorum_loss_lose_nothing() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(options(2)).await?;
    let mut coords = cluster.coordinators()?;
    let accounts = bank::accounts(3, 30);
    let seeding = bank::seed(&mut coords, &accounts, BALANCE).await?;
    let workload = Workload {
        clients: 8,
        transfers: usize::MAX,
        duration: Duration::from_secs(8),
        overdraft_share: 0.1,
        refusal_share: 0.0,
        seed: 19,
        protocol: Protocol::TwoPhase,
        local: false,
        // The coordinators' --commit-point.
        commit_point: pb::CommitPoint::Unspecified,
    };
    let runner = {
        let (coords, accounts, w) = (coords.clone(), accounts.clone(), workload.clone());
        tokio::spawn(async move { bank::run(&coords, &accounts, BALANCE, &w).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A follower, then the leader: each loss leaves a quorum.
    let leader = cluster.etcd.as_mut().context("etcd")?.leader().await?;
    let follower = format!("e{}", (leader + 1) % 3 + 1);
    cluster.node(&follower).kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.node(&follower).start().await?;
    let leader = format!(
        "e{}",
        cluster.etcd.as_mut().context("etcd")?.leader().await? + 1
    );
    cluster.node(&leader).kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.node(&leader).start().await?;
    cluster.etcd.as_ref().context("etcd")?.wait_formed().await?;

    // Two members gone: no quorum. New txns are refused as never started, and whatever was in
    // flight waits for etcd.
    let etcd_leader = cluster.etcd.as_mut().context("etcd")?.leader().await?;
    let (a, b) = ((etcd_leader + 1) % 3, (etcd_leader + 2) % 3);
    for m in [a, b] {
        cluster.node(&format!("e{}", m + 1)).kill();
    }
    let started = Instant::now();
    let mut extra = Vec::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let (record, refusal) = one_transfer(&cluster, 0, &accounts, started).await?;
        extra.push(record);
        if matches!(&refusal, Some(s) if s.code() == tonic::Code::Unavailable && bank::never_started(s))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "transfers without a quorum of etcd were not refused: {extra:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in [a, b] {
        cluster.node(&format!("e{}", m + 1)).start().await?;
    }
    cluster.etcd.as_ref().context("etcd")?.wait_formed().await?;
    loop {
        let (record, _) = one_transfer(&cluster, 0, &accounts, started).await?;
        let committed = matches!(record.outcome, Outcome::Committed { .. });
        extra.push(record);
        if committed {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline + EVENT_TIMEOUT,
            "no transfer committed once etcd was back: {extra:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut history = runner.await?;
    anyhow::ensure!(bank::tally(&history).committed > 0, "nothing committed");
    history.extend(extra);
    check_all(&cluster, &accounts, &history, &seeding).await?;
    for name in cluster.coordinator_names() {
        anyhow::ensure!(
            cluster.node(&name).is_running(),
            "{name} stopped: losing etcd for a while must not cost a coordinator its lease"
        );
    }
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_paused_past_its_lease_is_fenced_and_stops() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(options(2)).await?;
    let mut coords = cluster.coordinators()?;
    let accounts = bank::accounts(3, 30);
    let seeding = bank::seed(&mut coords, &accounts, BALANCE).await?;
    // c1 holds a commit decision it has not sent yet (its driver sleeps right after the
    // decision is durable), and then the whole process stops past its lease: c2 takes the
    // decision over and finishes it.
    cluster
        .set_failpoint("c1", "coordinator::after_decision_durable", "sleep(4000)")
        .await?;
    let stuck = tokio::spawn({
        let coords = coords.clone();
        let accounts = accounts.clone();
        async move {
            bank::transfer(
                &mut coords.client(0),
                0,
                &accounts,
                bank::Transfer {
                    from: 0,
                    to: 1,
                    amount: 5,
                    refused_credit: false,
                },
                Protocol::TwoPhase,
                pb::CommitPoint::Unspecified,
            )
            .await
        }
    });
    let etcd = cluster.etcd.as_ref().context("etcd")?.client()?;
    wait_for("c1's decision is durable in etcd", || {
        let etcd = &etcd;
        async move { Ok(!etcd.scan(b"txnkit/c/", b"", 0).await?.0.is_empty()) }
    })
    .await?;
    cluster.node("c1").pause()?;
    let taken = wait_for("c2 took over c1's decision", || {
        let cluster = &cluster;
        async move { Ok(stats(cluster, "c2").await?.adopted > 0) }
    })
    .await;
    if let Err(e) = taken {
        anyhow::bail!(
            "{e}\nc1:\n{}\nc2:\n{}",
            cluster.node("c1").log_tail(30),
            cluster.node("c2").log_tail(30)
        );
    }
    // Woken, c1 finds its lease gone: whatever it writes is refused, and it stops.
    cluster.node("c1").resume()?;
    let status = cluster.node("c1").wait_exit(EVENT_TIMEOUT).await?;
    anyhow::ensure!(!status.success(), "c1 exited cleanly: {status}");
    anyhow::ensure!(
        cluster.node("c1").log_tail(50).contains("lease"),
        "c1 did not say it lost its lease:\n{}",
        cluster.node("c1").log_tail(20)
    );
    let told = stuck.await?;
    let history = vec![bank::Record {
        transfer: bank::Transfer {
            from: 0,
            to: 1,
            amount: 5,
            refused_credit: false,
        },
        outcome: told,
        latency: Duration::ZERO,
        at: Duration::ZERO,
    }];
    check_all(&cluster, &accounts, &history, &seeding).await?;
    cluster.shutdown()?;
    Ok(())
}

/// Keys under `prefix` of the coordinators' etcd log (their default `--etcd-prefix`).
async fn etcd_keys(cluster: &Cluster, prefix: &str) -> anyhow::Result<usize> {
    let client = cluster.etcd.as_ref().context("etcd")?.client()?;
    let prefix = format!("txnkit/{prefix}");
    let (kvs, more) = client.scan(prefix.as_bytes(), b"", 0).await?;
    anyhow::ensure!(!more, "a scan without a limit said more follow");
    Ok(kvs.len())
}

/// Sagas end faster than one etcd transaction can drop them: a second of retention, many
/// sagas due at each sweep. Every ended saga's record, expiry entry and end notice leaves
/// etcd, and the coordinators keep running (a sweep batch etcd refused would stop them, and
/// the records would stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ended_sagas_leave_etcd_after_their_retention() -> anyhow::Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut opts = options(2);
    opts.coordinator_args
        .extend(["--saga-retention-secs", "1"].map(String::from));
    let cluster = Cluster::start(opts).await?;
    let mut coords = cluster.coordinators()?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut coords, &accounts, BALANCE).await?;
    let workload = Workload {
        clients: 8,
        transfers: usize::MAX,
        duration: Duration::from_secs(4),
        overdraft_share: 0.1,
        seed: 23,
        protocol: Protocol::Saga,
        local: false,
        commit_point: pb::CommitPoint::Unspecified,
        refusal_share: 0.0,
    };
    let history = bank::run(&coords, &accounts, BALANCE, &workload).await;
    let ended = bank::tally(&history);
    anyhow::ensure!(
        ended.committed > 150,
        "too few sagas to fill a sweep: {ended:?}"
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let left = [
            etcd_keys(&cluster, "s/").await?,
            etcd_keys(&cluster, "se/").await?,
            etcd_keys(&cluster, "sx/").await?,
            etcd_keys(&cluster, "sn/").await?,
        ];
        if left == [0; 4] {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "saga records left in etcd (s/, se/, sx/, sn/): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut cluster = cluster;
    for name in cluster.coordinator_names() {
        anyhow::ensure!(
            cluster.node(&name).is_running(),
            "{name} stopped while sweeping ended sagas"
        );
    }
    // (The sagas' outcomes are not checked here: their records are gone by design. The other
    // tests check sagas over etcd against the participants.)
    cluster.shutdown()?;
    Ok(())
}
