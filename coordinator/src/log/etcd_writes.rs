//! Group commit over etcd: writers queue their batches; one task sends everything queued as
//! one etcd transaction, guarded by this instance's membership, and wakes every writer it
//! covered once etcd has answered (a majority of etcd's members has it on disk).
//!
//! One transaction is in flight at a time, and a transaction that failed without an answer is
//! sent again, unchanged, before anything queued after it: so batches land in the order they
//! were written, even though a lost answer makes etcd apply a transaction twice (every batch
//! is a set of puts and deletes of whole records, so applying it again changes nothing, as
//! long as nothing written after it landed in between). Until a batch has landed, reads of
//! this instance see it through the overlay, as sled's would.
//!
//! A transaction whose guard fails means this instance's member record is gone: its lease
//! expired, another instance may have taken its records over, and nothing it writes may land
//! any more. Every waiter then fails, and the coordinator stops.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use txn_etcd::{EtcdClient, EtcdError, TxnRequest, op};
use txn_storage::durable::FlushStats;
use txn_types::store::{StoreError, WriteBatch, WriteOp};

use super::LogTicket;

/// Most bytes of keys and values one transaction carries: below etcd's default request
/// limit (1.5 MiB) with room for the framing. A batch larger than this alone (one record of up
/// to `MAX_RECORD_BYTES`, 1 MiB) goes in a transaction of its own.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Most operations one transaction carries (etcd's default limit is 128 per transaction).
pub const MAX_TXN_OPS: usize = 120;
/// First and longest pause before a transaction that got no answer is sent again.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_LONGEST: Duration = Duration::from_millis(500);

/// The writes of several batches as one etcd transaction may carry them: etcd refuses a
/// transaction that names a key twice, so only the last write of each key is kept. The
/// transaction applies atomically, so nobody can see the writes it drops; what it leaves is
/// what applying every batch in order would leave.
pub(super) fn coalesce(ops: Vec<WriteOp>) -> Vec<WriteOp> {
    let key = |w: &WriteOp| match w {
        WriteOp::Put(k, _) | WriteOp::Delete(k) => k.clone(),
    };
    let mut last: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (i, w) in ops.iter().enumerate() {
        last.insert(key(w), i);
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, w)| last.get(&key(w)) == Some(i))
        .map(|(_, w)| w)
        .collect()
}

#[derive(Debug, Clone, Default)]
struct Published {
    durable: u64,
    failed: Option<String>,
}

#[derive(Default)]
struct Queue {
    next_seq: u64,
    /// Batches not yet landed, in write order, with their tickets.
    queued: VecDeque<(u64, WriteBatch)>,
    /// The newest queued value of each key (None: a deletion), and the ticket that wrote it.
    overlay: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
}

/// The write side of the etcd log.
pub(super) struct Writes {
    client: Arc<EtcdClient>,
    /// Prefix of every key of this log in etcd.
    prefix: Vec<u8>,
    /// This instance's member key (with the prefix): every transaction checks it exists.
    member_key: Vec<u8>,
    queue: Mutex<Queue>,
    wake: Notify,
    published: watch::Sender<Published>,
    /// A transaction is being retried: etcd does not answer.
    pub(super) stalled: AtomicBool,
    txns: AtomicU64,
    landed: AtomicU64,
}

impl Writes {
    pub(super) fn start(
        client: Arc<EtcdClient>,
        prefix: Vec<u8>,
        member_key: Vec<u8>,
    ) -> Arc<Self> {
        let writes = Arc::new(Self {
            client,
            prefix,
            member_key,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            published: watch::channel(Published::default()).0,
            stalled: AtomicBool::new(false),
            txns: AtomicU64::new(0),
            landed: AtomicU64::new(0),
        });
        tokio::spawn(writes.clone().run());
        writes
    }

    pub(super) fn queue(&self, batch: WriteBatch) -> Result<LogTicket, StoreError> {
        if let Some(e) = &self.published.borrow().failed {
            return Err(StoreError::Failed(e.clone()));
        }
        if batch.ops.len() > MAX_TXN_OPS {
            return Err(StoreError::Engine(format!(
                "a batch of {} writes is more than one etcd transaction takes ({MAX_TXN_OPS})",
                batch.ops.len()
            )));
        }
        let seq = {
            let mut q = self.queue.lock().expect("etcd write queue");
            q.next_seq += 1;
            let seq = q.next_seq;
            for op in &batch.ops {
                let (key, value) = match op {
                    WriteOp::Put(k, v) => (k.clone(), Some(v.clone())),
                    WriteOp::Delete(k) => (k.clone(), None),
                };
                q.overlay.insert(key, (seq, value));
            }
            q.queued.push_back((seq, batch));
            seq
        };
        self.wake.notify_one();
        Ok(LogTicket(seq))
    }

    /// What this instance queued for `key` and etcd does not have yet: Some(None) is a
    /// queued deletion.
    pub(super) fn overlay(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let q = self.queue.lock().expect("etcd write queue");
        q.overlay.get(key).map(|(_, v)| v.clone())
    }

    /// Queued writes of keys in `[from, to)` (to empty: no end), for merging into a scan.
    pub(super) fn overlay_range(&self, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let q = self.queue.lock().expect("etcd write queue");
        q.overlay
            .range(from.to_vec()..)
            .take_while(|(k, _)| to.is_empty() || k.as_slice() < to)
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    pub(super) async fn wait(&self, ticket: LogTicket) -> Result<(), StoreError> {
        let mut rx = self.published.subscribe();
        let p = rx
            .wait_for(|p| p.durable >= ticket.0 || p.failed.is_some())
            .await
            .map_err(|_| StoreError::Failed("the etcd writer stopped".into()))?;
        match &p.failed {
            Some(e) => Err(StoreError::Failed(e.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn last_ticket(&self) -> LogTicket {
        LogTicket(self.queue.lock().expect("etcd write queue").next_seq)
    }

    pub(super) fn stats(&self) -> FlushStats {
        FlushStats {
            fsyncs: self.txns.load(Ordering::Relaxed),
            durable_writes: self.landed.load(Ordering::Relaxed),
        }
    }

    /// Fails every waiter and every later write: this instance may write nothing more.
    pub(super) fn fail(&self, why: String) {
        self.published.send_modify(|p| {
            if p.failed.is_none() {
                p.failed = Some(why);
            }
        });
    }

    /// The batches at the head of the queue that fit one transaction (at least one).
    fn next_txn(&self) -> Option<(u64, usize, TxnRequest)> {
        let q = self.queue.lock().expect("etcd write queue");
        let mut ops: Vec<WriteOp> = Vec::new();
        let (mut bytes, mut taken, mut last) = (0usize, 0usize, 0u64);
        for (seq, batch) in &q.queued {
            let size: usize = batch
                .ops
                .iter()
                .map(|op| match op {
                    WriteOp::Put(k, v) => k.len() + v.len(),
                    WriteOp::Delete(k) => k.len(),
                })
                .sum();
            if taken > 0
                && (ops.len() + batch.ops.len() > MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES)
            {
                break;
            }
            ops.extend(batch.ops.iter().cloned());
            bytes += size;
            taken += 1;
            last = *seq;
        }
        let success = coalesce(ops)
            .into_iter()
            .map(|w| match w {
                WriteOp::Put(k, v) => op::put([&self.prefix[..], &k].concat(), v, 0),
                WriteOp::Delete(k) => op::delete([&self.prefix[..], &k].concat()),
            })
            .collect();
        (taken > 0).then(|| {
            (
                last,
                taken,
                TxnRequest {
                    compare: vec![op::exists(&self.member_key)],
                    success,
                    failure: Vec::new(),
                },
            )
        })
    }

    async fn run(self: Arc<Self>) {
        loop {
            let Some((last, taken, txn)) = self.next_txn() else {
                self.wake.notified().await;
                continue;
            };
            let mut pause = RETRY_FIRST;
            let landed = loop {
                match self.client.txn(txn.clone()).await {
                    Ok(r) => break r.succeeded,
                    Err(EtcdError::Unavailable(e)) => {
                        self.stalled.store(true, Ordering::Relaxed);
                        tracing::warn!(error = %e, "etcd does not answer; the batch waits and is sent again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_LONGEST);
                    }
                    Err(e) => {
                        self.fail(format!("etcd refused a write: {e}"));
                        return;
                    }
                }
            };
            self.stalled.store(false, Ordering::Relaxed);
            if !landed {
                self.fail(
                    "this coordinator's lease is gone (its member record no longer exists): \
                     another coordinator may have taken its txns over, so it writes nothing more"
                        .into(),
                );
                return;
            }
            self.txns.fetch_add(1, Ordering::Relaxed);
            {
                let mut q = self.queue.lock().expect("etcd write queue");
                for _ in 0..taken {
                    q.queued.pop_front();
                }
                q.overlay.retain(|_, (seq, _)| *seq > last);
            }
            self.landed.fetch_add(taken as u64, Ordering::Relaxed);
            txn_metrics::metrics()
                .group_commit_batch
                .observe(taken as f64);
            self.published.send_modify(|p| p.durable = last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_keeps_the_last_write_of_each_key_in_order() {
        let put = |k: &str, v: &str| WriteOp::Put(k.into(), v.into());
        let del = |k: &str| WriteOp::Delete(k.into());
        let ops = vec![
            put("s/1", "a"),
            put("k/x", "1"),
            put("s/1", "b"),
            del("c/2"),
            del("s/1"),
            put("c/2", "again"),
        ];
        assert_eq!(
            coalesce(ops),
            vec![put("k/x", "1"), del("s/1"), put("c/2", "again")]
        );
        assert!(coalesce(Vec::new()).is_empty());
    }
}
