//! The three ways `harness compare` reads every balance while the workload runs:
//! - **composed**: each service's Read, in parallel (API composition), not atomic;
//! - **atomic**: one read-only 2PC txn across every participant;
//! - **readmodel**: one query of the read model's txn-consistent view.
//!
//! Each read takes every account and every participant's staleness marker. A marker writer
//! commits `marker = N` at each participant in turn (one-phase) and notes when each commit was
//! acknowledged. A read that began at `t` and saw marker `N` at a participant missed every
//! marker after `N` acknowledged before `t`; its staleness is how long before `t` the first
//! of those was acknowledged (0 if none). A read whose total is not the bank's saw money in
//! flight (a saga or transfer between its steps) or a torn transfer (half of a 2PC commit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;
use txn_proto::pb::v1 as pb;
use txn_types::types::decode_counter;

use crate::bank::Account;
use crate::coordinators::{Coordinators, Transactor};

/// The key of a participant's staleness marker (no account is named so).
pub const MARKER_KEY: &str = "marker";
/// Pause between two marker commits (each at the next participant).
const MARKER_PAUSE: Duration = Duration::from_millis(20);
/// Pause between two reads of one reader.
pub const READ_PAUSE: Duration = Duration::from_millis(20);
/// A composed read asks a participant again, this many times, when a key is locked by a
/// prepared txn (its value undecided), as an API composition would.
const COMPOSED_RETRIES: u32 = 5;
const COMPOSED_RETRY_PAUSE: Duration = Duration::from_millis(2);

/// The read paths, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    Composed,
    Atomic,
    ReadModel,
}

impl ReadPath {
    pub fn name(self) -> &'static str {
        match self {
            ReadPath::Composed => "composed",
            ReadPath::Atomic => "atomic 2pc",
            ReadPath::ReadModel => "read model",
        }
    }
}

/// When each marker commit was acknowledged, per participant, in commit order.
#[derive(Default)]
pub struct Markers {
    acked: Mutex<HashMap<String, Vec<(i64, Instant)>>>,
}

impl Markers {
    /// How stale a read that began at `t0` and saw marker `seen` at `participant` is.
    fn staleness(&self, participant: &str, seen: i64, t0: Instant) -> Duration {
        let acked = self.acked.lock().expect("markers");
        acked
            .get(participant)
            .and_then(|m| m.iter().find(|(n, at)| *n > seen && *at <= t0))
            .map_or(Duration::ZERO, |(_, at)| t0 - *at)
    }
}

/// What one path's readers saw.
pub struct PathStats {
    pub path: ReadPath,
    tried: AtomicU64,
    completed: AtomicU64,
    off: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    stale_us: Mutex<Histogram<u64>>,
}

/// One path's figures in the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReadPathReport {
    pub path: String,
    pub tried: u64,
    pub completed: u64,
    /// Completed reads whose total was not the bank's.
    pub off: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub stale_p50_ms: f64,
    pub stale_p99_ms: f64,
    pub stale_max_ms: f64,
}

impl PathStats {
    pub fn new(path: ReadPath) -> anyhow::Result<Self> {
        Ok(Self {
            path,
            tried: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            off: AtomicU64::new(0),
            latency_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
            stale_us: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        })
    }

    pub fn report(&self) -> ReadPathReport {
        let q = |h: &Mutex<Histogram<u64>>, q: f64| {
            let h = h.lock().expect("histogram");
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let max = self.stale_us.lock().expect("histogram").max() as f64 / 1000.0;
        ReadPathReport {
            path: self.path.name().into(),
            tried: self.tried.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            off: self.off.load(Ordering::Relaxed),
            p50_ms: q(&self.latency_us, 0.5),
            p99_ms: q(&self.latency_us, 0.99),
            stale_p50_ms: q(&self.stale_us, 0.5),
            stale_p99_ms: q(&self.stale_us, 0.99),
            stale_max_ms: max,
        }
    }

    /// Counts a read that was tried (`None`: it did not complete).
    pub fn record(&self, t0: Instant, read: Option<(i64, bool)>, stale: Duration) {
        self.tried.fetch_add(1, Ordering::Relaxed);
        let Some((_, off)) = read else {
            return;
        };
        self.completed.fetch_add(1, Ordering::Relaxed);
        if off {
            self.off.fetch_add(1, Ordering::Relaxed);
        }
        let us = t0.elapsed().as_micros().max(1) as u64;
        let _ = self.latency_us.lock().expect("histogram").record(us);
        let stale = (stale.as_micros() as u64).max(1);
        let _ = self.stale_us.lock().expect("histogram").record(stale);
    }
}

/// Commits a marker at each participant in turn until `stop`.
pub async fn marker_loop(
    client: Coordinators,
    participants: Vec<String>,
    stop: Arc<AtomicBool>,
    markers: Arc<Markers>,
) {
    let mut seq: HashMap<String, i64> = HashMap::new();
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let p = participants[turn % participants.len()].clone();
        turn += 1;
        let n = seq.entry(p.clone()).or_default();
        *n += 1;
        let n = *n;
        let req = pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: vec![pb::Branch {
                participant: p.clone(),
                ops: vec![pb::Op {
                    kind: Some(pb::op::Kind::Put(pb::PutOp {
                        key: MARKER_KEY.as_bytes().to_vec(),
                        value: n.to_string().into_bytes(),
                    })),
                }],
            }],
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
            commit_point: 0,
        };
        if let Ok(r) = client.transact_for(0, req).await
            && r.outcome == pb::Outcome::Committed as i32
        {
            let now = Instant::now();
            markers
                .acked
                .lock()
                .expect("markers")
                .entry(p)
                .or_default()
                .push((n, now));
        }
        tokio::time::sleep(MARKER_PAUSE).await;
    }
}

/// How a reader reaches what it reads.
#[derive(Clone)]
pub enum Reader {
    Composed(Vec<(String, pb::participant_client::ParticipantClient<Channel>)>),
    /// The coordinators, and the reader's number (which picks the one it prefers).
    Atomic(Coordinators, usize),
    ReadModel(pb::read_model_client::ReadModelClient<Channel>),
}

/// Every account's balance and every participant's marker, from one read; None if it failed.
type Read = Option<(HashMap<(String, String), i64>, HashMap<String, i64>)>;

fn value_of(v: Option<&[u8]>) -> i64 {
    decode_counter(v).unwrap_or(0)
}

impl Reader {
    /// This reader for the reader numbered `i` of its path.
    pub fn numbered(&self, i: usize) -> Self {
        match self {
            Reader::Atomic(c, _) => Reader::Atomic(c.clone(), i),
            other => other.clone(),
        }
    }

    async fn read(&mut self, accounts: &[Account]) -> Read {
        let mut wanted: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for a in accounts {
            match wanted.iter_mut().find(|(p, _)| *p == a.participant) {
                Some((_, keys)) => keys.push(a.key.as_bytes().to_vec()),
                None => wanted.push((
                    a.participant.clone(),
                    vec![MARKER_KEY.as_bytes().to_vec(), a.key.as_bytes().to_vec()],
                )),
            }
        }
        let mut values = HashMap::new();
        let mut markers = HashMap::new();
        let mut put = |p: &str, key: &[u8], v: Option<&[u8]>| {
            let key = String::from_utf8_lossy(key).into_owned();
            if key == MARKER_KEY {
                markers.insert(p.to_owned(), value_of(v));
            } else {
                values.insert((p.to_owned(), key), value_of(v));
            }
        };
        match self {
            Reader::Composed(clients) => {
                let reads = wanted.iter().map(|(p, keys)| {
                    let client = clients.iter().find(|(n, _)| n == p).map(|(_, c)| c.clone());
                    let keys = keys.clone();
                    async move {
                        let mut c = client?;
                        for _ in 0..=COMPOSED_RETRIES {
                            let req = pb::ReadRequest { keys: keys.clone() };
                            match c.read(req).await {
                                Ok(r) => return Some(r.into_inner().values),
                                Err(s) if s.code() == tonic::Code::Aborted => {
                                    tokio::time::sleep(COMPOSED_RETRY_PAUSE).await
                                }
                                Err(_) => return None,
                            }
                        }
                        None
                    }
                });
                let answers = futures::future::join_all(reads).await;
                for ((p, _), got) in wanted.iter().zip(answers) {
                    for kv in got? {
                        put(p, &kv.key, kv.value.as_deref());
                    }
                }
            }
            Reader::Atomic(client, i) => {
                let branches = wanted
                    .iter()
                    .map(|(p, keys)| pb::Branch {
                        participant: p.clone(),
                        ops: keys
                            .iter()
                            .map(|k| pb::Op {
                                kind: Some(pb::op::Kind::Read(pb::ReadOp { key: k.clone() })),
                            })
                            .collect(),
                    })
                    .collect();
                let req = pb::TransactRequest {
                    protocol: pb::Protocol::TwoPhase as i32,
                    branches,
                    prepare_timeout_ms: 0,
                    client_txn_id: String::new(),
                    commit_point: 0,
                };
                let r = client.transact_for(*i, req).await.ok()?;
                if r.outcome != pb::Outcome::Committed as i32 {
                    return None;
                }
                for b in &r.results {
                    for kv in &b.reads {
                        put(&b.participant, &kv.key, kv.value.as_deref());
                    }
                }
            }
            Reader::ReadModel(client) => {
                let accounts = wanted
                    .iter()
                    .flat_map(|(p, keys)| {
                        keys.iter().map(move |k| pb::AccountRef {
                            participant: p.clone(),
                            key: k.clone(),
                        })
                    })
                    .collect();
                let r = client
                    .get_balances(pb::GetBalancesRequest {
                        accounts,
                        consistent: true,
                        limit: 0,
                    })
                    .await
                    .ok()?
                    .into_inner();
                for b in &r.balances {
                    put(&b.participant, &b.key, b.value.as_deref());
                }
            }
        }
        Some((values, markers))
    }
}

/// Reads every balance through `reader` until `stop`, into `stats`.
pub async fn read_loop(
    mut reader: Reader,
    accounts: Vec<Account>,
    total: i64,
    stop: Arc<AtomicBool>,
    stats: Arc<PathStats>,
    markers: Arc<Markers>,
) {
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let read = reader.read(&accounts).await;
        let done = read.map(|(values, seen)| {
            let sum: i64 = values.values().sum();
            let stale = seen
                .iter()
                .map(|(p, n)| markers.staleness(p, *n, t0))
                .max()
                .unwrap_or_default();
            ((sum, sum != total), stale)
        });
        let stale = done.as_ref().map_or(Duration::ZERO, |(_, s)| *s);
        stats.record(t0, done.map(|(r, _)| r), stale);
        tokio::time::sleep(READ_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_counts_from_the_first_acknowledged_marker_a_read_missed() {
        let m = Markers::default();
        let t = Instant::now();
        let ms = Duration::from_millis;
        m.acked
            .lock()
            .unwrap()
            .insert("p1".into(), vec![(1, t), (2, t + ms(10)), (3, t + ms(30))]);
        // Began at 40 ms having seen 3: nothing missed.
        assert_eq!(m.staleness("p1", 3, t + ms(40)), Duration::ZERO);
        // Saw 1: missed 2, acknowledged 30 ms before.
        assert_eq!(m.staleness("p1", 1, t + ms(40)), ms(30));
        // Began at 20 ms having seen 2: 3 was not acknowledged yet.
        assert_eq!(m.staleness("p1", 2, t + ms(20)), Duration::ZERO);
        assert_eq!(m.staleness("p2", 0, t), Duration::ZERO);
    }
}
