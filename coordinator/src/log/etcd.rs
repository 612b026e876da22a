//! The coordinator's log in etcd (`--log etcd://HOST:PORT,...`), shared by every coordinator
//! instance over it. The records are the sled log's, under a prefix (`--etcd-prefix`), plus
//! one member record per live instance (`m/EPOCH`, attached to its lease).
//!
//! At start an instance takes a lease, then a new epoch and its member record in one guarded
//! transaction (the rules are [`txn_coordinator_core::ha`]'s). A keep-alive task renews the
//! lease every third of its TTL; once etcd says it is gone, the instance's writes fail
//! ([`super::etcd_writes`]) and [`SharedLog::lost`] tells the coordinator to stop. While the
//! lease has not been renewed for a whole TTL, or a write waits for etcd, new txns are
//! refused ([`SharedLog::admits`]); txns in flight wait for etcd and lose nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};
use txn_coordinator_core::ha::{self, Guard};
use txn_etcd::{EtcdClient, EtcdError, TxnRequest, op};
use txn_storage::durable::FlushStats;
use txn_types::rec::{EpochRecord, MemberRecord};
use txn_types::record;
use txn_types::store::{Pairs, StoreError, WriteBatch, WriteOp};
use txn_types::unix_ms;

use super::etcd_writes::Writes;
use super::{CoordLog, LogFuture, LogTicket, ResolveView, Revisioned, SharedLog};

/// Deadline of one etcd call at one member.
pub const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a starting coordinator keeps trying to reach etcd before it gives up.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Records one scan reads from etcd at a time: bounds one answer, which the client decodes up
/// to 64 MiB, at 60 records of at most 1 MiB (`MAX_RECORD_BYTES`).
const SCAN_PAGE: usize = 60;
/// Tries at taking an epoch when other instances take theirs at the same moment.
const EPOCH_TRIES: usize = 100;

/// How to reach etcd and how to appear there.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Prefix of every key of this log, so that several clusters can share one etcd.
    pub prefix: String,
    /// TTL of this instance's lease: how long after it stops renewing it others take over.
    pub lease_ttl: Duration,
    /// Where other instances reach this one (its gRPC URL).
    pub url: String,
}

fn store_err(e: EtcdError) -> StoreError {
    match e {
        EtcdError::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Engine(other.to_string()),
    }
}

/// The etcd log of one coordinator instance.
pub struct EtcdLog {
    client: Arc<EtcdClient>,
    prefix: Vec<u8>,
    epoch: u64,
    lease: i64,
    lease_ttl: Duration,
    writes: Arc<Writes>,
    started: Instant,
    /// Milliseconds since `started` of the last renewal etcd confirmed.
    renewed_ms: Arc<AtomicU64>,
    lost: watch::Sender<Option<String>>,
}

impl EtcdLog {
    /// Joins the log: a lease, a new epoch and this instance's member record, then the
    /// keep-alive and the writer.
    pub async fn open(cfg: EtcdConfig) -> Result<Arc<Self>, StoreError> {
        let client =
            Arc::new(EtcdClient::new(&cfg.endpoints, ETCD_REQUEST_TIMEOUT).map_err(store_err)?);
        let prefix = cfg.prefix.as_bytes().to_vec();
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        let lease = loop {
            match client.grant(cfg.lease_ttl).await {
                Ok(id) => break id,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    warn!(error = %e, "etcd not reachable yet; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(store_err(e)),
            }
        };
        let epoch = Self::take_epoch(&client, &prefix, lease, &cfg.url).await?;
        let member_key = [&prefix[..], &ha::member_key(epoch)].concat();
        let writes = Writes::start(client.clone(), prefix.clone(), member_key);
        let log = Arc::new(Self {
            client,
            prefix,
            epoch,
            lease,
            lease_ttl: cfg.lease_ttl,
            writes,
            started: Instant::now(),
            renewed_ms: Arc::new(AtomicU64::new(0)),
            lost: watch::channel(None).0,
        });
        tokio::spawn(log.clone().keep_alive());
        info!(
            epoch,
            lease,
            ttl_ms = cfg.lease_ttl.as_millis() as u64,
            "joined the etcd log"
        );
        Ok(log)
    }

    /// Takes the next epoch and writes the member record, in one transaction guarded by the
    /// counter being unchanged since read.
    async fn take_epoch(
        client: &EtcdClient,
        prefix: &[u8],
        lease: i64,
        url: &str,
    ) -> Result<u64, StoreError> {
        let counter_key = [prefix, ha::EPOCH_COUNTER_KEY].concat();
        for _ in 0..EPOCH_TRIES {
            let current = client.get(&counter_key).await.map_err(store_err)?;
            let (counter, revision) = match &current {
                Some(kv) => (
                    Some(record::decode::<EpochRecord>(ha::EPOCH_COUNTER_KEY, &kv.value)?.epoch),
                    kv.mod_revision,
                ),
                None => (None, 0),
            };
            let epoch = ha::next_epoch(counter);
            let member = MemberRecord {
                epoch,
                url: url.to_owned(),
                started_at_unix_ms: unix_ms(),
            };
            let txn = TxnRequest {
                compare: guards(prefix, &ha::epoch_claim_guards(revision)),
                success: vec![
                    op::put(
                        counter_key.clone(),
                        record::encode(&EpochRecord { epoch }),
                        0,
                    ),
                    op::put(
                        [prefix, &ha::member_key(epoch)].concat(),
                        record::encode(&member),
                        lease,
                    ),
                ],
                failure: Vec::new(),
            };
            // A lost answer may hide a transaction that landed; trying again then takes the
            // next epoch, and the one taken first stays an idle member of this lease.
            if client.txn(txn).await.map_err(store_err)?.succeeded {
                return Ok(epoch);
            }
        }
        Err(StoreError::Engine(format!(
            "could not take an epoch in {EPOCH_TRIES} tries: too many coordinators starting at once"
        )))
    }

    fn since_start_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Renews the lease every third of its TTL until etcd says it is gone.
    async fn keep_alive(self: Arc<Self>) {
        let every = (self.lease_ttl / 3).max(Duration::from_millis(100));
        loop {
            match self.client.keep_alive(self.lease).await {
                Ok(ttl) if ttl > 0 => {
                    self.renewed_ms
                        .store(self.since_start_ms(), Ordering::Relaxed);
                }
                Ok(_) => {
                    self.lose("its etcd lease expired (it was not renewed within the TTL)");
                    return;
                }
                Err(EtcdError::Unavailable(e)) => {
                    warn!(error = %e, "could not renew the etcd lease; trying again");
                }
                Err(e) => {
                    self.lose(&format!("etcd refused to renew its lease: {e}"));
                    return;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    fn lose(&self, why: &str) {
        let why = format!("coordinator epoch {} left the etcd log: {why}", self.epoch);
        warn!(%why, "stopping: another coordinator takes over this one's txns");
        self.writes.fail(why.clone());
        self.lost.send_replace(Some(why));
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        [&self.prefix[..], k].concat()
    }

    fn strip(&self, k: Vec<u8>) -> Vec<u8> {
        k[self.prefix.len().min(k.len())..].to_vec()
    }

    /// Up to `limit` (0: all) records under `prefix` from `start`, merged with this
    /// instance's writes that have not landed yet.
    async fn scan(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let mut from = self.key(start.max(prefix));
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let complete;
        loop {
            let page = if limit == 0 {
                SCAN_PAGE
            } else {
                limit.min(SCAN_PAGE)
            };
            let (kvs, more) = self
                .client
                .scan(&self.key(prefix), &from, page)
                .await
                .map_err(store_err)?;
            let last = kvs.last().map(|kv| kv.key.clone());
            for kv in kvs {
                out.insert(self.strip(kv.key), kv.value);
            }
            match last {
                Some(k) if more && (limit == 0 || out.len() < limit) => {
                    from = [k, vec![0]].concat()
                }
                _ => {
                    complete = !more;
                    break;
                }
            }
        }
        // Queued writes, within the span this scan covered.
        let lo = start.max(prefix).to_vec();
        let hi = if complete {
            txn_etcd::prefix_end(prefix)
        } else {
            out.keys()
                .last()
                .map(|k| [k.as_slice(), &[0]].concat())
                .unwrap_or_default()
        };
        for (k, v) in self.writes.overlay_range(&lo, &hi) {
            if !k.starts_with(prefix) {
                continue;
            }
            match v {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
        let mut pairs: Pairs = out.into_iter().collect();
        if limit > 0 {
            pairs.truncate(limit);
        }
        Ok(pairs)
    }
}

/// The etcd comparisons of `guards`.
fn guards(prefix: &[u8], guards: &[Guard]) -> Vec<txn_etcd::pb::Compare> {
    guards
        .iter()
        .map(|g| match g {
            Guard::MemberAlive(e) => op::exists(&[prefix, &ha::member_key(*e)].concat()),
            Guard::MemberGone(e) => op::absent(&[prefix, &ha::member_key(*e)].concat()),
            Guard::Unchanged { key, revision } => op::unchanged(&[prefix, key].concat(), *revision),
        })
        .collect()
}

impl CoordLog for EtcdLog {
    fn get<'a>(&'a self, key: &'a [u8]) -> LogFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if let Some(queued) = self.writes.overlay(key) {
                return Ok(queued);
            }
            let kv = self.client.get(&self.key(key)).await.map_err(store_err)?;
            Ok(kv.map(|kv| kv.value))
        })
    }

    fn scan_prefix<'a>(&'a self, prefix: &'a [u8]) -> LogFuture<'a, Pairs> {
        Box::pin(self.scan(prefix, prefix, 0))
    }

    fn scan_page<'a>(
        &'a self,
        prefix: &'a [u8],
        start: &'a [u8],
        limit: usize,
    ) -> LogFuture<'a, Pairs> {
        Box::pin(self.scan(prefix, start, limit.max(1)))
    }

    fn write_lazy(&self, batch: WriteBatch) -> Result<LogTicket, StoreError> {
        self.writes.queue(batch)
    }

    fn wait(&self, ticket: LogTicket) -> LogFuture<'_, ()> {
        Box::pin(self.writes.wait(ticket))
    }

    fn wait_patiently(&self, ticket: LogTicket, _patience: Duration) -> LogFuture<'_, ()> {
        // Every queued batch goes out at once; there is no sync to ask for.
        Box::pin(self.writes.wait(ticket))
    }

    fn sync_all(&self) -> LogFuture<'_, ()> {
        let last = self.writes.last_ticket();
        Box::pin(self.writes.wait(last))
    }

    fn stats(&self) -> FlushStats {
        self.writes.stats()
    }

    fn shared(&self) -> Option<&dyn SharedLog> {
        Some(self)
    }
}

impl SharedLog for EtcdLog {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn admits(&self) -> Result<(), String> {
        if let Some(why) = self.lost.borrow().as_ref() {
            return Err(why.clone());
        }
        if self.writes.stalled.load(Ordering::Relaxed) {
            return Err("etcd does not answer: the log's writes are waiting for it".into());
        }
        // Past a TTL without a renewal the lease may be gone: a txn begun now could only be
        // refused at its first write. (Safety does not hang on this: every write is guarded.)
        let silent = self.since_start_ms() - self.renewed_ms.load(Ordering::Relaxed);
        if silent > self.lease_ttl.as_millis() as u64 {
            return Err(format!(
                "the etcd lease was last renewed {silent} ms ago (TTL {} ms): etcd unreachable?",
                self.lease_ttl.as_millis()
            ));
        }
        Ok(())
    }

    fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.subscribe()
    }

    fn resolve_view(&self, decision_key: Vec<u8>, owner: u64) -> LogFuture<'_, ResolveView> {
        Box::pin(async move {
            let member_key = self.key(&ha::member_key(owner));
            // One snapshot: a decision written just before the owner's lease went cannot be
            // missed (see txn_coordinator_core::ha).
            let txn = TxnRequest {
                compare: Vec::new(),
                success: vec![
                    op::get(self.key(&decision_key)),
                    op::get(member_key.clone()),
                ],
                failure: Vec::new(),
            };
            let resp = self.client.txn(txn).await.map_err(store_err)?;
            let ranges = txn_etcd::ranges(&resp);
            let logged = ranges.first().is_some_and(|kvs| !kvs.is_empty());
            let owner = match ranges.get(1).and_then(|kvs| kvs.first()) {
                Some(kv) => Some(record::decode::<MemberRecord>(&member_key, &kv.value)?),
                None => None,
            };
            Ok(ResolveView { logged, owner })
        })
    }

    fn members(&self) -> LogFuture<'_, BTreeMap<u64, MemberRecord>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            for (key, value) in self.scan(ha::MEMBER_PREFIX, ha::MEMBER_PREFIX, 0).await? {
                if let Some(epoch) = ha::member_epoch(&key) {
                    out.insert(epoch, record::decode::<MemberRecord>(&key, &value)?);
                }
            }
            Ok(out)
        })
    }

    fn scan_revisions<'a>(&'a self, prefix: &'a [u8]) -> LogFuture<'a, Vec<Revisioned>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut from = self.key(prefix);
            loop {
                let (kvs, more) = self
                    .client
                    .scan(&self.key(prefix), &from, SCAN_PAGE)
                    .await
                    .map_err(store_err)?;
                let last = kvs.last().map(|kv| kv.key.clone());
                out.extend(kvs.into_iter().map(|kv| Revisioned {
                    revision: kv.mod_revision,
                    key: self.strip(kv.key),
                    value: kv.value,
                }));
                match last {
                    Some(k) if more => from = [k, vec![0]].concat(),
                    _ => return Ok(out),
                }
            }
        })
    }

    fn get_revisioned<'a>(&'a self, key: &'a [u8]) -> LogFuture<'a, Option<Revisioned>> {
        Box::pin(async move {
            let kv = self.client.get(&self.key(key)).await.map_err(store_err)?;
            Ok(kv.map(|kv| Revisioned {
                revision: kv.mod_revision,
                key: key.to_vec(),
                value: kv.value,
            }))
        })
    }

    fn write_guarded(&self, guards_of: Vec<Guard>, batch: WriteBatch) -> LogFuture<'_, bool> {
        Box::pin(async move {
            let txn = TxnRequest {
                compare: guards(&self.prefix, &guards_of),
                success: super::etcd_writes::coalesce(batch.ops)
                    .into_iter()
                    .map(|w| match w {
                        WriteOp::Put(k, v) => op::put(self.key(&k), v, 0),
                        WriteOp::Delete(k) => op::delete(self.key(&k)),
                    })
                    .collect(),
                failure: Vec::new(),
            };
            Ok(self.client.txn(txn).await.map_err(store_err)?.succeeded)
        })
    }

    fn leave(&self) -> LogFuture<'_, ()> {
        Box::pin(async move { self.client.revoke(self.lease).await.map_err(store_err) })
    }
}
