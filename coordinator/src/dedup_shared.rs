//! Client keys over a log shared by several coordinators (etcd). A request with a key may be
//! sent to any coordinator, and again to another after a failure, so the key is claimed in
//! the log before the request runs: a claim record (`k/KEY` with no answer and no txn id) names
//! the instance running it. Another instance that finds the claim refuses the request while
//! the claimant lives ("not started": the client may retry), and takes the claim over once the
//! claimant is gone: a gone instance can write nothing any more (its writes are guarded by its
//! membership), so its run can no longer commit, and running the request again is safe. The
//! answer replaces the claim as before: with the commit decision, or lazily for an abort.

use txn_coordinator_core::ha::{self, Guard};
use txn_types::rec::{ClientTxnRecord, MemberRecord};
use txn_types::record;
use txn_types::store::{StoreError, WriteBatch};
use txn_types::unix_ms;

use crate::dedup::{ClientKeys, ClientTag, Recorded, client_key};
use crate::error::CoordError;
use crate::log::SharedLog;

/// Tries at claiming a key that other coordinators claim or answer at the same moment.
const CLAIM_TRIES: usize = 5;

impl ClientKeys {
    /// Claims `tag`'s key in the shared log, or returns the answer recorded under it. Errors
    /// say why the request may not run here now.
    pub(crate) async fn claim_shared(
        &self,
        shared: &dyn SharedLog,
        tag: &ClientTag,
    ) -> Result<Option<Recorded>, CoordError> {
        let key = client_key(&tag.id);
        let me = shared.epoch();
        for _ in 0..CLAIM_TRIES {
            let current = self.check(shared.get_revisioned(&key).await)?;
            let mut guards = write_guards_for_claim(&key, 0, me);
            if let Some(r) = current {
                let rec: ClientTxnRecord =
                    self.check(record::decode(&key, &r.value).map_err(Into::into))?;
                if rec.request_sha256 != tag.request_sha256
                    || rec.response.is_some()
                    || !rec.txn_id.is_empty()
                {
                    // Used before (or for another request): its answer, or its refusal.
                    return self.answer_of(tag, &key, rec).await.map(Some);
                }
                let owner = rec.owner_epoch;
                if owner != me
                    && let Some(m) = self.member(shared, owner).await?
                {
                    return Err(CoordError::NotStarted(format!(
                        "client_txn_id {}: the request is running at the coordinator of epoch \
                         {owner} ({}); retry later",
                        tag.id, m.url
                    )));
                }
                guards = write_guards_for_claim(&key, r.revision, me);
                if owner != me {
                    guards.insert(0, Guard::MemberGone(owner));
                }
            }
            let claim = ClientTxnRecord {
                request_sha256: tag.request_sha256.clone(),
                txn_id: String::new(),
                protocol: 0,
                response: None,
                at_unix_ms: unix_ms(),
                owner_epoch: me,
            };
            let mut batch = WriteBatch::default();
            batch.put(key.clone(), record::encode(&claim));
            match shared.write_guarded(guards, batch).await {
                Ok(true) => return Ok(None),
                // Someone else wrote the key meanwhile, or the answer was lost: read again.
                Ok(false) | Err(StoreError::Unavailable(_)) => {}
                Err(e) => return Err(self.check::<()>(Err(e)).unwrap_err()),
            }
        }
        Err(CoordError::NotStarted(format!(
            "client_txn_id {}: other coordinators are claiming it at the same time; retry",
            tag.id
        )))
    }

    async fn member(
        &self,
        shared: &dyn SharedLog,
        epoch: u64,
    ) -> Result<Option<MemberRecord>, CoordError> {
        let key = ha::member_key(epoch);
        match self.check(shared.get_revisioned(&key).await)? {
            Some(r) => Ok(Some(
                self.check(record::decode(&key, &r.value).map_err(Into::into))?,
            )),
            None => Ok(None),
        }
    }

    /// Drops this instance's claim of `tag`'s key when its request ended without an answer
    /// recorded (an error), so another coordinator may run a retry. Best effort: a claim left
    /// behind only sends retries to this instance, which may run them.
    pub(crate) async fn abandon(&self, tag: &ClientTag) {
        let Some(shared) = self.gc.shared() else {
            return;
        };
        let key = client_key(&tag.id);
        let Ok(Some(r)) = shared.get_revisioned(&key).await else {
            return;
        };
        let Ok(rec) = record::decode::<ClientTxnRecord>(&key, &r.value) else {
            return;
        };
        if rec.response.is_none() && rec.txn_id.is_empty() && rec.owner_epoch == shared.epoch() {
            let mut batch = WriteBatch::default();
            batch.delete(key.clone());
            let guards = write_guards_for_claim(&key, r.revision, shared.epoch());
            if let Err(e) = shared.write_guarded(guards, batch).await {
                tracing::debug!(error = %e, "could not drop an unanswered key claim");
            }
        }
    }
}

/// A claim's write: the key unchanged since read at `revision` (0: absent), and this instance
/// alive.
fn write_guards_for_claim(key: &[u8], revision: i64, me: u64) -> Vec<Guard> {
    let mut guards = vec![Guard::Unchanged {
        key: key.to_vec(),
        revision,
    }];
    guards.extend(ha::write_guards(me));
    guards
}
