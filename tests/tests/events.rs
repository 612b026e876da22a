//! The outbox, the change feed, the events protocol and the read model, against real
//! processes: kill -9 of a participant and of the read model mid-stream, with every event
//! then found applied exactly once; the read model's txn-consistent view under 2PC and its
//! rebuild; what the feed serves, refuses to serve, and prunes.

use std::time::{Duration, Instant};

use tonic::Code;
use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Protocol, Violation, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 1_000;
/// How long the system may take to settle once the workload stops.
const QUIET: Duration = Duration::from_secs(60);

fn workload(protocol: Protocol, seed: u64) -> Workload {
    Workload {
        clients: 4,
        transfers: usize::MAX,
        duration: Duration::from_secs(4),
        overdraft_share: 0.1,
        refusal_share: 0.1,
        seed,
        protocol,
        local: false,
        commit_point: Default::default(),
    }
}

/// Polls `cond` (every 20 ms, at most `limit`) until it holds.
async fn until<F, Fut>(what: &str, limit: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !cond().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Every check a quiet bank run must pass, from what the participants and the read model hold.
async fn checked(
    cluster: &Cluster,
    accounts: &[bank::Account],
    history: &[bank::Record],
    seeding: &[String],
    protocol: Protocol,
) -> anyhow::Result<(bank::Observed, Vec<Violation>)> {
    let observed = bank::observe(cluster, accounts, history, protocol).await?;
    let initial = vec![BALANCE; accounts.len()];
    let (_, mut problems) = bank::resolve_unknown(history, &observed, seeding);
    problems.extend(bank::check(&initial, history, &observed));
    problems.extend(bank::check_transfers(
        &initial, accounts, history, &observed,
    ));
    problems.extend(bank::check_readmodel(&observed, accounts));
    Ok((observed, problems))
}

async fn readmodel_applied(cluster: &Cluster) -> anyhow::Result<Vec<u64>> {
    let s = cluster
        .readmodel_client()?
        .status(pb::ReadModelStatusRequest {})
        .await?
        .into_inner();
    Ok(s.feeds.iter().map(|f| f.applied).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_applied_once_across_kill_9_of_a_participant_and_the_read_model()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        readmodel: true,
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    let seeding = bank::seed(&mut client, &accounts, BALANCE).await?;
    let w = workload(Protocol::Events, 17);
    let runner = {
        let (client, accounts) = (client.clone(), accounts.clone());
        tokio::spawn(async move { bank::run(&client, &accounts, BALANCE, &w).await })
    };
    // Mid-stream: the read model is applying every feed while transfers keep coming.
    until("the read model applies transfers", QUIET, || async {
        Ok(readmodel_applied(&cluster).await?.iter().all(|n| *n > 20))
    })
    .await?;
    cluster.node("readmodel").kill();
    cluster.node("p2").kill();
    let killed_at = txn_types::unix_ms();
    // Transfers to p2 are accepted at its peers while it is down; the read model misses
    // every feed meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.node("p2").start().await?;
    cluster.node("readmodel").start().await?;
    let history = runner.await?;
    assert_eq!(bank::wait_quiet(&cluster, QUIET).await?, 0, "settled");

    let (observed, problems) =
        checked(&cluster, &accounts, &history, &seeding, Protocol::Events).await?;
    assert!(problems.is_empty(), "{:#?}", bank::to_strings(&problems));
    let spans = bank::transfer_spans(&observed);
    assert!(
        spans.len() > 50,
        "a real workload: {} transfers",
        spans.len()
    );
    assert!(
        spans
            .iter()
            .any(|t| t.accepted_at < killed_at && t.settled_at.is_some_and(|s| s > killed_at)),
        "some transfer was in flight across the crash"
    );
    assert!(
        spans.iter().any(|t| t.refunded),
        "some credit was refused and refunded"
    );
    // Exactly once, counted: the read model applied every event of every feed once (it
    // restarted mid-stream, resumed where the feeds held it, and suppressed what came again).
    let rm = observed.feeds.readmodel.as_ref().expect("a read model");
    for f in &rm.feeds {
        let head = observed.feeds.feeds[&f.participant].head;
        assert_eq!((f.applied, f.offset), (head, head), "{f:?}");
    }
    assert_eq!(rm.consistent, observed.balances);
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_never_shows_half_a_two_phase_txn_and_rebuilds_the_same_view()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        readmodel: true,
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    let seeding = bank::seed(&mut client, &accounts, BALANCE).await?;
    let total = BALANCE * accounts.len() as i64;
    assert_eq!(bank::wait_quiet(&cluster, QUIET).await?, 0);
    let w = workload(Protocol::TwoPhase, 23);
    let runner = {
        let (client, accounts) = (client.clone(), accounts.clone());
        tokio::spawn(async move { bank::run(&client, &accounts, BALANCE, &w).await })
    };
    let refs: Vec<pb::AccountRef> = accounts
        .iter()
        .map(|a| pb::AccountRef {
            participant: a.participant.clone(),
            key: a.key.as_bytes().to_vec(),
        })
        .collect();
    let mut rm = cluster.readmodel_client()?;
    let mut reads = 0;
    let mut moved = false;
    let first = rm
        .get_balances(pb::GetBalancesRequest {
            accounts: refs.clone(),
            consistent: true,
            limit: 0,
        })
        .await?
        .into_inner();
    while !runner.is_finished() {
        let r = rm
            .get_balances(pb::GetBalancesRequest {
                accounts: refs.clone(),
                consistent: true,
                limit: 0,
            })
            .await?
            .into_inner();
        let sum: i64 = r
            .balances
            .iter()
            .map(|b| txn_types::types::decode_counter(b.value.as_deref()).unwrap())
            .sum();
        assert_eq!(sum, total, "a consistent answer showed half a txn: {r:?}");
        moved |= r.balances != first.balances;
        reads += 1;
    }
    assert!(
        reads > 20 && moved,
        "{reads} reads, the view moved: {moved}"
    );
    let history = runner.await?;
    assert_eq!(bank::wait_quiet(&cluster, QUIET).await?, 0);
    let (observed, problems) =
        checked(&cluster, &accounts, &history, &seeding, Protocol::TwoPhase).await?;
    assert!(problems.is_empty(), "{:#?}", bank::to_strings(&problems));

    // A rebuild from offset 0 gives back the same view.
    let mut admin = pb::read_model_admin_client::ReadModelAdminClient::new(
        cluster.channel(&cluster.url_of("readmodel")?)?,
    );
    admin.rebuild(pb::RebuildRequest {}).await?;
    assert_eq!(bank::wait_quiet(&cluster, QUIET).await?, 0);
    let again = bank::observe(&cluster, &accounts, &history, Protocol::TwoPhase).await?;
    let rm_again = again.feeds.readmodel.expect("a read model");
    assert_eq!(rm_again.consistent, observed.balances);
    assert_eq!(rm_again.raw, observed.balances);
    let status = rm.status(pb::ReadModelStatusRequest {}).await?.into_inner();
    assert_eq!(status.rebuilds, 1);
    cluster.shutdown()?;
    Ok(())
}

/// One participant, its events pruned as soon as every consumer is past them, and the read
/// model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_serves_in_order_and_refuses_what_it_does_not_keep() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        participant_args: vec!["--event-retention-secs".into(), "0".into()],
        readmodel: true,
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let put = |key: &str| pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: vec![pb::Branch {
            participant: "p1".into(),
            ops: vec![pb::Op {
                kind: Some(pb::op::Kind::Put(pb::PutOp {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                })),
            }],
        }],
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: 0,
    };
    // A consumer registered from offset 0 holds every event until it acknowledges it (with
    // no consumer at all, and no retention, events would go at once).
    let mut feed = cluster.feed_client("p1")?;
    let mut stream = feed
        .subscribe(pb::SubscribeRequest {
            consumer: "t".into(),
            from_offset: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    for k in ["a", "b"] {
        client.transact(put(k)).await?;
    }
    let status_client = feed.clone();
    let head = || {
        let mut feed = status_client.clone();
        async move {
            anyhow::Ok(
                feed.feed_status(pb::FeedStatusRequest {})
                    .await?
                    .into_inner()
                    .head,
            )
        }
    };
    assert_eq!(head().await?, 2);

    // (That only durable events are sent is tested at the driver, where a sync can be held
    // back: `participant/src/subscribe.rs`.)
    client.transact(put("c")).await?;
    assert_eq!(head().await?, 3);

    // What the feed refuses, each with its code and the field named.
    let refused = |r: Result<tonic::Response<pb::AckResponse>, tonic::Status>, code: Code| {
        let s = r.expect_err("refused");
        assert_eq!(s.code(), code, "{s:?}");
        s.message().to_owned()
    };
    let msg = refused(
        feed.ack(pb::AckRequest {
            consumer: "nobody".into(),
            offset: 1,
        })
        .await,
        Code::NotFound,
    );
    assert!(msg.contains("consumer"), "{msg}");
    let s = feed
        .subscribe(pb::SubscribeRequest {
            consumer: "t".into(),
            from_offset: 9,
            ..Default::default()
        })
        .await
        .expect_err("beyond the head");
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    let s = feed
        .subscribe(pb::SubscribeRequest {
            consumer: "bad name".into(),
            from_offset: 0,
            ..Default::default()
        })
        .await
        .expect_err("a bad name");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("consumer"), "{s:?}");

    // The consumer got every event, in order, each once it was durable.
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        let batch = stream.message().await?.expect("a batch");
        assert!(batch.events.iter().all(|e| e.participant == "p1"));
        offsets.extend(batch.events.iter().map(|e| e.offset));
    }
    assert_eq!(offsets, vec![0, 1, 2]);
    let msg = refused(
        feed.ack(pb::AckRequest {
            consumer: "t".into(),
            offset: 99,
        })
        .await,
        Code::InvalidArgument,
    );
    assert!(msg.contains("offset"), "{msg}");
    let floor = || {
        let mut feed = status_client.clone();
        async move {
            anyhow::Ok(
                feed.feed_status(pb::FeedStatusRequest {})
                    .await?
                    .into_inner()
                    .floor,
            )
        }
    };
    feed.ack(pb::AckRequest {
        consumer: "t".into(),
        offset: 2,
    })
    .await?;
    until("the acknowledged events are pruned", QUIET, || async {
        Ok(floor().await? == 2)
    })
    .await?;
    // Pruned: refused, never skipped, for a subscription and for a read.
    let s = feed
        .subscribe(pb::SubscribeRequest {
            consumer: "late".into(),
            from_offset: 0,
            ..Default::default()
        })
        .await
        .expect_err("pruned");
    assert_eq!(s.code(), Code::OutOfRange);
    assert!(s.message().contains("pruned"), "{s:?}");
    let s = feed
        .read_events(pb::ReadEventsRequest {
            from_offset: 1,
            limit: 0,
        })
        .await
        .expect_err("pruned");
    assert_eq!(s.code(), Code::OutOfRange);
    drop(stream);
    // A consumer forgotten holds nothing back: everything goes.
    let mut admin = pb::participant_admin_client::ParticipantAdminClient::new(
        cluster.channel(&cluster.url_of("p1")?)?,
    );
    let r = admin
        .forget_consumer(pb::ForgetConsumerRequest {
            consumer: "t".into(),
        })
        .await?;
    assert!(r.into_inner().forgotten);
    until("every event is pruned", QUIET, || async {
        Ok(floor().await? == 3)
    })
    .await?;
    // The history is gone, so the read model cannot be rebuilt from offset 0: refused, and
    // its view kept.
    let mut admin = pb::read_model_admin_client::ReadModelAdminClient::new(
        cluster.channel(&cluster.url_of("readmodel")?)?,
    );
    let s = admin
        .rebuild(pb::RebuildRequest {})
        .await
        .expect_err("history pruned");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("p1 keeps offsets 3..3"), "{s:?}");
    let kept = cluster
        .readmodel_client()?
        .get_balances(pb::GetBalancesRequest {
            accounts: vec![],
            consistent: false,
            limit: 0,
        })
        .await?
        .into_inner();
    assert_eq!(kept.balances.len(), 3, "a, b and c: {kept:?}");
    cluster.shutdown()?;
    Ok(())
}
