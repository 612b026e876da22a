//! Several coordinators over one shared log (etcd): a txn's owner crashes or is paused past
//! its lease, another instance takes its decision over, participants in doubt ask either one.
//! The rules are the real ones: the core's [`ha::write_guards`] on every write of the log,
//! [`ha::adoptions`] for the takeover, [`ha::resolve_elsewhere`] for a Resolve about a txn an
//! instance does not hold, and the real [`CoordinatorCore`] for votes, the decision, acks,
//! and what an instance answers about what it holds.
//!
//! The log is modelled as etcd behaves: member records that exist while a lease lives and are
//! gone for good after, a revision per write, and transactions whose guards are checked
//! atomically with their write. A takeover reads the members and the record first and writes
//! later, so it may act on a stale read (the guards must catch that). The owner (`C1`, of
//! epoch one) may crash, or lose its lease while its process runs on (a pause): then it is a
//! zombie that still tries to write its decision and to end it.
//!
//! Checked: atomic (no participant commits a txn another aborts); the owner is exclusive (no
//! write to the decision record lands from an instance other than the one that owns it at
//! that moment). Each `sometimes` property (a takeover, a commit finished by the adopter, an
//! abort presumed after the owner's lease is gone, a zombie's write refused) must be reached.
//! Planted bugs ([`Bugs`]) are switches of the model, never of a core or a service.

use std::collections::BTreeSet;

use stateright::{Model, Property};
use txn_coordinator_core::core::{CoordinatorCore, Effect, VoteResult, decision_key};
use txn_coordinator_core::ha::{self, Answer, Guard, Liveness, Owned};
use txn_types::types::{CommitPoint, Decision, ParticipantId, Resolution, TxnId};

/// Instances: 0 is C1 (epoch 1, the txn's owner), 1 is C2 (epoch 2).
pub const INSTANCES: usize = 2;
/// Participants of the txn.
pub const PARTICIPANTS: usize = 2;

/// Planted bugs: each breaks one rule, and the checker must find the damage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bugs {
    /// Writes go to the log without the writer's membership guard.
    pub unfenced_writes: bool,
    /// A takeover without the guard that the old owner is gone (and of any record, alive
    /// owner or not).
    pub adopt_without_fence: bool,
    /// Resolve presumes abort for a txn whose owner is alive elsewhere.
    pub presume_abort_for_live_owner: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Idle,
    Prepared,
    Committed,
    Aborted,
}

/// The decision record of the txn in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    pub owner: u64,
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    pub epoch: u64,
    pub core: CoordinatorCore,
    /// The process runs (a zombie runs too, with its lease gone).
    pub running: bool,
    /// A decision record waiting to be written.
    pub pending_decision: bool,
    /// A takeover read: the members it saw and the record with its revision.
    pub adoption_read: Option<(BTreeSet<u64>, Option<Record>)>,
    /// Every participant acked: the record waits to be deleted.
    pub pending_end: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// Epochs whose member record exists.
    pub members: BTreeSet<u64>,
    pub record: Option<Record>,
    pub revision: i64,
    pub instances: Vec<Instance>,
    pub parts: Vec<Part>,
    /// Commit (true) or Abort (false) messages in flight, to each participant, from each
    /// instance.
    pub msgs: BTreeSet<(usize, usize, bool)>,
    /// Ghosts for the properties.
    pub foreign_write_landed: bool,
    pub adopted: bool,
    pub zombie_refused: bool,
    pub presumed_abort: bool,
    pub committed_by_adopter: bool,
    pub crashes: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Participant `p` votes (YES: prepared; NO: aborted) and C1 hears it.
    Vote(usize, bool),
    /// An instance writes the decision it holds.
    WriteDecision(usize),
    /// C1's lease expires (its member record goes); its process may run on.
    LeaseExpires,
    /// C1's process crashes (its lease then expires on its own).
    Crash,
    /// C2 reads the members and the record, to take over what belongs to the gone.
    AdoptRead,
    /// C2 writes the takeover it read.
    AdoptWrite,
    /// A Commit or Abort arrives.
    Deliver(usize, usize, bool),
    /// Participant `p` asks instance `i` (Resolve).
    Resolve(usize, usize),
    /// An instance deletes the record once every participant acked.
    End(usize),
}

pub struct AdoptionModel {
    pub bugs: Bugs,
}

fn txn() -> TxnId {
    TxnId::generated(1, 1)
}

fn participants() -> Vec<ParticipantId> {
    (1..=PARTICIPANTS)
        .map(|i| ParticipantId::parse("p", &format!("p{i}")).expect("valid name"))
        .collect()
}

impl AdoptionModel {
    /// Whether `guards` hold against the log in `s`.
    fn holds(s: &State, guards: &[Guard]) -> bool {
        guards.iter().all(|g| match g {
            Guard::MemberAlive(e) => s.members.contains(e),
            Guard::MemberGone(e) => !s.members.contains(e),
            Guard::Unchanged { revision, .. } => s.record.map_or(0, |r| r.revision) == *revision,
        })
    }

    /// The guards of instance `i`'s own writes (or none, with the bug).
    fn write_guards(&self, s: &State, i: usize) -> Vec<Guard> {
        if self.bugs.unfenced_writes {
            Vec::new()
        } else {
            ha::write_guards(s.instances[i].epoch)
        }
    }

    /// Writes (or deletes) the record under `guards`, as `writer`; false if a guard failed.
    fn write(s: &mut State, guards: &[Guard], writer: u64, value: Option<Record>) -> bool {
        if !Self::holds(s, guards) {
            return false;
        }
        if let Some(r) = s.record
            && r.owner != writer
        {
            s.foreign_write_landed = true;
        }
        s.revision += 1;
        s.record = value.map(|mut r| {
            r.revision = s.revision;
            r
        });
        true
    }

    fn send(s: &mut State, from: usize, effects: Vec<Effect>) {
        let ps = participants();
        for e in effects {
            match e {
                Effect::SendCommit { to } => {
                    if let Some(p) = ps.iter().position(|q| *q == to) {
                        s.msgs.insert((from, p, true));
                    }
                }
                Effect::SendAbort { to } => {
                    if let Some(p) = ps.iter().position(|q| *q == to) {
                        s.msgs.insert((from, p, false));
                    }
                }
                Effect::PersistDecision { .. } => s.instances[from].pending_decision = true,
                Effect::EndDecision { .. } => s.instances[from].pending_end = true,
                _ => {}
            }
        }
    }

    /// Instance `i`'s answer to a Resolve about the txn.
    fn answer(&self, s: &State, i: usize) -> Resolution {
        let inst = &s.instances[i];
        if let Some(held) = inst.core.resolve_held(&txn()) {
            return held;
        }
        let logged = s.record.is_some();
        let owner = if inst.epoch == 1 {
            Liveness::Mine
        } else if s.members.contains(&1) {
            Liveness::Live
        } else {
            Liveness::Gone
        };
        let owner = match owner {
            Liveness::Live if self.bugs.presume_abort_for_live_owner => Liveness::Gone,
            o => o,
        };
        match ha::resolve_elsewhere(logged, owner, CommitPoint::Decision) {
            Answer::Give(r) => r,
            // Forwarded to the owner, which answers from what it holds (once; PENDING if it
            // does not run).
            Answer::AskOwner if s.instances[0].running => {
                s.instances[0]
                    .core
                    .resolve_logged(&txn(), logged, CommitPoint::Decision)
            }
            Answer::AskOwner => Resolution::Pending,
        }
    }
}

impl Model for AdoptionModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let mut c1 = CoordinatorCore::new(1);
        let t = c1.begin(participants(), u64::MAX);
        debug_assert_eq!(t, txn());
        let instance = |epoch, core| Instance {
            epoch,
            core,
            running: true,
            pending_decision: false,
            adoption_read: None,
            pending_end: false,
        };
        vec![State {
            members: [1, 2].into(),
            record: None,
            revision: 0,
            instances: vec![instance(1, c1), instance(2, CoordinatorCore::new(2))],
            parts: vec![Part::Idle; PARTICIPANTS],
            msgs: BTreeSet::new(),
            foreign_write_landed: false,
            adopted: false,
            zombie_refused: false,
            presumed_abort: false,
            committed_by_adopter: false,
            crashes: 0,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for p in 0..PARTICIPANTS {
            if s.parts[p] == Part::Idle && s.instances[0].running {
                actions.push(Action::Vote(p, true));
                actions.push(Action::Vote(p, false));
            }
            if s.parts[p] == Part::Prepared {
                for i in 0..INSTANCES {
                    if s.instances[i].running {
                        actions.push(Action::Resolve(p, i));
                    }
                }
            }
        }
        for i in 0..INSTANCES {
            let inst = &s.instances[i];
            if inst.running && inst.pending_decision {
                actions.push(Action::WriteDecision(i));
            }
            if inst.running && inst.pending_end {
                actions.push(Action::End(i));
            }
        }
        if s.members.contains(&1) {
            actions.push(Action::LeaseExpires);
        }
        if s.instances[0].running && s.crashes == 0 {
            actions.push(Action::Crash);
        }
        if s.instances[1].running && !s.adopted {
            match s.instances[1].adoption_read {
                None => actions.push(Action::AdoptRead),
                Some(_) => actions.push(Action::AdoptWrite),
            }
        }
        for &(i, p, commit) in &s.msgs {
            actions.push(Action::Deliver(i, p, commit));
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let t = txn();
        match action {
            Action::Vote(p, yes) => {
                s.parts[p] = if yes { Part::Prepared } else { Part::Aborted };
                let vote = if yes {
                    VoteResult::Yes
                } else {
                    VoteResult::No {
                        reason: "no".into(),
                    }
                };
                let effects = s.instances[0].core.on_vote(&t, p, vote, 0, 0);
                Self::send(&mut s, 0, effects);
            }
            Action::WriteDecision(i) => {
                s.instances[i].pending_decision = false;
                let guards = self.write_guards(&s, i);
                let epoch = s.instances[i].epoch;
                let record = Record {
                    owner: epoch,
                    revision: 0,
                };
                if Self::write(&mut s, &guards, epoch, Some(record)) {
                    let effects = s.instances[i].core.on_decision_durable(&t);
                    Self::send(&mut s, i, effects);
                } else {
                    // Fenced: its lease is gone, and it stops.
                    s.zombie_refused = true;
                    s.instances[i].running = false;
                }
            }
            Action::LeaseExpires => {
                s.members.remove(&1);
            }
            Action::Crash => {
                s.crashes += 1;
                s.instances[0].running = false;
            }
            Action::AdoptRead => {
                s.instances[1].adoption_read = Some((s.members.clone(), s.record));
            }
            Action::AdoptWrite => {
                let (live, record) = s.instances[1].adoption_read.take()?;
                let owned: Vec<Owned> = record
                    .iter()
                    .map(|r| Owned {
                        key: decision_key(&t),
                        owner: Some(r.owner),
                        revision: r.revision,
                    })
                    .collect();
                let adoptions = if self.bugs.adopt_without_fence {
                    owned
                        .iter()
                        .filter(|o| o.owner != Some(2))
                        .map(|o| ha::Adoption {
                            key: o.key.clone(),
                            from: o.owner,
                            guards: ha::write_guards(2),
                        })
                        .collect()
                } else {
                    ha::adoptions(2, &live, &owned)
                };
                for a in adoptions {
                    let adopted = Record {
                        owner: 2,
                        revision: 0,
                    };
                    // The takeover rewrites the record's owner (not a foreign write: the owner
                    // changes with it).
                    if Self::holds(&s, &a.guards) {
                        s.revision += 1;
                        s.record = Some(Record {
                            revision: s.revision,
                            ..adopted
                        });
                        s.adopted = true;
                        let effects = s.instances[1].core.adopt_commit(&t, participants(), 0);
                        Self::send(&mut s, 1, effects);
                    }
                }
            }
            Action::Deliver(i, p, commit) => {
                s.msgs.remove(&(i, p, commit));
                match (s.parts[p], commit) {
                    (Part::Prepared, true) | (Part::Committed, true) => {
                        s.parts[p] = Part::Committed;
                        if i == 1 {
                            s.committed_by_adopter = true;
                        }
                        if s.instances[i].running {
                            let effects = s.instances[i].core.on_commit_ack(&t, &participants()[p]);
                            Self::send(&mut s, i, effects);
                        }
                    }
                    (Part::Prepared, false) => s.parts[p] = Part::Aborted,
                    (Part::Idle, false) => s.parts[p] = Part::Aborted,
                    _ => {}
                }
            }
            Action::Resolve(p, i) => match self.answer(&s, i) {
                Resolution::Decided(Decision::Commit) => s.parts[p] = Part::Committed,
                Resolution::Decided(Decision::Abort) => {
                    s.parts[p] = Part::Aborted;
                    if !s.members.contains(&1) {
                        s.presumed_abort = true;
                    }
                }
                Resolution::Pending | Resolution::AskParticipants => return None,
            },
            Action::End(i) => {
                s.instances[i].pending_end = false;
                let guards = self.write_guards(&s, i);
                let epoch = s.instances[i].epoch;
                if !Self::write(&mut s, &guards, epoch, None) {
                    s.zombie_refused = true;
                    s.instances[i].running = false;
                }
            }
        }
        (s != *last).then_some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("atomic", |_, s: &State| {
                !(s.parts.contains(&Part::Committed) && s.parts.contains(&Part::Aborted))
            }),
            Property::always("the owner is exclusive", |_, s: &State| {
                !s.foreign_write_landed
            }),
            Property::sometimes(
                "another instance takes the decision over",
                |_, s: &State| s.adopted,
            ),
            Property::sometimes("the adopter finishes the commit", |_, s: &State| {
                s.committed_by_adopter
            }),
            Property::sometimes("abort presumed once the owner is gone", |_, s: &State| {
                s.presumed_abort
            }),
            Property::sometimes("a zombie's write is refused", |_, s: &State| {
                s.zombie_refused
            }),
        ]
    }
}

/// The model with the rules as they are.
pub fn model() -> AdoptionModel {
    AdoptionModel {
        bugs: Bugs::default(),
    }
}
