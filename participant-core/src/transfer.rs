//! The events protocol (choreography) at a participant, and the inbox through which a
//! participant applies another participant's events exactly once.
//!
//! A transfer has a source and a destination. No coordinator drives it after the first step:
//! - the source runs its own step as a local transaction: its effect, its transfer record
//!   `t/<id>` (with the undo) and a `TRANSFER_DEBIT` event carrying the destination's
//!   operations, all in one batch ([`ParticipantCore::start_transfer`]); the client is told
//!   "accepted" once that batch is durable;
//! - the destination consumes the source's feed and runs its step when it meets the debit:
//!   applied (`TRANSFER_CREDIT`) or, if a check fails, refused (`TRANSFER_REFUSED`, nothing
//!   changed);
//! - the source consumes the destination's feed: a credit settles the transfer, a refusal
//!   makes it undo its step (`TRANSFER_REFUND`).
//!
//! Delivery is at least once: a consumer may see an event again after a crash or a reconnect.
//! Effects are exactly once because of the **inbox**: the consumer's position in the source's
//! feed (`i/<source>`) is written in the same batch as the effect of each event, so an event
//! below it is a duplicate and is suppressed ([`ParticipantCore::consume`]). The transfer
//! record guards the effect a second time, but only as a tripwire: it never fires unless the
//! inbox rule was broken ([`Consumed::RecordHit`]), which the model checker asserts.
//!
//! Keys: `t/<id>` transfer records, `ta/<id>` the source's transfers not yet settled,
//! `xt/<at><id>` the expiry index of settled transfer records, `i/<source>` inboxes.

use prost::Message;
use txn_types::rec::{
    EventKind, EventRecord, InboxRecord, TransferRecord, TransferRole, TransferState,
};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{KeyValue, MAX_RECORD_BYTES, Op, ParticipantId, TxnId};

use crate::core::ParticipantCore;
use crate::eval::evaluate;
use crate::outbox;
use crate::saga::{apply_undo, put_writes, undo_of};
use crate::step::{Attempt, LockWait, Step};

pub const TRANSFER_PREFIX: &[u8] = b"t/";
pub const IN_FLIGHT_PREFIX: &[u8] = b"ta/";
pub const TRANSFER_EXPIRY_PREFIX: &[u8] = b"xt/";
pub const INBOX_PREFIX: &[u8] = b"i/";

pub fn transfer_key(id: &str) -> Vec<u8> {
    [TRANSFER_PREFIX, id.as_bytes()].concat()
}

fn in_flight_key(id: &str) -> Vec<u8> {
    [IN_FLIGHT_PREFIX, id.as_bytes()].concat()
}

fn expiry_key(at_unix_ms: u64, id: &str) -> Vec<u8> {
    [
        TRANSFER_EXPIRY_PREFIX,
        &at_unix_ms.to_be_bytes(),
        id.as_bytes(),
    ]
    .concat()
}

pub fn inbox_key(source: &str) -> Vec<u8> {
    [INBOX_PREFIX, source.as_bytes()].concat()
}

/// A transfer as the source is asked to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    pub id: TxnId,
    pub source: ParticipantId,
    pub destination: ParticipantId,
    pub source_ops: Vec<Op>,
    pub destination_ops: Vec<Op>,
}

/// The source's answer to a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAnswer {
    /// Its step committed now; the rest follows from the feeds.
    Accepted { reads: Vec<KeyValue> },
    /// An earlier copy of the request was accepted (its reads went with its answer).
    AlreadyAccepted,
    /// Its step failed a check: nothing changed, anywhere, and never will for this id.
    Rejected { reason: String },
}

/// What a consumer did with one delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// Below the inbox: delivered before and applied then; suppressed.
    Duplicate,
    /// Not addressed to this participant: only the inbox moves.
    Skipped,
    /// Destination: its step applied.
    Credited,
    /// Destination: its step failed a check; a refusal is published.
    Refused,
    /// Source: the destination applied; the transfer is settled.
    Settled,
    /// Source: the destination refused; its own step is undone.
    Refunded,
    /// The inbox took the event for new, but its effect is already recorded: the inbox
    /// rule was broken somewhere (an offset stored apart from its effect). Nothing applied
    /// twice; never expected.
    RecordHit,
}

pub fn read_transfer(store: &dyn Store, id: &str) -> Result<Option<TransferRecord>, StoreError> {
    let key = transfer_key(id);
    match store.get(&key)? {
        Some(bytes) => Ok(Some(record::decode(&key, &bytes)?)),
        None => Ok(None),
    }
}

pub fn read_inbox(store: &dyn Store, key: &[u8]) -> Result<InboxRecord, StoreError> {
    match store.get(key)? {
        Some(bytes) => Ok(record::decode(key, &bytes)?),
        None => Ok(InboxRecord::default()),
    }
}

/// Where a feed batch that starts at `from` meets an inbox at `next`: fine, or the offset to
/// subscribe from instead (a batch that starts past the inbox would skip events).
pub fn check_batch_start(inbox: &InboxRecord, from: u64) -> Result<(), u64> {
    if from > inbox.next_offset {
        Err(inbox.next_offset)
    } else {
        Ok(())
    }
}

/// Whether `ev` asks something of participant `me`: a debit of which it is the destination,
/// a credit or refusal of which it is the source. A feed filtered for `me` sends only these.
pub fn addressed_to(ev: &EventRecord, me: &str) -> bool {
    let member = |i: usize| ev.participants.get(i).map(String::as_str) == Some(me);
    match EventKind::try_from(ev.kind) {
        Ok(EventKind::TransferDebit) => member(1),
        Ok(EventKind::TransferCredit | EventKind::TransferRefused) => member(0),
        _ => false,
    }
}

fn kind_of(rec: &TransferRecord) -> (TransferRole, TransferState) {
    (
        TransferRole::try_from(rec.role).unwrap_or(TransferRole::Unspecified),
        TransferState::try_from(rec.state).unwrap_or(TransferState::Unspecified),
    )
}

/// Records `rec` under `id`; a settled record is indexed to expire after the retention.
fn put_transfer(batch: &mut WriteBatch, id: &str, rec: &TransferRecord) {
    batch.put(transfer_key(id), record::encode(rec));
    let (_, state) = kind_of(rec);
    if state == TransferState::Accepted {
        batch.put(in_flight_key(id), Vec::new());
    } else {
        batch.delete(in_flight_key(id));
        batch.put(expiry_key(rec.settled_at_unix_ms, id), Vec::new());
    }
}

fn too_big(what: &str, bytes: usize) -> Option<String> {
    (bytes > MAX_RECORD_BYTES).then(|| {
        format!("the transfer's {what} would be {bytes} bytes, the limit is {MAX_RECORD_BYTES}")
    })
}

impl ParticipantCore {
    /// The source's step of a transfer: its effect, record and debit event in one forced
    /// batch, or a durable rejection. A duplicate gets the first answer.
    pub fn start_transfer(
        &mut self,
        req: &TransferRequest,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<Step<StartAnswer>>, StoreError> {
        let id = req.id.as_str();
        if let Some(rec) = read_transfer(store, id)? {
            let answer = match kind_of(&rec) {
                (TransferRole::Source, TransferState::Rejected) => {
                    StartAnswer::Rejected { reason: rec.reason }
                }
                (TransferRole::Source, _) => StartAnswer::AlreadyAccepted,
                _ => StartAnswer::Rejected {
                    reason: format!("transfer {id} is known here as another's destination"),
                },
            };
            // The first answer may still be on its way to the disk.
            return Ok(Attempt::Ready(Step::forced(WriteBatch::default(), answer)));
        }
        if let Some(holder) = self.lock_conflict(&req.source_ops) {
            return Ok(Attempt::Blocked {
                holder,
                wait: LockWait::Full,
            });
        }
        let members = vec![req.source.to_string(), req.destination.to_string()];
        let reject = |reason: String| {
            let rec = TransferRecord {
                role: TransferRole::Source as i32,
                state: TransferState::Rejected as i32,
                source: members[0].clone(),
                destination: members[1].clone(),
                reason: reason.clone(),
                settled_at_unix_ms: now_unix_ms,
                ..Default::default()
            };
            let mut batch = WriteBatch::default();
            put_transfer(&mut batch, id, &rec);
            Attempt::Ready(Step::forced(batch, StartAnswer::Rejected { reason }))
        };
        let (writes, reads) = match evaluate(&req.source_ops, store)? {
            Ok(evaluated) => evaluated,
            Err(reason) => return Ok(reject(reason)),
        };
        let undo = undo_of(&req.source_ops, &writes, store)?;
        let mut ev = outbox::event(
            EventKind::TransferDebit,
            id,
            members.clone(),
            writes.clone(),
            now_unix_ms,
        );
        ev.destination_ops = req.destination_ops.iter().map(Into::into).collect();
        let mut rec = TransferRecord {
            role: TransferRole::Source as i32,
            state: TransferState::Accepted as i32,
            source: members[0].clone(),
            destination: members[1].clone(),
            changes: writes.clone(),
            undo,
            accepted_at_unix_ms: now_unix_ms,
            ..Default::default()
        };
        if let Some(reason) =
            too_big("event", ev.encoded_len()).or_else(|| too_big("record", rec.encoded_len()))
        {
            return Ok(reject(reason));
        }
        let mut batch = WriteBatch::default();
        put_writes(&mut batch, &writes);
        rec.event_offset = self.outbox.append(&mut batch, ev);
        put_transfer(&mut batch, id, &rec);
        Ok(Attempt::Ready(Step::forced(
            batch,
            StartAnswer::Accepted { reads },
        )))
    }

    /// Participant `me` consumes `ev` from `source`'s feed. The caller has checked that the
    /// batch it came in starts at or below the inbox ([`check_batch_start`]), and delivers
    /// the batch's events in offset order, applying each step before the next call; any
    /// offsets skipped between two events were filtered out as not addressed to `me`.
    ///
    /// Every step carries the inbox's new position in its own batch: an effect and the
    /// knowledge that it happened are durable together. Effects are forced; the rest is lazy
    /// (a lost inbox move only means the event comes again and is skipped again).
    pub fn consume(
        &mut self,
        me: &str,
        source: &str,
        ev: &EventRecord,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<Step<Consumed>>, StoreError> {
        let ikey = inbox_key(source);
        let mut inbox = read_inbox(store, &ikey)?;
        if ev.offset < inbox.next_offset {
            inbox.duplicates += 1;
            let mut batch = WriteBatch::default();
            batch.put(ikey, record::encode(&inbox));
            return Ok(Attempt::Ready(Step::lazy(batch, Consumed::Duplicate)));
        }
        let effect = if addressed_to(ev, me) {
            match self.effect_of(ev, store, now_unix_ms)? {
                Attempt::Blocked { holder, wait } => return Ok(Attempt::Blocked { holder, wait }),
                Attempt::Ready(effect) => Some(effect),
            }
        } else {
            None
        };
        inbox.next_offset = ev.offset + 1;
        inbox.applied += 1;
        let (mut batch, answer) = effect.unwrap_or((WriteBatch::default(), Consumed::Skipped));
        batch.put(ikey, record::encode(&inbox));
        Ok(Attempt::Ready(match answer {
            Consumed::Credited | Consumed::Refused | Consumed::Refunded => {
                Step::forced(batch, answer)
            }
            _ => Step::lazy(batch, answer),
        }))
    }

    /// The inbox of `source` moves to `next` (the end of a feed batch whose last events
    /// were filtered out as not addressed here). Lazy.
    pub fn consume_end(
        &self,
        source: &str,
        next: u64,
        store: &dyn Store,
    ) -> Result<Step<()>, StoreError> {
        let ikey = inbox_key(source);
        let mut inbox = read_inbox(store, &ikey)?;
        if next <= inbox.next_offset {
            return Ok(Step::reply(()));
        }
        inbox.next_offset = next;
        let mut batch = WriteBatch::default();
        batch.put(ikey, record::encode(&inbox));
        Ok(Step::lazy(batch, ()))
    }

    /// What an event addressed here does, as a batch without the inbox.
    fn effect_of(
        &mut self,
        ev: &EventRecord,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<(WriteBatch, Consumed)>, StoreError> {
        let id = ev.txn_id.as_str();
        let existing = read_transfer(store, id)?;
        match EventKind::try_from(ev.kind) {
            Ok(EventKind::TransferDebit) => match existing {
                Some(_) => Ok(Attempt::Ready((WriteBatch::default(), Consumed::RecordHit))),
                None => self.credit(ev, store, now_unix_ms),
            },
            Ok(EventKind::TransferCredit) => Ok(Attempt::Ready(match existing {
                Some(mut rec)
                    if kind_of(&rec) == (TransferRole::Source, TransferState::Accepted) =>
                {
                    rec.state = TransferState::Credited as i32;
                    rec.settled_at_unix_ms = now_unix_ms;
                    let mut batch = WriteBatch::default();
                    put_transfer(&mut batch, id, &rec);
                    (batch, Consumed::Settled)
                }
                _ => (WriteBatch::default(), Consumed::RecordHit),
            })),
            Ok(EventKind::TransferRefused) => match existing {
                Some(rec) if kind_of(&rec) == (TransferRole::Source, TransferState::Accepted) => {
                    self.refund(ev, rec, store, now_unix_ms)
                }
                _ => Ok(Attempt::Ready((WriteBatch::default(), Consumed::RecordHit))),
            },
            _ => Ok(Attempt::Ready((WriteBatch::default(), Consumed::Skipped))),
        }
    }

    /// The destination's step for a debit it consumed.
    fn credit(
        &mut self,
        ev: &EventRecord,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<(WriteBatch, Consumed)>, StoreError> {
        let ops: Result<Vec<Op>, _> = ev
            .destination_ops
            .iter()
            .cloned()
            .map(Op::try_from)
            .collect();
        let ops = ops.map_err(|e| e.to_string());
        if let Ok(ops) = &ops
            && let Some(holder) = self.lock_conflict(ops)
        {
            return Ok(Attempt::Blocked {
                holder,
                wait: LockWait::Full,
            });
        }
        let evaluated = match &ops {
            Ok(ops) => evaluate(ops, store)?,
            Err(e) => Err(format!("the debit event's operations are invalid: {e}")),
        };
        let mut rec = TransferRecord {
            role: TransferRole::Destination as i32,
            source: ev.participants[0].clone(),
            destination: ev.participants[1].clone(),
            accepted_at_unix_ms: ev.at_unix_ms,
            settled_at_unix_ms: now_unix_ms,
            ..Default::default()
        };
        let mut batch = WriteBatch::default();
        let (kind, answer) = match evaluated {
            Ok((writes, _)) => {
                put_writes(&mut batch, &writes);
                rec.state = TransferState::Credited as i32;
                rec.changes = writes;
                (EventKind::TransferCredit, Consumed::Credited)
            }
            Err(reason) => {
                rec.state = TransferState::Refused as i32;
                rec.reason = reason;
                (EventKind::TransferRefused, Consumed::Refused)
            }
        };
        let mut out = outbox::event(
            kind,
            &ev.txn_id,
            ev.participants.clone(),
            rec.changes.clone(),
            now_unix_ms,
        );
        out.reason = rec.reason.clone();
        rec.event_offset = self.outbox.append(&mut batch, out);
        put_transfer(&mut batch, &ev.txn_id, &rec);
        Ok(Attempt::Ready((batch, answer)))
    }

    /// The source undoes its step after the destination refused.
    fn refund(
        &mut self,
        ev: &EventRecord,
        mut rec: TransferRecord,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<(WriteBatch, Consumed)>, StoreError> {
        let keys: Vec<Vec<u8>> = rec.undo.iter().map(|u| u.key.clone()).collect();
        if let Some(holder) = self.lock_conflict_keys(&keys) {
            return Ok(Attempt::Blocked {
                holder,
                wait: LockWait::Full,
            });
        }
        let mut batch = WriteBatch::default();
        let changes = apply_undo(&rec.undo, store, &mut batch)?;
        let mut out = outbox::event(
            EventKind::TransferRefund,
            &ev.txn_id,
            ev.participants.clone(),
            changes,
            now_unix_ms,
        );
        out.reason = ev.reason.clone();
        rec.state = TransferState::Refunded as i32;
        rec.reason = ev.reason.clone();
        rec.settled_at_unix_ms = now_unix_ms;
        rec.event_offset = self.outbox.append(&mut batch, out);
        put_transfer(&mut batch, &ev.txn_id, &rec);
        Ok(Attempt::Ready((batch, Consumed::Refunded)))
    }
}

/// Transfer records after `start_after` (an id; empty: from the first), at most `limit`.
pub fn list_transfers(
    store: &dyn Store,
    start_after: &str,
    limit: usize,
) -> Result<Vec<(String, TransferRecord)>, StoreError> {
    let start = if start_after.is_empty() {
        TRANSFER_PREFIX.to_vec()
    } else {
        [TRANSFER_PREFIX, start_after.as_bytes(), b"\0"].concat()
    };
    store
        .scan_page(TRANSFER_PREFIX, &start, limit)?
        .into_iter()
        .map(|(k, v)| {
            let id = String::from_utf8_lossy(&k[TRANSFER_PREFIX.len()..]).into_owned();
            Ok((id, record::decode(&k, &v)?))
        })
        .collect()
}

/// How many of this participant's transfers (as their source) are not settled yet, counting
/// at most `limit`.
pub fn unsettled_transfers(store: &dyn Store, limit: usize) -> Result<usize, StoreError> {
    Ok(store
        .scan_page(IN_FLIGHT_PREFIX, IN_FLIGHT_PREFIX, limit)?
        .len())
}

/// Every inbox: (source, its record).
pub fn inboxes(store: &dyn Store) -> Result<Vec<(String, InboxRecord)>, StoreError> {
    store
        .scan_prefix(INBOX_PREFIX)?
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[INBOX_PREFIX.len()..]).into_owned();
            Ok((name, record::decode(&k, &v)?))
        })
        .collect()
}

/// Drops the settled transfer records recorded before `cutoff_unix_ms`, at most `limit`
/// index entries (as [`crate::keys::sweep_expired`] does for outcomes). Their inboxes, not
/// these records, keep consumption exactly once, so dropping them loses nothing but history.
pub fn sweep_settled(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(WriteBatch, bool), StoreError> {
    let mut batch = WriteBatch::default();
    let page = store.scan_page(TRANSFER_EXPIRY_PREFIX, TRANSFER_EXPIRY_PREFIX, limit)?;
    let full = page.len() == limit;
    for (key, _) in page {
        let rest = &key[TRANSFER_EXPIRY_PREFIX.len()..];
        let Some((at, id)) = rest.split_first_chunk::<8>() else {
            return Err(StoreError::Corrupt(record::CorruptRecord {
                key: String::from_utf8_lossy(&key).into_owned(),
                problem: "transfer expiry key too short".into(),
            }));
        };
        let at = u64::from_be_bytes(*at);
        if at >= cutoff_unix_ms {
            return Ok((batch, false));
        }
        let id = String::from_utf8_lossy(id).into_owned();
        if let Some(rec) = read_transfer(store, &id)?
            && rec.settled_at_unix_ms == at
            && kind_of(&rec).1 != TransferState::Accepted
        {
            batch.delete(transfer_key(&id));
        }
        batch.delete(key);
    }
    Ok((batch, full))
}
