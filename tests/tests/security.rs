//! Security and observability against running processes: a cluster under mutual TLS refuses
//! clients without a certificate, with one from another CA, or in plaintext; the operator
//! services refuse calls without the bearer token or with a wrong one (also through txnctl);
//! the Prometheus endpoint, gRPC reflection and JSON logs work.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use txn_proto::pb::v1 as pb;
use txn_server::net::{BearerToken, ClientTls, TlsArgs};
use txn_tests::cluster::{Cluster, ClusterOptions, bin_dir};

const TOKEN: &str = "test-admin-token-0123456789";

fn txnctl(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_dir().unwrap().join("txnctl"));
    cmd.args(args).env_remove("TXNCTL_TOKEN");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run txnctl")
}

fn certs(dir: &Path, nodes: &[&str]) {
    let mut args = vec!["certs", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(nodes);
    let out = txnctl(&args, &[]);
    assert!(
        out.status.success(),
        "txnctl certs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls(ca: &Path, identity: Option<(&Path, &str)>) -> ClientTls {
    ClientTls::load(&TlsArgs {
        tls_ca: Some(ca.join("ca.pem")),
        tls_cert: identity.map(|(d, n)| d.join(format!("{n}.pem"))),
        tls_key: identity.map(|(d, n)| d.join(format!("{n}.key"))),
    })
    .unwrap()
}

/// One Transact over `tls`; Ok(outcome) or the error status.
async fn try_transfer(url: &str, tls: &ClientTls) -> Result<i32, tonic::Status> {
    let ch = tls
        .endpoint("url", url, Duration::from_secs(2))
        .unwrap()
        .connect_lazy();
    let mut c = pb::coordinator_client::CoordinatorClient::new(ch);
    let req = pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: ["p1", "p2"]
            .iter()
            .enumerate()
            .map(|(i, p)| pb::Branch {
                participant: p.to_string(),
                ops: vec![pb::Op {
                    kind: Some(pb::op::Kind::Add(pb::AddOp {
                        key: b"acct".to_vec(),
                        delta: if i == 0 { -1 } else { 1 },
                        min: None,
                        max: None,
                    })),
                }],
            })
            .collect(),
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: 0,
    };
    c.transact(req).await.map(|r| r.into_inner().outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_the_admin_token_keep_strangers_out() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    let theirs = dir.path().join("theirs");
    certs(&ours, &["coordinator", "p1", "p2", "client"]);
    certs(&theirs, &["client", "coordinator"]);
    let cluster = Cluster::start(ClusterOptions {
        participants: 2,
        tls_dir: Some(ours.clone()),
        admin_token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = cluster.coordinator.url();

    // A client with a certificate of the cluster's CA: the txn commits, which also proves
    // the coordinator and the participants talk over mutual TLS.
    let good = tls(&ours, Some((&ours, "client")));
    assert_eq!(
        try_transfer(&url, &good).await.unwrap(),
        pb::Outcome::Committed as i32
    );

    let refusals = [
        ("plaintext", ClientTls::default()),
        ("TLS without a client certificate", tls(&ours, None)),
        (
            "client certificate from another CA",
            tls(&ours, Some((&theirs, "client"))),
        ),
        (
            "server not trusted (other CA)",
            tls(&theirs, Some((&theirs, "client"))),
        ),
    ];
    for (what, t) in refusals {
        let r = try_transfer(&url, &t).await;
        let s = r.expect_err(what);
        println!("{what}: refused with {:?}: {}", s.code(), s.message());
        // How the refusal surfaces depends on when the server drops the connection (TLS 1.3
        // checks the client certificate after the handshake): always a transport failure.
        assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{what}: {s:?}"
        );
    }
    // None of the refused calls moved money: only the first transfer did.
    for (p, expected) in [(0, -1), (1, 1)] {
        let ch = good
            .endpoint(
                "url",
                &cluster.participants[p].url(),
                Duration::from_secs(2),
            )
            .unwrap()
            .connect_lazy();
        let mut client = pb::participant_client::ParticipantClient::new(ch);
        let mut attempts = 0;
        let value = loop {
            let r = client
                .read(pb::ReadRequest {
                    keys: vec![b"acct".to_vec()],
                })
                .await;
            match r {
                Ok(r) => break r.into_inner().values[0].value.clone(),
                // Still locked by the committed transfer for a moment.
                Err(s) if s.code() == Code::Aborted && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => panic!("{s:?}"),
            }
        };
        let v: i64 = String::from_utf8(value.unwrap()).unwrap().parse().unwrap();
        assert_eq!(v, expected, "participant {p}");
    }

    // The operator services want the token.
    let ch = good
        .endpoint("url", &url, Duration::from_secs(2))
        .unwrap()
        .connect_lazy();
    let admin = |token: Option<&str>| {
        pb::admin_client::AdminClient::with_interceptor(
            ch.clone(),
            BearerToken::new(token).unwrap(),
        )
    };
    for (what, token) in [
        ("no token", None),
        ("wrong token", Some("not-the-admin-token-000")),
    ] {
        let s = admin(token)
            .status(pb::AdminStatusRequest {})
            .await
            .expect_err(what);
        println!("admin call with {what}: {:?}: {}", s.code(), s.message());
        assert_eq!(s.code(), Code::Unauthenticated, "{what}");
        assert!(s.message().contains("authorization"), "{}", s.message());
    }
    let status = admin(Some(TOKEN))
        .status(pb::AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.participants.len(), 2);
    assert!(
        status.participants.iter().all(|p| p.healthy),
        "{:?}",
        status.participants
    );
    // The coordinator passes the token on to the participants' admin service: a txn left
    // prepared at p1 shows up as in doubt.
    let p1 = good
        .endpoint(
            "url",
            &cluster.participants[0].url(),
            Duration::from_secs(2),
        )
        .unwrap()
        .connect_lazy();
    let vote = pb::participant_client::ParticipantClient::new(p1.clone())
        .prepare(pb::PrepareRequest {
            writers: vec![],
            txn_id: "orphan.1".into(),
            coordinator_epoch: 1,
            participants: vec!["p1".into(), "p2".into()],
            ops: vec![pb::Op {
                kind: Some(pb::op::Kind::Read(pb::ReadOp { key: b"x".to_vec() })),
            }],
            read_only: false,
            commit_point: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vote.vote, pb::Vote::Yes as i32, "{}", vote.reason);
    let listed = admin(Some(TOKEN))
        .list_txns(pb::ListTxnsRequest {
            state: pb::TxnPhase::InDoubt as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.txns.iter().any(|t| t.txn_id == "orphan.1"),
        "{listed:?}"
    );
    // A participant's admin service and the failpoints want the token too.
    let s = pb::participant_admin_client::ParticipantAdminClient::new(p1.clone())
        .in_doubt(pb::InDoubtRequest::default())
        .await
        .expect_err("participant admin without token");
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = pb::failpoints_client::FailpointsClient::new(p1.clone())
        .set_failpoint(pb::SetFailpointRequest {
            name: "participant::after_commit_apply".into(),
            action: "crash".into(),
        })
        .await
        .expect_err("failpoint without token");
    assert_eq!(s.code(), Code::Unauthenticated);
    // Counting records scans the store: an operator's call too.
    let s = pb::stats_client::StatsClient::new(p1.clone())
        .get_record_counts(pb::RecordCountsRequest {})
        .await
        .expect_err("record counts without token");
    assert_eq!(s.code(), Code::Unauthenticated);
    let counts = pb::stats_client::StatsClient::with_interceptor(
        p1.clone(),
        BearerToken::new(Some(TOKEN)).unwrap(),
    )
    .get_record_counts(pb::RecordCountsRequest {})
    .await
    .unwrap()
    .into_inner()
    .counts;
    let prepared = counts.iter().find(|c| c.prefix == "p/").map(|c| c.records);
    assert_eq!(
        prepared,
        Some(1),
        "the orphan's prepared record: {counts:?}"
    );

    // txnctl: one line and exit 1 without the token; works with it.
    let ca = ours.join("ca.pem");
    let cert = ours.join("client.pem");
    let key = ours.join("client.key");
    let base = [
        "--coordinator",
        url.as_str(),
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "status",
    ];
    let out = txnctl(&base, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("authorization"), "{err}");
    println!("txnctl status without token: {}", err.trim_end());
    let out = txnctl(&base, &[("TXNCTL_TOKEN", TOKEN)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And txnctl in plaintext against the TLS cluster.
    let out = txnctl(
        &["--coordinator", url.as_str(), "status"],
        &[("TXNCTL_TOKEN", TOKEN)],
    );
    assert_eq!(out.status.code(), Some(1));
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the sample `name` (with labels, exactly as exposed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflection_and_json_logs() {
    let cluster = Cluster::start(ClusterOptions {
        participants: 2,
        metrics: true,
        participant_args: vec!["--log-format".into(), "json".into()],
        env: vec![("RUST_LOG".into(), "info,txn_participant=debug".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = cluster.coordinator.url();
    let plain = ClientTls::default();
    let committed = 12;
    for _ in 0..committed {
        assert_eq!(
            try_transfer(&url, &plain).await.unwrap(),
            pb::Outcome::Committed as i32
        );
    }
    // The Commits go out after the client is answered: wait until every one is acked.
    let mut coord = String::new();
    for _ in 0..100 {
        coord = scrape(cluster.coordinator.metrics_addr.unwrap()).await;
        if sample(&coord, "txn_commit_seconds_count") >= committed as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("--- coordinator /metrics ---\n{coord}");
    assert_eq!(
        sample(
            &coord,
            "txn_txns_total{protocol=\"two_phase\",outcome=\"committed\"}"
        ),
        committed as f64
    );
    assert_eq!(
        sample(&coord, "txn_prepare_seconds_count"),
        committed as f64
    );
    assert_eq!(sample(&coord, "txn_commit_seconds_count"), committed as f64);
    assert!(sample(&coord, "txn_group_commit_batch_writes_count") >= 1.0);
    assert_eq!(sample(&coord, "txn_in_doubt_txns"), 0.0);
    assert_eq!(sample(&coord, "txn_sagas_parked"), 0.0);
    let p1 = scrape(cluster.participants[0].metrics_addr.unwrap()).await;
    println!("--- p1 /metrics ---\n{p1}");
    assert_eq!(sample(&p1, "txn_prepare_seconds_count"), committed as f64);
    assert_eq!(sample(&p1, "txn_commit_seconds_count"), committed as f64);
    assert!(sample(&p1, "txn_fsyncs_total") >= 1.0);
    assert_eq!(sample(&p1, "txn_disk_degraded"), 0.0);

    // Reflection lists the services, so grpcurl-like tools work without the .proto files.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let ch = cluster.channel(&url).unwrap();
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    println!("reflection: {names:?}");
    for s in [
        "txn.v1.Coordinator",
        "txn.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }

    // JSON logs: every line is an object, and the prepare spans carry the txn id.
    let log = std::fs::read_to_string(cluster.participants[0].log_path()).unwrap();
    let mut with_txn = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {line}");
        });
        if v["span"]["txn"].is_string() {
            with_txn += 1;
        }
    }
    assert!(
        with_txn >= committed,
        "only {with_txn} log lines carry a txn id:\n{log}"
    );
}
