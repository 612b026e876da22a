//! The resolver: asks about prepared txns that have waited too long for their decision.
//! It asks the coordinator (Resolve) and, while the coordinator is unreachable, the txn's
//! other participants (cooperative termination). What an answer means is the core's rule
//! ([`peer_verdict`], [`ParticipantCore::resolve`]); this loop only decides whom to ask when,
//! with the one backoff schedule ([`Backoff`]).
//!
//! [`ParticipantCore::resolve`]: txn_participant_core::core::ParticipantCore

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use tracing::{Instrument, debug, info, info_span, warn};
use txn_metrics::RetryKind;
use txn_participant_core::core::TxnStatus;
use txn_participant_core::resolve::{Resolved, peer_verdict, peers_verdict};
use txn_types::backoff::Backoff;
use txn_types::types::{CommitPoint, Decision, Resolution, TxnId};

use crate::node::Participant;

/// Why a Resolve call failed.
#[derive(Debug, Clone)]
pub enum TransportError {
    /// The coordinator could not be reached (down, partitioned, timed out).
    Unreachable(String),
    Other(String),
}

/// How the resolver reaches the coordinator and the other participants.
pub trait ResolveTransport: Send + Sync + 'static {
    fn resolve(
        &self,
        txn: TxnId,
        commit_point: CommitPoint,
    ) -> BoxFuture<'static, Result<Resolution, TransportError>>;
    fn query_peer(&self, peer: String, txn: TxnId)
    -> BoxFuture<'static, Result<TxnStatus, String>>;
}

/// When to ask next about one in-doubt txn.
struct Schedule {
    next_try: Instant,
    backoff: Backoff,
}

impl Participant {
    /// Resolves txns that have waited too long for their decision. Runs until the returned
    /// future is dropped.
    pub async fn run_resolver(self: Arc<Self>, transport: Arc<dyn ResolveTransport>) {
        let mut pending: HashMap<TxnId, Schedule> = HashMap::new();
        let start = Instant::now();
        let recovered = std::mem::take(&mut *self.recovered.lock().expect("recovered lock"));
        for t in recovered {
            // Recovered txns lost their decision messages with the crash: ask at once.
            pending.insert(t, self.schedule(start));
        }
        let mut tick = tokio::time::interval(self.config.resolve_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let current: Vec<(TxnId, Vec<String>, CommitPoint)> = self.in_doubt();
            pending.retain(|t, _| current.iter().any(|(c, _, _)| c == t));
            for (txn, participants, point) in current {
                let s = pending
                    .entry(txn.clone())
                    .or_insert_with(|| self.schedule(now + self.config.resolve_after));
                if now < s.next_try {
                    continue;
                }
                let span = info_span!("resolve", txn = %txn, attempt = s.backoff.attempts() + 1);
                let decided = self
                    .resolve_once(transport.as_ref(), &txn, &participants, point)
                    .instrument(span)
                    .await;
                if !decided {
                    txn_metrics::retried(RetryKind::Resolve);
                    s.next_try = now + s.backoff.failed(rand::random());
                }
            }
        }
    }

    fn schedule(&self, first_try: Instant) -> Schedule {
        Schedule {
            next_try: first_try,
            backoff: Backoff::new(
                self.config.resolve_interval,
                self.config
                    .resolve_backoff_max
                    .max(self.config.resolve_interval),
            ),
        }
    }

    /// One attempt to learn and apply the decision of `txn`; true once it is applied.
    async fn resolve_once(
        &self,
        transport: &dyn ResolveTransport,
        txn: &TxnId,
        participants: &[String],
        point: CommitPoint,
    ) -> bool {
        let decision = match transport.resolve(txn.clone(), point).await {
            Ok(Resolution::Decided(d)) => Some(d),
            Ok(Resolution::Pending) => {
                debug!("coordinator has not decided yet");
                None
            }
            Ok(Resolution::AskParticipants) => {
                debug!("an earlier coordinator ran it and kept no record; asking the participants");
                self.ask_peers(transport, txn, participants, point).await
            }
            Err(TransportError::Unreachable(e)) => {
                debug!(error = %e, "coordinator unreachable; asking the other participants");
                self.ask_peers(transport, txn, participants, point).await
            }
            Err(TransportError::Other(e)) => {
                warn!(error = %e, "resolve failed; will ask again");
                None
            }
        };
        let Some(decision) = decision else {
            return false;
        };
        let resolved = self.run_resolution(txn, decision).await;
        match resolved {
            Ok(Resolved::Applied) => {
                info!(?decision, "in-doubt txn resolved");
                true
            }
            Ok(Resolved::LeftHeld) => {
                debug!("held by an operator; leaving it for an explicit decision");
                false
            }
            Ok(Resolved::Refused(r)) => {
                warn!(
                    ?r,
                    ?decision,
                    "the resolved decision meets the other outcome here"
                );
                false
            }
            Err(e) => {
                warn!(error = %e, "applying the resolved decision failed");
                false
            }
        }
    }

    /// Asks the txn's other participants, one by one, until one answer settles it (see
    /// [`peer_verdict`]), or, for a txn that commits at its votes, until every one has said
    /// it is prepared ([`peers_verdict`]); None while that is not so: blocked until the
    /// coordinator answers, or the peers can be reached.
    async fn ask_peers(
        &self,
        transport: &dyn ResolveTransport,
        txn: &TxnId,
        participants: &[String],
        point: CommitPoint,
    ) -> Option<Decision> {
        let peers: Vec<&String> = participants
            .iter()
            .filter(|p| **p != self.config.name)
            .collect();
        let mut answers = Vec::with_capacity(peers.len());
        for peer in &peers {
            match transport.query_peer((*peer).clone(), txn.clone()).await {
                Ok(status) => {
                    if let Some(decision) = peer_verdict(status) {
                        info!(%peer, ?status, ?decision, "a peer's answer settles the txn");
                        return Some(decision);
                    }
                    answers.push(status);
                }
                Err(e) => debug!(%peer, error = %e, "peer unreachable"),
            }
        }
        if let Some(decision) = peers_verdict(point, &answers, peers.len()) {
            info!(
                ?decision,
                "every peer is prepared and the txn commits at its votes"
            );
            return Some(decision);
        }
        debug!("every reachable peer is prepared: blocked until the coordinator answers");
        None
    }
}
