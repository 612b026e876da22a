//! What must survive kill -9: a participant's YES vote (its prepared record and its locks),
//! and the coordinator's commit decision (re-driven until every participant acks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tonic::{Request, Response, Status};
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions, free_port};

fn add(key: &str, delta: i64) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min: Some(0),
            max: None,
        })),
    }
}

fn prepare(txn: &str, ops: Vec<pb::Op>) -> pb::PrepareRequest {
    pb::PrepareRequest {
        writers: vec![],
        txn_id: txn.into(),
        coordinator_epoch: 1,
        participants: vec!["p1".into()],
        ops,
        read_only: false,
        commit_point: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_keeps_its_yes_vote_and_locks_across_kill_9() -> anyhow::Result<()> {
    // The test plays the coordinator. The real one is stopped before the participant restarts:
    // it never ran this txn, so if asked it would rightly answer ABORT (presumed abort).
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        participant_args: vec!["--resolve-after-ms".into(), "600000".into()],
        ..Default::default()
    })
    .await?;
    let mut p1 = cluster.participant_client("p1").await?;
    let vote = p1
        .prepare(prepare("test.1", vec![add("acct", 5)]))
        .await?
        .into_inner();
    assert_eq!(vote.vote, pb::Vote::Yes as i32, "{}", vote.reason);

    cluster.coordinator.kill();
    cluster.participant("p1").kill();
    cluster.participant("p1").start().await?;
    let mut p1 = cluster.participant_client("p1").await?;

    let state = p1
        .get_txn_state(pb::TxnStateRequest {
            txn_id: "test.1".into(),
        })
        .await?
        .into_inner()
        .state;
    assert_eq!(
        state,
        pb::TxnState::Prepared as i32,
        "the prepared record survived"
    );
    let read = p1
        .read(pb::ReadRequest {
            keys: vec![b"acct".to_vec()],
        })
        .await
        .expect_err("the key is still locked by the in-doubt txn");
    assert_eq!(read.code(), tonic::Code::Aborted, "{}", read.message());
    assert!(read.message().contains("test.1"), "{}", read.message());
    let other = p1
        .prepare(prepare("test.2", vec![add("acct", 1)]))
        .await?
        .into_inner();
    assert_eq!(
        other.vote,
        pb::Vote::No as i32,
        "a conflicting txn cannot take the lock"
    );
    assert!(other.reason.contains("lock conflict"), "{}", other.reason);

    p1.commit(pb::CommitRequest {
        txn_id: "test.1".into(),
    })
    .await?;
    let values = p1
        .read(pb::ReadRequest {
            keys: vec![b"acct".to_vec()],
        })
        .await?
        .into_inner()
        .values;
    assert_eq!(
        values[0].value.as_deref(),
        Some(&b"5"[..]),
        "the prepared write applied"
    );
    // Commit is idempotent, also after another restart.
    cluster.participant("p1").kill();
    cluster.participant("p1").start().await?;
    let mut p1 = cluster.participant_client("p1").await?;
    p1.commit(pb::CommitRequest {
        txn_id: "test.1".into(),
    })
    .await?;
    let values = p1
        .read(pb::ReadRequest {
            keys: vec![b"acct".to_vec()],
        })
        .await?
        .into_inner()
        .values;
    assert_eq!(
        values[0].value.as_deref(),
        Some(&b"5"[..]),
        "applied exactly once"
    );
    cluster.shutdown()?;
    Ok(())
}

/// A participant that votes YES to everything and acks Commit only when told to.
#[derive(Clone, Default)]
struct FakeParticipant {
    ack_commits: Arc<AtomicBool>,
    commit_calls: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl pb::participant_server::Participant for FakeParticipant {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Yes as i32,
            ..Default::default()
        }))
    }
    type PrepareBatchStream = futures::stream::BoxStream<'static, Result<pb::BatchedVote, Status>>;
    async fn prepare_batch(
        &self,
        _: Request<pb::PrepareBatchRequest>,
    ) -> Result<Response<Self::PrepareBatchStream>, Status> {
        // Like a participant of an older version: the coordinator falls back to Prepare.
        Err(Status::unimplemented("fake"))
    }
    async fn commit(
        &self,
        _: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.commit_calls.fetch_add(1, Ordering::SeqCst);
        if self.ack_commits.load(Ordering::SeqCst) {
            self.acked.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(pb::CommitResponse {}))
        } else {
            Err(Status::unavailable("fake participant is not acking yet"))
        }
    }
    async fn commit_one_phase(
        &self,
        _: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        // Also older: single-branch txns fall back to two phases.
        Err(Status::unimplemented("fake"))
    }
    async fn commit_batch(
        &self,
        _: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        // Like a participant of an older version: the coordinator falls back to Commit.
        Err(Status::unimplemented("fake"))
    }
    async fn abort(
        &self,
        _: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        Ok(Response::new(pb::AbortResponse {}))
    }
    async fn read(
        &self,
        _: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_txn_state(
        &self,
        _: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn query_peer(
        &self,
        _: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_outcomes(
        &self,
        _: Request<pb::ListOutcomesRequest>,
    ) -> Result<Response<pb::ListOutcomesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn execute(
        &self,
        _: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn compensate(
        &self,
        _: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_barriers(
        &self,
        _: Request<pb::ListBarriersRequest>,
    ) -> Result<Response<pb::ListBarriersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn end_sagas(
        &self,
        _: Request<pb::EndSagasRequest>,
    ) -> Result<Response<pb::EndSagasResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn start_transfer(
        &self,
        _: Request<pb::StartTransferRequest>,
    ) -> Result<Response<pb::StartTransferResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_transfer(
        &self,
        _: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::TransferInfo>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_transfers(
        &self,
        _: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn coordinator_stats(cluster: &Cluster) -> anyhow::Result<pb::StatsResponse> {
    Ok(cluster
        .stats_client("coordinator")
        .await?
        .get_stats(pb::StatsRequest {})
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_keeps_its_commit_decision_across_kill_9() -> anyhow::Result<()> {
    let fake = FakeParticipant::default();
    let port = free_port()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::participant_server::ParticipantServer::new(fake.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 0,
        external_participants: vec![("f1".into(), url.clone()), ("f2".into(), url)],
        coordinator_args: vec!["--commit-retry-max-ms".into(), "50".into()],
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let branch = |p: &str| pb::Branch {
        participant: p.into(),
        ops: vec![add("k", 1)],
    };
    let resp = client
        .transact(pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: vec![branch("f1"), branch("f2")],
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
            commit_point: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        resp.outcome,
        pb::Outcome::Committed as i32,
        "{}",
        resp.reason
    );
    let epoch_before = coordinator_stats(&cluster).await?.epoch;

    cluster.coordinator.kill();
    let calls_at_crash = fake.commit_calls.load(Ordering::SeqCst);
    cluster.coordinator.start().await?;

    let stats = coordinator_stats(&cluster).await?;
    assert_eq!(
        stats.epoch,
        epoch_before + 1,
        "the epoch is bumped at every start"
    );
    assert_eq!(stats.in_doubt, 1, "the commit decision was reloaded");
    let mut client = cluster.coordinator_client().await?;
    let decision = client
        .resolve(pb::ResolveRequest {
            txn_id: resp.txn_id.clone(),
            commit_point: 0,
            from_coordinator: false,
        })
        .await?
        .into_inner()
        .decision;
    assert_eq!(decision, pb::Decision::Commit as i32);
    let unknown = client
        .resolve(pb::ResolveRequest {
            txn_id: format!("{epoch_before}.999999"),
            commit_point: 0,
            from_coordinator: false,
        })
        .await?
        .into_inner()
        .decision;
    assert_eq!(unknown, pb::Decision::Abort as i32, "presumed abort");

    // Wait for the restarted coordinator to re-send Commit, then let the fake ack.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.commit_calls.load(Ordering::SeqCst) <= calls_at_crash {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Commit re-sent after restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.ack_commits.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while coordinator_stats(&cluster).await?.in_doubt > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "decision never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.acked.load(Ordering::SeqCst),
        2,
        "both branches acked once"
    );
    cluster.shutdown()?;
    server.abort();
    Ok(())
}
