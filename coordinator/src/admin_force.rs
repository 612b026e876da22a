//! The operator's actions: re-driving a stuck txn now, and forced outcomes. Whether a
//! forced outcome is allowed is the core's table ([`txn_coordinator_core::forced`]); this
//! carries it out: one action per txn at a time (the core's pin, so Resolve answers PENDING
//! meanwhile), the forced outcome recorded with its reason, holds at the participants before
//! a forced commit, and Aborts marked as an operator's.

use std::sync::Arc;

use tracing::{info, warn};
use txn_coordinator_core::core::{Effect, TxnView, decision_key};
use txn_coordinator_core::forced::{ForceAbort, ForceCommit, HoldAnswer, commit_after_holds};
use txn_proto::pb::v1 as pb;
use txn_types::rec::DecisionRecord;
use txn_types::record;
use txn_types::store::WriteBatch;
use txn_types::types::{InvalidInput, ParticipantId, TxnId};
use txn_types::unix_ms;

use crate::admin::{AdminService, MAX_REASON_LEN, forced_key, timed, view_name};
use crate::error::CoordError;
use crate::node::Coordinator;

impl AdminService {
    pub async fn admin_retry_txn(&self, txn: &TxnId) -> Result<String, CoordError> {
        let view = self.core().view(txn);
        match view {
            Some(TxnView::Committing { unacked }) => {
                self.retry_now.notify_waiters();
                return Ok(format!(
                    "re-sending Commit now to {}",
                    unacked
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some(v) => {
                return Err(CoordError::Precondition(format!(
                    "txn_id {txn}: is {}; the coordinator is deciding it, nothing to retry",
                    view_name(&v)
                )));
            }
            None => {}
        }
        self.owned_here(txn).await?;
        let _lock = self.operator_lock(txn)?;
        // Unknown here and not logged: presumed abort. Tell whoever still holds it.
        let in_doubt = self.in_doubt_everywhere().await;
        let Some((_, _, holders)) = in_doubt.get(txn.as_str()) else {
            return Err(CoordError::NotFound(format!(
                "txn_id {txn}: not in flight at the coordinator and not prepared at any participant"
            )));
        };
        let holders: Vec<ParticipantId> = holders
            .iter()
            .filter_map(|t| t.participants.first())
            .filter_map(|p| ParticipantId::parse("p", p).ok())
            .collect();
        self.node.run_effects(
            txn,
            holders
                .iter()
                .map(|p| Effect::SendAbort { to: p.clone() })
                .collect(),
        );
        Ok(format!(
            "no decision logged (presumed abort): sent Abort to {}",
            holders
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Over a shared log (etcd), refuses an operator's action on a txn that another live
    /// coordinator owns: only the owner knows whether it is about to decide it. A txn held
    /// here, or whose owner is gone, is this instance's to act on.
    async fn owned_here(&self, txn: &TxnId) -> Result<(), CoordError> {
        let Some(shared) = self.gc.shared() else {
            return Ok(());
        };
        if self.core().view(txn).is_some() {
            return Ok(());
        }
        let logged = self.logged_decision(txn).await?;
        let owner = match &logged {
            Some(d) => txn_coordinator_core::ha::owner_of(d.owner_epoch, txn),
            None => txn.epoch(),
        };
        let Some(owner) = owner.filter(|o| *o != shared.epoch()) else {
            return Ok(());
        };
        let members = self.check(shared.members().await)?;
        match (members.get(&owner), logged) {
            (Some(m), _) => Err(CoordError::Precondition(format!(
                "txn_id {txn}: the coordinator of epoch {owner} ({}) owns it; act there",
                m.url
            ))),
            (None, Some(_)) => Err(CoordError::Precondition(format!(
                "txn_id {txn}: its commit decision belonged to a coordinator that is gone, and a \
                 live one takes it over within seconds; try again then"
            ))),
            (None, None) => Ok(()),
        }
    }

    /// One operator action per txn at a time; while it runs, Resolve answers PENDING for the
    /// txn. Released when the guard drops.
    fn operator_lock(&self, txn: &TxnId) -> Result<OperatorLock, CoordError> {
        if !self.core().pin(txn) {
            return Err(CoordError::Precondition(format!(
                "txn_id {txn}: another operator action on it is in progress"
            )));
        }
        Ok(OperatorLock {
            node: self.node.clone(),
            txn: txn.clone(),
        })
    }

    async fn record_forced(
        &self,
        txn: &TxnId,
        decision: pb::Decision,
        reason: &str,
        heuristic: bool,
    ) -> Result<(), CoordError> {
        let rec = pb::ForcedOutcome {
            decision: decision as i32,
            reason: reason.to_owned(),
            heuristic,
            at_unix_ms: unix_ms(),
        };
        let mut b = WriteBatch::default();
        b.put(forced_key(txn), record::encode(&rec));
        self.check(self.gc.write_durable(b).await)
    }

    pub async fn admin_force(
        &self,
        txn: &TxnId,
        decision: pb::Decision,
        reason: &str,
        heuristic: bool,
    ) -> Result<pb::TxnDetail, CoordError> {
        if reason.trim().is_empty() {
            return Err(InvalidInput::new("reason", "must say why the outcome is forced").into());
        }
        if reason.len() > MAX_REASON_LEN {
            return Err(InvalidInput::new(
                "reason",
                format!("is {} bytes, the limit is {MAX_REASON_LEN}", reason.len()),
            )
            .into());
        }
        if !matches!(decision, pb::Decision::Abort | pb::Decision::Commit) {
            return Err(
                InvalidInput::new("decision", "must be DECISION_COMMIT or DECISION_ABORT").into(),
            );
        }
        self.owned_here(txn).await?;
        let _lock = self.operator_lock(txn)?;
        match decision {
            pb::Decision::Abort => self.force_abort(txn, reason, heuristic).await?,
            _ => self.force_commit(txn, reason, heuristic).await?,
        }
        self.admin_show_txn(txn).await
    }

    async fn force_abort(
        &self,
        txn: &TxnId,
        reason: &str,
        heuristic: bool,
    ) -> Result<(), CoordError> {
        let logged = self.logged_decision(txn).await?.is_some();
        if !heuristic && self.core().view(txn).is_none() {
            // A txn at its votes that this coordinator does not hold: every participant
            // prepared would mean it has committed, and its resolvers will commit it.
            let at_votes = self
                .in_doubt_everywhere()
                .await
                .get(txn.as_str())
                .is_some_and(|(_, _, holders)| holders.iter().any(|h| h.commit_at_votes));
            if at_votes {
                return Err(CoordError::Precondition(format!(
                    "txn_id {txn}: it commits at its votes and is prepared at a participant; \
                     its participants decide it (every one prepared: committed). Use \
                     --heuristic to force it anyway"
                )));
            }
        }
        // Decided and applied under one core lock (see `force_abort_decision`).
        let (members, verdict) = {
            let mut core = self.core();
            let members = core.participants_of(txn).unwrap_or_default();
            (members, core.force_abort_decision(txn, logged, heuristic))
        };
        let sends = match verdict {
            ForceAbort::Refused(why) => return Err(CoordError::Precondition(why)),
            ForceAbort::Aborted(effects) => {
                self.record_forced(txn, pb::Decision::Abort, reason, heuristic)
                    .await?;
                effects
            }
            ForceAbort::AbortEverywhere { delete_decision } => {
                self.record_forced(txn, pb::Decision::Abort, reason, heuristic)
                    .await?;
                if delete_decision {
                    let mut b = WriteBatch::default();
                    b.delete(decision_key(txn));
                    self.check(self.gc.write_durable(b).await)?;
                }
                let mut targets: Vec<ParticipantId> = members;
                for (id, (_, _, holders)) in self.in_doubt_everywhere().await {
                    if id == txn.as_str() {
                        for h in holders {
                            if let Some(p) = h
                                .participants
                                .first()
                                .and_then(|p| ParticipantId::parse("p", p).ok())
                                && !targets.contains(&p)
                            {
                                targets.push(p);
                            }
                        }
                    }
                }
                targets
                    .into_iter()
                    .map(|to| Effect::SendAbort { to })
                    .collect()
            }
        };
        warn!(txn = %txn, heuristic, reason, "operator forced ABORT");
        self.send_forced_aborts(txn, sends);
        Ok(())
    }

    /// Sends Aborts marked as an operator's, so they override a participant's hold (the
    /// coordinator's own Aborts leave a held txn alone).
    fn send_forced_aborts(&self, txn: &TxnId, effects: Vec<Effect>) {
        for e in effects {
            if let Effect::SendAbort { to } = e {
                let Some(ch) = self.channel(&to) else {
                    continue;
                };
                let txn = txn.clone();
                tokio::spawn(async move {
                    let mut c = pb::participant_client::ParticipantClient::new(ch);
                    let req = timed(pb::AbortRequest {
                        txn_id: txn.to_string(),
                        forced: true,
                    });
                    if let Err(s) = c.abort(req).await {
                        warn!(txn = %txn, participant = %to, error = %s.message(),
                            "forced Abort not delivered; run txnctl txn abort again");
                    }
                });
            }
        }
    }

    async fn force_commit(
        &self,
        txn: &TxnId,
        reason: &str,
        heuristic: bool,
    ) -> Result<(), CoordError> {
        let logged = self.logged_decision(txn).await?.is_some();
        let verdict = self.core().force_commit_decision(txn, logged, heuristic);
        match verdict {
            ForceCommit::Refused(why) => return Err(CoordError::Precondition(why)),
            ForceCommit::RetryCommits => {
                self.retry_now.notify_waiters();
                return Ok(());
            }
            ForceCommit::HoldEverywhere => {}
        }
        let in_doubt = self.in_doubt_everywhere().await;
        let Some((members, _, _)) = in_doubt.get(txn.as_str()) else {
            return Err(CoordError::NotFound(format!(
                "txn_id {txn}: not prepared at any participant; nothing to commit"
            )));
        };
        let members: Vec<ParticipantId> = members
            .iter()
            .filter_map(|p| ParticipantId::parse("p", p).ok())
            .collect();
        self.force_commit_held(txn, &members, reason, heuristic)
            .await
    }

    /// With Resolve answering PENDING for `txn`, pins it at every participant; commits only if
    /// every one of them is still prepared (so every one voted YES and none can abort on its
    /// own any more), unless `heuristic`.
    async fn force_commit_held(
        &self,
        txn: &TxnId,
        members: &[ParticipantId],
        reason: &str,
        heuristic: bool,
    ) -> Result<(), CoordError> {
        let mut answers = Vec::new();
        for p in members {
            let state = match self.channel(p) {
                Some(ch) => self
                    .participant_admin(ch)
                    .hold(timed(pb::TxnIdRequest {
                        txn_id: txn.to_string(),
                    }))
                    .await
                    .ok()
                    .and_then(|r| pb::TxnState::try_from(r.into_inner().state).ok()),
                None => None,
            };
            let answer = match state {
                Some(pb::TxnState::Prepared) => HoldAnswer::Prepared,
                Some(pb::TxnState::Committed) => HoldAnswer::Committed,
                _ => HoldAnswer::Other,
            };
            let shown = state
                .map(|s| format!("{s:?}"))
                .unwrap_or_else(|| "unreachable".into());
            answers.push((p.clone(), answer, shown));
        }
        if let Err(why) = commit_after_holds(txn, &answers, heuristic) {
            // Let go of the holds taken, so the txn is resolved the normal way again.
            for p in members {
                if let Some(ch) = self.channel(p) {
                    let _ = self
                        .participant_admin(ch)
                        .release(timed(pb::TxnIdRequest {
                            txn_id: txn.to_string(),
                        }))
                        .await;
                }
            }
            return Err(CoordError::Precondition(why));
        }
        self.record_forced(txn, pb::Decision::Commit, reason, heuristic)
            .await?;
        let rec = DecisionRecord {
            txn_id: txn.to_string(),
            participants: members.iter().map(|p| p.to_string()).collect(),
            decided_at_unix_ms: unix_ms(),
            ..Default::default()
        };
        let mut b = WriteBatch::default();
        b.put(decision_key(txn), record::encode(&rec));
        self.check(self.gc.write_durable(b).await)?;
        let effects = self.core().adopt_commit(txn, members.to_vec(), unix_ms());
        info!(txn = %txn, heuristic, reason, "operator forced COMMIT");
        self.node.run_effects(txn, effects);
        Ok(())
    }
}

/// Held while an operator action runs on a txn.
struct OperatorLock {
    node: Arc<Coordinator>,
    txn: TxnId,
}

impl Drop for OperatorLock {
    fn drop(&mut self) {
        self.node.core().unpin(&self.txn);
    }
}
