//! Traces across services: with --otlp-endpoint on every service, one client request is one
//! trace. A small OTLP/gRPC collector runs in the test; a client sends a 2PC transfer and a
//! saga, each with its own W3C `traceparent`, and the spans of each must reach the collector
//! from three processes (the coordinator and both participants) under the client's trace id,
//! named after the txn.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use tonic::{Request, Response, Status};
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

/// The collector: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        name: s.name,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// The services that sent spans of `trace_id`, the names of its spans, and of those that
    /// name `txn` (as their txn or saga).
    fn of_trace(&self, trace_id: &str, txn: &str) -> [BTreeSet<String>; 3] {
        let spans = self.0.lock().unwrap();
        let of: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let naming = of.iter().filter(|s| {
            s.attributes.get("txn").map(String::as_str) == Some(txn)
                || s.attributes.get("saga").map(String::as_str) == Some(txn)
        });
        [
            of.iter().map(|s| s.service.clone()).collect(),
            of.iter().map(|s| s.name.clone()).collect(),
            naming.map(|s| s.name.clone()).collect(),
        ]
    }
}

fn transfer(protocol: pb::Protocol) -> pb::TransactRequest {
    let add = |key: &str, delta: i64| pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min: None,
            max: None,
        })),
    };
    pb::TransactRequest {
        protocol: protocol as i32,
        branches: vec![
            pb::Branch {
                participant: "p1".into(),
                ops: vec![add("a", -1)],
            },
            pb::Branch {
                participant: "p2".into(),
                ops: vec![add("b", 1)],
            },
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_txn_is_one_trace_across_three_processes() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        env: vec![("TXN_OTLP_ENDPOINT".into(), endpoint)],
        ..Default::default()
    })
    .await?;
    let mut coordinator = cluster.coordinator_client().await?;
    let services: BTreeSet<String> = [
        "txn-coordinator",
        "txn-participant-p1",
        "txn-participant-p2",
    ]
    .map(String::from)
    .into();
    // Spans each protocol's trace must hold: those naming its txn, at the coordinator and at
    // the participants, and the commit phase's calls, which come after the client's answer.
    let expected = [
        (pb::Protocol::TwoPhase, ["txn", "prepare"], "commit_batch"),
        (
            pb::Protocol::Saga,
            ["saga", "execute"],
            "/txn.v1.Participant/Execute",
        ),
    ];
    for (i, (protocol, naming, also)) in expected.into_iter().enumerate() {
        let trace_id = format!("{:032x}", 0x7c0ffee0_u128 + i as u128);
        let mut request = Request::new(transfer(protocol));
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01").parse()?,
        );
        let resp = coordinator.transact(request).await?.into_inner();
        assert_eq!(
            resp.outcome,
            pb::Outcome::Committed as i32,
            "{}",
            resp.reason
        );
        // Spans are exported in batches every half second: wait for them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let [from, names, named] = collector.of_trace(&trace_id, &resp.txn_id);
            if from == services && naming.iter().all(|n| named.contains(*n)) && names.contains(also)
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{protocol:?} txn {}: spans of trace {trace_id} came from {from:?}: {names:?}, \
                 those naming it: {named:?}; all spans: {:#?}",
                resp.txn_id,
                collector.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.shutdown()?;
    server.abort();
    Ok(())
}
