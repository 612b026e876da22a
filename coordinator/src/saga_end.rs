//! A saga's end and its hand-overs: what is written once a saga completes or is compensated,
//! and how a saga taken over from a gone coordinator (etcd log) is picked up.
//!
//! - The client's key, if the request had one, records the answer. The driver that ran the
//!   request has it, with the reads, and writes it lazily (the saga log already holds the
//!   outcome). A driver that resumed or took the saga over has no reads: it records the
//!   outcome from the log.
//! - Over a shared log (etcd), an ended saga's record is deleted in the same durable write, so
//!   etcd holds only unfinished sagas (its quota bounds it). Over the coordinator's own sled
//!   database, ended sagas are kept.

use std::sync::Arc;

use prost::Message;
use txn_coordinator_core::saga::{Saga, saga_key};
use txn_proto::pb::v1 as pb;
use txn_types::rec::{ClientTxnRecord, SagaState};
use txn_types::record;
use txn_types::store::WriteBatch;
use txn_types::types::TxnId;
use txn_types::unix_ms;

use crate::dedup::{ClientKeys, ClientTag, client_key, saga_answer};
use crate::error::CoordError;
use crate::saga_driver::SagaDriver;

impl SagaDriver {
    /// What follows the end of `saga`'s driving (see the module docs); `answer` is the
    /// running request's key and its answer, when this driver ran it.
    pub(crate) async fn finish(
        &self,
        saga: &Saga,
        answer: Option<(&ClientTag, pb::TransactResponse)>,
    ) -> Result<(), CoordError> {
        let id = TxnId::parse("saga_id", saga.id())?;
        let shared = self.gc.shared().is_some();
        let mut batch = WriteBatch::default();
        match answer {
            Some((tag, response)) => {
                ClientKeys::put_record(&mut batch, tag, &id, pb::Protocol::Saga, Some(response))
            }
            None if shared && saga.ended() && !saga.record().client_txn_id.is_empty() => {
                self.answer_from_log(&mut batch, &id, saga).await?;
            }
            None => {}
        }
        if shared && saga.ended() {
            batch.delete(saga_key(&id));
            self.check(self.gc.write_durable(batch).await)
        } else if batch.is_empty() {
            Ok(())
        } else {
            self.check(self.gc.write_lazy(batch)).map(|_| ())
        }
    }

    /// Adds the answer of an ended saga under its client key, from its log record (the key
    /// record holds the request's fingerprint; it is left alone if it already has an answer).
    async fn answer_from_log(
        &self,
        batch: &mut WriteBatch,
        id: &TxnId,
        saga: &Saga,
    ) -> Result<(), CoordError> {
        let key_id = TxnId::parse("client_txn_id", &saga.record().client_txn_id)?;
        let key = client_key(&key_id);
        let Some(bytes) = self.check(self.gc.get(&key).await)? else {
            return Ok(());
        };
        let mut rec: ClientTxnRecord =
            self.check(record::decode(&key, &bytes).map_err(Into::into))?;
        if rec.response.is_some() || rec.txn_id != id.as_str() {
            return Ok(());
        }
        rec.response = saga_answer(id, saga.record()).map(|r| r.encode_to_vec());
        rec.at_unix_ms = unix_ms();
        batch.put(key, record::encode(&rec));
        Ok(())
    }

    /// Picks up a saga this coordinator just took over from a gone one: drives it on if it
    /// was running or compensating, keeps it parked, or finishes what its end left undone.
    pub(crate) async fn adopted(self: &Arc<Self>, saga: Saga) -> Result<(), CoordError> {
        match saga.state() {
            SagaState::Running | SagaState::Compensating => self.spawn_saga(saga),
            SagaState::Parked => {
                self.note_parked(&saga, true);
                Ok(())
            }
            _ => self.finish(&saga, None).await,
        }
    }

    /// Refuses an operator's action on a saga another live coordinator drives (etcd log).
    pub(crate) fn owned_here(&self, saga: &Saga) -> Result<(), CoordError> {
        let Some(shared) = self.gc.shared() else {
            return Ok(());
        };
        match saga.owner() {
            Some(owner) if owner == shared.epoch() => Ok(()),
            owner => Err(CoordError::Precondition(format!(
                "saga_id {}: driven by the coordinator of epoch {}; ask that one (txnctl lists \
                 every coordinator's address), or wait until another takes it over",
                saga.id(),
                owner.map_or("?".into(), |o| o.to_string())
            ))),
        }
    }
}
