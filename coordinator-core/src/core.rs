//! The coordinator's side of two-phase commit with presumed abort, as a state machine with no
//! I/O. Inputs are events (a txn begins, a vote arrives, the prepare deadline passes, the
//! decision became durable, a participant acked); outputs are [`Effect`]s for the driver.
//!
//! Invariants it protects, for a txn whose commit point is its logged decision
//! ([`CommitPoint::Decision`]):
//! - COMMIT is decided only when every participant voted YES, and the decision record must be
//!   durable ([`Effect::PersistDecision`] then [`CoordinatorCore::on_decision_durable`]) before
//!   the client is told or any Commit is sent.
//! - ABORT is never forced (presumed abort): an unknown txn is an aborted txn, so Resolve
//!   answers ABORT for a txn it has no record of, and PENDING while one is still undecided or
//!   its commit decision is not yet durable: it never answers ABORT for a txn it might commit.
//!
//! For a txn that commits at its votes ([`CommitPoint::Votes`]):
//! - the last durable YES commits it: the client is told and the Commits go out at once, with
//!   nothing logged;
//! - ABORT is decided only once it is fenced: a participant voted NO (a NO is durable before it
//!   is sent), or answered a fence ([`Effect::Fence`]) with a durable tombstone. A Prepare that
//!   failed or a deadline that passed is not enough: the vote may be durable all the same, and
//!   then the txn has committed. So a missing vote is fenced, and a fence that finds the
//!   participant prepared counts as its YES.
//! - Resolve never presumes abort for such a txn begun by an earlier epoch: it has no record
//!   of it either way, so it sends the asker to the participants
//!   ([`Resolution::AskParticipants`]).
//!
//! Storage layout: `e` the epoch record, `c/<txn>` commit decisions not yet acked by every
//! participant (deleted lazily once they all have: the decision has ended).

use std::collections::{BTreeMap, BTreeSet};

use txn_types::rec::{DecisionRecord, EpochRecord};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{CommitPoint, Decision, InvalidInput, ParticipantId, Resolution, TxnId};

pub const EPOCH_KEY: &[u8] = b"e";
pub const DECISION_PREFIX: &[u8] = b"c/";

pub fn decision_key(txn: &TxnId) -> Vec<u8> {
    [DECISION_PREFIX, txn.as_str().as_bytes()].concat()
}

/// A vote as the coordinator sees it: a failed or timed-out Prepare counts as NO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteResult {
    Yes,
    No { reason: String },
    Failed { error: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Force this decision record to disk, then call `on_decision_durable`.
    PersistDecision { key: Vec<u8>, record: Vec<u8> },
    /// Tell the client the txn committed.
    ReplyCommitted,
    /// Tell the client the txn aborted, and why.
    ReplyAborted {
        reason: String,
        failed_branch: Option<usize>,
    },
    /// Send Commit to a participant, until it acks.
    SendCommit { to: ParticipantId },
    /// Send Abort to a participant, best effort.
    SendAbort { to: ParticipantId },
    /// Ask a participant whose vote is missing for a txn that commits at its votes what it
    /// holds, fencing it off if it never prepared (its QueryPeer: a durable tombstone first).
    /// Retried until answered or the txn is decided; the answer goes to `on_fence_reply`.
    Fence { to: ParticipantId },
    /// Delete the decision record, lazily: every participant has acked. Once that is
    /// durable, the participants may forget the txn's outcome.
    EndDecision {
        key: Vec<u8>,
        participants: Vec<ParticipantId>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Phase {
    /// Waiting for votes; `yes` holds who voted YES so far.
    Preparing { yes: BTreeSet<usize> },
    /// A txn that commits at its votes lost a vote (its Prepare failed, or the deadline
    /// passed): the participants in `yes` are prepared, the others are being fenced.
    /// `reason` says why, for the client if the txn aborts.
    Fencing {
        yes: BTreeSet<usize>,
        reason: String,
    },
    /// Every vote was YES; the decision record is being forced.
    Deciding,
    /// The commit decision is durable; `acked` holds who has applied it.
    Committing { acked: BTreeSet<usize> },
}

#[derive(Debug, Clone)]
struct TxnState {
    participants: Vec<ParticipantId>,
    commit_point: CommitPoint,
    phase: Phase,
    decided_at_unix_ms: u64,
    /// The prepare deadline, in milliseconds on the driver's monotonic clock.
    deadline_ms: u64,
    began: std::time::Instant,
}

// Equality and hashing leave out `began`: it only serves the operators' age display, and the
// model checker (modelcheck/) must see two cores with the same protocol state as one state.
impl PartialEq for TxnState {
    fn eq(&self, other: &Self) -> bool {
        self.participants == other.participants
            && self.commit_point == other.commit_point
            && self.phase == other.phase
            && self.decided_at_unix_ms == other.decided_at_unix_ms
            && self.deadline_ms == other.deadline_ms
    }
}

impl Eq for TxnState {}

impl TxnState {
    /// The txn has committed: the client is told, and every participant gets its Commit.
    fn start_committing(&mut self) -> Vec<Effect> {
        self.phase = Phase::Committing {
            acked: BTreeSet::new(),
        };
        let mut effects = vec![Effect::ReplyCommitted];
        effects.extend(
            self.participants
                .iter()
                .map(|p| Effect::SendCommit { to: p.clone() }),
        );
        effects
    }
}

impl std::hash::Hash for TxnState {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.participants.hash(state);
        self.commit_point.hash(state);
        self.phase.hash(state);
        self.decided_at_unix_ms.hash(state);
        self.deadline_ms.hash(state);
    }
}

/// Summary of a txn for operators and Resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnView {
    Preparing,
    /// Fencing the participants whose votes are missing (a txn that commits at its votes).
    Fencing,
    Deciding,
    Committing {
        unacked: Vec<ParticipantId>,
    },
}

/// Ordered collections only, so that cloning, comparing and hashing a core is deterministic
/// (the model checker explores cores as states).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoordinatorCore {
    epoch: u64,
    next_seq: u64,
    txns: BTreeMap<TxnId, TxnState>,
    /// Txns an operator is acting on: Resolve answers PENDING for them meanwhile, so no
    /// participant's resolver aborts a txn an operator is committing.
    pinned: BTreeSet<TxnId>,
    /// Txns an operator aborted while their votes were still being collected: the next vote
    /// or the deadline tells the client.
    operator_aborted: BTreeSet<TxnId>,
}

/// What a restarted coordinator reads from its log.
#[derive(Debug)]
pub struct Opened {
    pub core: CoordinatorCore,
    /// The bumped epoch; durable before anything else is done.
    pub epoch_write: WriteBatch,
    /// Commits to send again for every decision that had not ended.
    pub resend: Vec<(TxnId, Vec<Effect>)>,
}

/// The reason a client hears when an operator aborted its txn.
pub const OPERATOR_ABORT_REASON: &str = "aborted by an operator (txnctl txn abort)";

impl CoordinatorCore {
    /// A core for a coordinator whose epoch (already bumped and durable) is `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_seq: 1,
            txns: BTreeMap::new(),
            pinned: BTreeSet::new(),
            operator_aborted: BTreeSet::new(),
        }
    }

    /// A coordinator's start: the next epoch (ids are unique across restarts because every
    /// start bumps it durably), and every commit decision whose end was not recorded, whose
    /// Commits must be sent again. A record that fails its checksum stops the start.
    pub fn open(store: &dyn Store) -> Result<Opened, StoreError> {
        let epoch = match store.get(EPOCH_KEY)? {
            Some(bytes) => record::decode::<EpochRecord>(EPOCH_KEY, &bytes)?.epoch + 1,
            None => 1,
        };
        let mut epoch_write = WriteBatch::default();
        epoch_write.put(EPOCH_KEY.to_vec(), record::encode(&EpochRecord { epoch }));
        let mut decisions = Vec::new();
        for (key, bytes) in store.scan_prefix(DECISION_PREFIX)? {
            let rec: DecisionRecord = record::decode(&key, &bytes)?;
            let corrupt = |e: InvalidInput| {
                StoreError::Corrupt(record::CorruptRecord {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    problem: e.to_string(),
                })
            };
            let txn = TxnId::parse("txn_id", &rec.txn_id).map_err(corrupt)?;
            let ps = rec
                .participants
                .iter()
                .map(|p| ParticipantId::parse("participants", p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            decisions.push((txn, ps, rec.decided_at_unix_ms));
        }
        let mut core = Self::new(epoch);
        let resend = core.recover(decisions);
        Ok(Opened {
            core,
            epoch_write,
            resend,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Reloads commit decisions that had not ended before a restart; each needs its Commit
    /// re-sent to every participant.
    pub fn recover(
        &mut self,
        decisions: Vec<(TxnId, Vec<ParticipantId>, u64)>,
    ) -> Vec<(TxnId, Vec<Effect>)> {
        decisions
            .into_iter()
            .map(|(txn, participants, decided_at_unix_ms)| {
                let effects = participants
                    .iter()
                    .map(|p| Effect::SendCommit { to: p.clone() })
                    .collect();
                self.txns.insert(
                    txn.clone(),
                    TxnState {
                        participants,
                        commit_point: CommitPoint::Decision,
                        phase: Phase::Committing {
                            acked: BTreeSet::new(),
                        },
                        decided_at_unix_ms,
                        deadline_ms: u64::MAX,
                        began: std::time::Instant::now(),
                    },
                );
                (txn, effects)
            })
            .collect()
    }

    /// A fresh id from the same sequence as txns (sagas use it).
    pub fn next_id(&mut self) -> TxnId {
        let id = TxnId::generated(self.epoch, self.next_seq);
        self.next_seq += 1;
        id
    }

    /// Starts a txn over `participants` whose votes must all be in before `deadline_ms` on the
    /// driver's monotonic clock (the driver sends the Prepares), committing at its decision.
    pub fn begin(&mut self, participants: Vec<ParticipantId>, deadline_ms: u64) -> TxnId {
        self.begin_at(participants, deadline_ms, CommitPoint::Decision)
    }

    /// [`Self::begin`], with the txn's commit point.
    pub fn begin_at(
        &mut self,
        participants: Vec<ParticipantId>,
        deadline_ms: u64,
        commit_point: CommitPoint,
    ) -> TxnId {
        let txn = self.next_id();
        self.txns.insert(
            txn.clone(),
            TxnState {
                participants,
                commit_point,
                phase: Phase::Preparing {
                    yes: BTreeSet::new(),
                },
                decided_at_unix_ms: 0,
                deadline_ms,
                began: std::time::Instant::now(),
            },
        );
        txn
    }

    /// Starts the prepare window of `txn` again, to end at `deadline_ms` (a single-branch txn
    /// that tried one phase first and falls back to two).
    pub fn restart_deadline(&mut self, txn: &TxnId, deadline_ms: u64) {
        if let Some(state) = self.txns.get_mut(txn) {
            state.deadline_ms = deadline_ms;
        }
    }

    /// An operator aborts a txn that is still collecting votes. Returns the Abort sends, or
    /// None if the txn is not in that phase, or commits at its votes: such a txn may already
    /// have committed, and only a fence (its deadline's) can abort it.
    pub fn force_abort(&mut self, txn: &TxnId) -> Option<Vec<Effect>> {
        let at_votes = self.commit_point(txn) == Some(CommitPoint::Votes);
        match self.txns.get(txn).map(|s| &s.phase) {
            Some(Phase::Preparing { .. }) if !at_votes => {
                let mut effects = self.abort(txn, OPERATOR_ABORT_REASON.into(), None);
                effects.retain(|e| matches!(e, Effect::SendAbort { .. }));
                self.operator_aborted.insert(txn.clone());
                Some(effects)
            }
            _ => None,
        }
    }

    /// The client's answer for a txn an operator aborted while its votes were collected.
    fn operator_abort_reply(&mut self, txn: &TxnId) -> Vec<Effect> {
        if self.operator_aborted.remove(txn) {
            vec![Effect::ReplyAborted {
                reason: OPERATOR_ABORT_REASON.into(),
                failed_branch: None,
            }]
        } else {
            Vec::new()
        }
    }

    /// Pins `txn` for an operator action; false if another one holds it.
    pub fn pin(&mut self, txn: &TxnId) -> bool {
        self.pinned.insert(txn.clone())
    }

    pub fn unpin(&mut self, txn: &TxnId) {
        self.pinned.remove(txn);
    }

    /// Adopts a commit decision made outside the vote (an operator's forced commit, after
    /// every participant was found prepared); the driver has made it durable.
    pub fn adopt_commit(
        &mut self,
        txn: &TxnId,
        participants: Vec<ParticipantId>,
        now_unix_ms: u64,
    ) -> Vec<Effect> {
        self.recover(vec![(txn.clone(), participants, now_unix_ms)])
            .pop()
            .map(|(_, e)| e)
            .unwrap_or_default()
    }

    /// Drops a txn whatever its phase (a heuristic outcome); its commit retries stop.
    pub fn forget(&mut self, txn: &TxnId) {
        self.txns.remove(txn);
        self.operator_aborted.remove(txn);
    }

    /// Every txn held in memory: id, view, participants, age.
    pub fn list(&self) -> Vec<(TxnId, TxnView, Vec<ParticipantId>, std::time::Duration)> {
        let mut out: Vec<_> = self
            .txns
            .keys()
            .filter_map(|t| {
                let s = &self.txns[t];
                Some((
                    t.clone(),
                    self.view(t)?,
                    s.participants.clone(),
                    s.began.elapsed(),
                ))
            })
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.3));
        out
    }

    pub fn participants_of(&self, txn: &TxnId) -> Option<Vec<ParticipantId>> {
        self.txns.get(txn).map(|s| s.participants.clone())
    }

    pub fn commit_point(&self, txn: &TxnId) -> Option<CommitPoint> {
        self.txns.get(txn).map(|s| s.commit_point)
    }

    /// A vote from the participant at `index` in the txn's participant list, arriving at
    /// `now_ms` on the driver's monotonic clock. A vote at or after the prepare deadline
    /// counts as a timeout, even if it was sent in time (a coordinator paused past the deadline
    /// sees the vote and the deadline at once): participants drop abort tombstones some
    /// minutes after writing them, on the strength of this deadline.
    pub fn on_vote(
        &mut self,
        txn: &TxnId,
        index: usize,
        vote: VoteResult,
        now_ms: u64,
        now_unix_ms: u64,
    ) -> Vec<Effect> {
        let Some(state) = self.txns.get_mut(txn) else {
            // An operator aborted it meanwhile, or a late vote for a txn already aborted.
            return self.operator_abort_reply(txn);
        };
        if state.commit_point == CommitPoint::Votes {
            return self.on_vote_at_votes(txn, index, vote);
        }
        if now_ms >= state.deadline_ms {
            return self.on_prepare_timeout(txn);
        }
        let Phase::Preparing { yes } = &mut state.phase else {
            return Vec::new();
        };
        match vote {
            VoteResult::Yes => {
                yes.insert(index);
                if yes.len() < state.participants.len() {
                    return Vec::new();
                }
                state.phase = Phase::Deciding;
                state.decided_at_unix_ms = now_unix_ms;
                let rec = DecisionRecord {
                    txn_id: txn.as_str().to_owned(),
                    participants: state
                        .participants
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                    decided_at_unix_ms: now_unix_ms,
                    owner_epoch: 0,
                };
                vec![Effect::PersistDecision {
                    key: decision_key(txn),
                    record: record::encode(&rec),
                }]
            }
            VoteResult::No { reason } => self.abort(
                txn,
                format!("{} voted NO: {reason}", self.participant(txn, index)),
                Some(index),
            ),
            VoteResult::Failed { error } => self.abort(
                txn,
                format!(
                    "prepare at {} failed: {error}",
                    self.participant(txn, index)
                ),
                Some(index),
            ),
        }
    }

    /// A vote for a txn that commits at its votes. A YES counts whenever it comes (it is
    /// durable, so the txn commits with the last one); a NO is durable too, so it fences the
    /// txn and the abort is safe at once; a failed Prepare proves nothing, so the missing
    /// votes are fenced. A vote after the deadline is a vote all the same: the deadline only
    /// starts the fencing.
    fn on_vote_at_votes(&mut self, txn: &TxnId, index: usize, vote: VoteResult) -> Vec<Effect> {
        match vote {
            VoteResult::Yes => self.count_yes(txn, index),
            VoteResult::No { reason } => {
                if !self.collecting(txn) {
                    return Vec::new();
                }
                self.abort(
                    txn,
                    format!("{} voted NO: {reason}", self.participant(txn, index)),
                    Some(index),
                )
            }
            VoteResult::Failed { error } => {
                let reason = format!(
                    "prepare at {} failed: {error}",
                    self.participant(txn, index)
                );
                self.start_fencing(txn, reason)
            }
        }
    }

    /// Whether `txn` is still collecting votes (or fencing the missing ones).
    fn collecting(&self, txn: &TxnId) -> bool {
        matches!(
            self.txns.get(txn).map(|s| &s.phase),
            Some(Phase::Preparing { .. } | Phase::Fencing { .. })
        )
    }

    /// A YES (or a fence that found the participant prepared) for a txn that commits at its
    /// votes; the last one commits it.
    fn count_yes(&mut self, txn: &TxnId, index: usize) -> Vec<Effect> {
        let Some(state) = self.txns.get_mut(txn) else {
            return Vec::new();
        };
        let (Phase::Preparing { yes } | Phase::Fencing { yes, .. }) = &mut state.phase else {
            return Vec::new();
        };
        yes.insert(index);
        if yes.len() < state.participants.len() {
            return Vec::new();
        }
        // Every YES is durable: the txn has committed. Nothing to log.
        state.start_committing()
    }

    /// Fences every participant whose YES is missing (again, if fencing already: the driver's
    /// retry).
    fn start_fencing(&mut self, txn: &TxnId, reason: String) -> Vec<Effect> {
        let Some(state) = self.txns.get_mut(txn) else {
            return Vec::new();
        };
        let yes = match &state.phase {
            Phase::Preparing { yes } | Phase::Fencing { yes, .. } => yes.clone(),
            _ => return Vec::new(),
        };
        if let Phase::Preparing { .. } = state.phase {
            state.phase = Phase::Fencing {
                yes: yes.clone(),
                reason,
            };
        }
        state
            .participants
            .iter()
            .enumerate()
            .filter(|(i, _)| !yes.contains(i))
            .map(|(_, p)| Effect::Fence { to: p.clone() })
            .collect()
    }

    /// A fenced participant's answer: `Some(true)` prepared (or committed: a peer's
    /// resolver found every participant prepared), `Some(false)` fenced off (a tombstone, a
    /// NO, or an abort, each durable).
    pub fn on_fence_reply(&mut self, txn: &TxnId, index: usize, prepared: bool) -> Vec<Effect> {
        if prepared {
            return self.count_yes(txn, index);
        }
        let reason = match self.txns.get(txn).map(|s| &s.phase) {
            Some(Phase::Fencing { reason, .. }) => reason.clone(),
            Some(Phase::Preparing { .. }) => {
                format!("{} never prepared", self.participant(txn, index))
            }
            _ => return Vec::new(),
        };
        self.abort(txn, reason, Some(index))
    }

    /// The prepare deadline passed. Aborts the txn if it is still collecting votes (a txn
    /// that commits at its votes is fenced first).
    pub fn on_prepare_timeout(&mut self, txn: &TxnId) -> Vec<Effect> {
        if !self.txns.contains_key(txn) {
            return self.operator_abort_reply(txn);
        }
        if self.commit_point(txn) == Some(CommitPoint::Votes) {
            let reason = match self.txns.get(txn).map(|s| &s.phase) {
                Some(Phase::Preparing { yes }) => {
                    format!(
                        "prepare deadline passed without a vote from {}",
                        self.missing(txn, yes)
                    )
                }
                Some(Phase::Fencing { reason, .. }) => reason.clone(),
                _ => return Vec::new(),
            };
            return self.start_fencing(txn, reason);
        }
        match self.txns.get(txn).map(|s| &s.phase) {
            Some(Phase::Preparing { yes }) => {
                let missing = self.missing(txn, yes);
                self.abort(
                    txn,
                    format!("prepare deadline passed without a vote from {missing}"),
                    None,
                )
            }
            _ => Vec::new(),
        }
    }

    /// The participants of `txn` not in `yes`, for a reason text.
    fn missing(&self, txn: &TxnId, yes: &BTreeSet<usize>) -> String {
        self.txns[txn]
            .participants
            .iter()
            .enumerate()
            .filter(|(i, _)| !yes.contains(i))
            .map(|(_, p)| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn participant(&self, txn: &TxnId, index: usize) -> String {
        self.txns
            .get(txn)
            .and_then(|s| s.participants.get(index))
            .map(|p| p.to_string())
            .unwrap_or_else(|| format!("participant #{index}"))
    }

    fn abort(&mut self, txn: &TxnId, reason: String, failed_branch: Option<usize>) -> Vec<Effect> {
        let state = self
            .txns
            .remove(txn)
            .expect("abort of a txn the core holds");
        let mut effects = vec![Effect::ReplyAborted {
            reason,
            failed_branch,
        }];
        // Presumed abort: nothing is logged. Every participant is told, including those whose
        // Prepare may still be in flight (they keep a tombstone and vote NO later).
        effects.extend(
            state
                .participants
                .into_iter()
                .map(|to| Effect::SendAbort { to }),
        );
        effects
    }

    /// The commit decision for `txn` is durable: tell the client, send the Commits.
    pub fn on_decision_durable(&mut self, txn: &TxnId) -> Vec<Effect> {
        let Some(state) = self.txns.get_mut(txn) else {
            return Vec::new();
        };
        if state.phase != Phase::Deciding {
            return Vec::new();
        }
        state.start_committing()
    }

    /// `from` acked the Commit. Once every participant has, the decision ends.
    pub fn on_commit_ack(&mut self, txn: &TxnId, from: &ParticipantId) -> Vec<Effect> {
        let Some(state) = self.txns.get_mut(txn) else {
            return Vec::new();
        };
        let Some(index) = state.participants.iter().position(|p| p == from) else {
            return Vec::new();
        };
        let Phase::Committing { acked } = &mut state.phase else {
            return Vec::new();
        };
        acked.insert(index);
        if acked.len() < state.participants.len() {
            return Vec::new();
        }
        let ended = self.txns.remove(txn).expect("looked up above");
        vec![Effect::EndDecision {
            key: decision_key(txn),
            participants: ended.participants,
        }]
    }

    /// Answer to a participant's Resolve: COMMIT once a commit decision is durable (held in
    /// memory or only in the log), PENDING while the txn is undecided, its decision not yet
    /// durable, or an operator acts on it; otherwise ABORT (presumed abort). It never answers
    /// ABORT for a txn it might still commit.
    ///
    /// A txn that commits at its votes (`commit_point`, as the asker's prepared record says)
    /// and was begun by an earlier epoch is not presumed aborted: this incarnation has no
    /// record of it either way, so the asker is sent to the participants.
    pub fn resolve(
        &self,
        txn: &TxnId,
        commit_point: CommitPoint,
        store: &dyn Store,
    ) -> Result<Resolution, StoreError> {
        let key = decision_key(txn);
        let logged = match store.get(&key)? {
            Some(bytes) => {
                record::decode::<DecisionRecord>(&key, &bytes)?;
                true
            }
            None => false,
        };
        Ok(self.resolve_with(txn, logged, commit_point))
    }

    /// [`Self::resolve`] with the log already read: whether a commit decision for `txn` is
    /// logged there.
    pub fn resolve_logged(
        &self,
        txn: &TxnId,
        logged: bool,
        commit_point: CommitPoint,
    ) -> Resolution {
        self.resolve_with(txn, logged, commit_point)
    }

    pub(crate) fn resolve_with(
        &self,
        txn: &TxnId,
        logged: bool,
        commit_point: CommitPoint,
    ) -> Resolution {
        if let Some(held) = self.resolve_held(txn) {
            return held;
        }
        let owner = crate::ha::single_liveness(txn, self.epoch);
        match crate::ha::resolve_elsewhere(logged, owner, commit_point) {
            crate::ha::Answer::Give(r) => r,
            // A coordinator with a log of its own knows of no other live instance.
            crate::ha::Answer::AskOwner => Resolution::Pending,
        }
    }

    /// The answer about a txn this instance holds: PENDING while an operator acts on it or
    /// it is undecided (or its decision not yet durable), COMMIT once it is committing. None
    /// when it holds nothing of it: then the log decides ([`crate::ha::resolve_elsewhere`]).
    pub fn resolve_held(&self, txn: &TxnId) -> Option<Resolution> {
        if self.pinned.contains(txn) {
            return Some(Resolution::Pending);
        }
        match self.txns.get(txn).map(|s| &s.phase) {
            Some(Phase::Preparing { .. } | Phase::Fencing { .. } | Phase::Deciding) => {
                Some(Resolution::Pending)
            }
            Some(Phase::Committing { .. }) => Some(Resolution::Decided(Decision::Commit)),
            None => None,
        }
    }

    pub fn view(&self, txn: &TxnId) -> Option<TxnView> {
        let s = self.txns.get(txn)?;
        Some(match &s.phase {
            Phase::Preparing { .. } => TxnView::Preparing,
            Phase::Fencing { .. } => TxnView::Fencing,
            Phase::Deciding => TxnView::Deciding,
            Phase::Committing { acked } => TxnView::Committing {
                unacked: s
                    .participants
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !acked.contains(i))
                    .map(|(_, p)| p.clone())
                    .collect(),
            },
        })
    }

    /// Txns in flight (preparing or deciding).
    pub fn in_flight(&self) -> usize {
        self.txns
            .values()
            .filter(|s| !matches!(s.phase, Phase::Committing { .. }))
            .count()
    }

    /// Commit decisions not yet acked by every participant.
    pub fn committing(&self) -> usize {
        self.txns
            .values()
            .filter(|s| matches!(s.phase, Phase::Committing { .. }))
            .count()
    }

    pub fn decided_at_unix_ms(&self, txn: &TxnId) -> Option<u64> {
        self.txns.get(txn).map(|s| s.decided_at_unix_ms)
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
