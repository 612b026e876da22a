//! The participant's lock queue, checked exhaustively: the real [`LockTable`] driven the way
//! the participant's driver drives it (ask; on a release, ask again; when the wait is over,
//! leave the queue; commit or abort and release), by one whole-bank reader and writers of
//! single keys and of two keys, in every interleaving.
//!
//! Checked:
//! - no two holders conflict (a writer holds its keys alone);
//! - no writer overtakes an earlier waiter it conflicts with, and so none overtakes a queued
//!   whole-bank read (what lets it finish at all); a reader waits for holders only;
//! - a request is told to wait only while something it conflicts with holds or is queued
//!   ahead: one that gave up holds up no one;
//! - a writer is told it waits behind a reader ([`LockWait::BehindReader`], the short wait
//!   that breaks reader-writer deadlocks across participants) exactly when a reader holds,
//!   or is queued ahead for, a key it writes; a reader is told it waits as a reader.
//!
//! The drivers' duties can be planted as bugs ([`QueueBugs`]); the tests show the checker
//! finds each one.

use stateright::{Model, Property};
use txn_participant_core::locks::{LockTable, LockWait};
use txn_types::types::TxnId;

/// What one txn asks for at this participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub name: &'static str,
    pub exclusive: Vec<Vec<u8>>,
    pub shared: Vec<Vec<u8>>,
}

impl Request {
    fn writes(name: &'static str, keys: &[&str]) -> Self {
        Request {
            name,
            exclusive: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            shared: Vec::new(),
        }
    }

    fn reads(name: &'static str, keys: &[&str]) -> Self {
        Request {
            name,
            exclusive: Vec::new(),
            shared: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }

    fn txn(&self) -> TxnId {
        TxnId::parse("model txn", self.name).expect("model txn names are valid")
    }

    fn conflicts(&self, other: &Request) -> bool {
        let hits = |a: &[Vec<u8>], b: &[Vec<u8>]| a.iter().any(|k| b.contains(k));
        hits(&self.exclusive, &other.exclusive)
            || hits(&self.exclusive, &other.shared)
            || hits(&self.shared, &other.exclusive)
    }

    /// Whether `other` is a reader of a key this request writes.
    fn writes_past_reader(&self, other: &Request) -> bool {
        self.exclusive.iter().any(|k| other.shared.contains(k))
    }
}

/// Where one request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Idle,
    /// Queued; the number orders arrivals.
    Waiting(u8),
    Holding,
    Done,
}

/// Driver duties the model can be told to skip, to show the checker notices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueBugs {
    /// Leaves the queue before each new try, as a driver that re-submits would: the request
    /// loses its place, and a request that came first ends up waiting for a later one.
    pub requeue_on_retry: bool,
    /// Forgets to leave the queue when its wait is over (or its caller went away): the
    /// stale place holds up everyone behind it.
    pub keep_place_after_giving_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    pub table: LockTable,
    pub phases: Vec<Phase>,
    next_arrival: u8,
    /// Set by a grant that overtook an earlier conflicting waiter.
    overtook: bool,
    /// Set by a wait class that did not match who the request waits behind.
    wrong_wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A request asks for its locks (first time, or again after a release).
    Ask(usize),
    /// A waiting request's wait is over: it gives up.
    GiveUp(usize),
    /// A holder's decision arrived: it releases everything.
    Release(usize),
}

pub struct LockQueueModel {
    pub requests: Vec<Request>,
    pub bugs: QueueBugs,
}

/// A whole-bank reader of `a` and `b`, writers of `a` and of `b`, a second writer of `a`, and
/// a transfer writing both.
pub fn model(bugs: QueueBugs) -> LockQueueModel {
    LockQueueModel {
        requests: vec![
            Request::reads("r", &["a", "b"]),
            Request::writes("wa", &["a"]),
            Request::writes("wb", &["b"]),
            Request::writes("wa2", &["a"]),
            Request::writes("wab", &["a", "b"]),
        ],
        bugs,
    }
}

impl LockQueueModel {
    /// What the request at `i` is allowed to wait for, from the model's own view: holders it
    /// conflicts with and, for a writer, waiters that arrived before it (a reader goes ahead
    /// of queued writers: it would otherwise wait for whatever they wait for).
    fn blockers(&self, s: &State, i: usize) -> Vec<usize> {
        let mine = match s.phases[i] {
            Phase::Waiting(_) if self.requests[i].exclusive.is_empty() => 0,
            Phase::Waiting(n) => n,
            _ if self.requests[i].exclusive.is_empty() => 0,
            _ => u8::MAX,
        };
        (0..self.requests.len())
            .filter(|&j| j != i && self.requests[i].conflicts(&self.requests[j]))
            .filter(|&j| match s.phases[j] {
                Phase::Holding => true,
                Phase::Waiting(n) => n < mine,
                _ => false,
            })
            .collect()
    }

    fn ask(&self, s: &mut State, i: usize) {
        let req = &self.requests[i];
        let txn = req.txn();
        if self.bugs.requeue_on_retry && matches!(s.phases[i], Phase::Waiting(_)) {
            s.table.abandon(&txn);
        }
        let blockers = self.blockers(s, i);
        match s
            .table
            .try_lock_all(&txn, &req.exclusive, &req.shared, req.exclusive.is_empty())
        {
            Ok(()) => {
                if !blockers.is_empty() {
                    s.overtook = true;
                }
                s.phases[i] = Phase::Holding;
            }
            Err(blocked) => {
                let behind_reader = blockers
                    .iter()
                    .any(|&j| req.writes_past_reader(&self.requests[j]));
                let expected = if behind_reader {
                    LockWait::BehindReader
                } else if req.exclusive.is_empty() {
                    LockWait::Reader
                } else {
                    LockWait::Full
                };
                if blocked.wait != expected && !blockers.is_empty() {
                    s.wrong_wait = true;
                }
                if let Phase::Idle = s.phases[i] {
                    s.phases[i] = Phase::Waiting(s.next_arrival);
                    s.next_arrival += 1;
                }
            }
        }
    }
}

impl Model for LockQueueModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            table: LockTable::default(),
            phases: vec![Phase::Idle; self.requests.len()],
            next_arrival: 0,
            overtook: false,
            wrong_wait: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (i, phase) in s.phases.iter().enumerate() {
            match phase {
                Phase::Idle => actions.push(Action::Ask(i)),
                Phase::Waiting(_) => {
                    actions.push(Action::Ask(i));
                    actions.push(Action::GiveUp(i));
                }
                Phase::Holding => actions.push(Action::Release(i)),
                Phase::Done => {}
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Ask(i) => self.ask(&mut s, i),
            Action::GiveUp(i) => {
                if !self.bugs.keep_place_after_giving_up {
                    s.table.abandon(&self.requests[i].txn());
                }
                s.phases[i] = Phase::Done;
            }
            Action::Release(i) => {
                let r = &self.requests[i];
                s.table.release_all(&r.txn(), &r.exclusive, &r.shared);
                s.phases[i] = Phase::Done;
            }
        }
        // A retry that changes nothing is no step (so "quiet" can be judged).
        (s != *last).then_some(s)
    }

    fn format_action(&self, action: &Action) -> String {
        let name = |i: usize| self.requests[i].name;
        match *action {
            Action::Ask(i) => format!("{} asks for its locks", name(i)),
            Action::GiveUp(i) => format!("{}'s wait is over", name(i)),
            Action::Release(i) => format!("{} is decided and releases", name(i)),
        }
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no two holders conflict", |m: &Self, s: &State| {
                let holding: Vec<usize> = (0..m.requests.len())
                    .filter(|&i| s.phases[i] == Phase::Holding)
                    .collect();
                holding.iter().all(|&i| {
                    holding
                        .iter()
                        .all(|&j| i == j || !m.requests[i].conflicts(&m.requests[j]))
                })
            }),
            Property::always("no writer overtakes an earlier waiter", |_, s: &State| {
                !s.overtook
            }),
            Property::always(
                "a request waits only for what it conflicts with",
                |m: &Self, s: &State| {
                    (0..m.requests.len()).all(|i| {
                        if !matches!(s.phases[i], Phase::Waiting(_)) || !m.blockers(s, i).is_empty()
                        {
                            return true;
                        }
                        let r = &m.requests[i];
                        s.table
                            .clone()
                            .try_lock_all(&r.txn(), &r.exclusive, &r.shared, r.exclusive.is_empty())
                            .is_ok()
                    })
                },
            ),
            Property::always("a writer behind a reader is told so", |_, s: &State| {
                !s.wrong_wait
            }),
            Property::sometimes(
                "the reader is granted after writers queued behind it",
                |m: &Self, s: &State| {
                    let reader = 0;
                    s.phases[reader] == Phase::Holding
                        && (1..m.requests.len()).any(|j| matches!(s.phases[j], Phase::Waiting(_)))
                },
            ),
            Property::sometimes(
                "a writer waits behind a queued reader",
                |m: &Self, s: &State| {
                    let Phase::Waiting(r) = s.phases[0] else {
                        return false;
                    };
                    (1..m.requests.len()).any(|j| {
                        matches!(s.phases[j], Phase::Waiting(n) if n > r)
                            && m.requests[j].writes_past_reader(&m.requests[0])
                    })
                },
            ),
        ]
    }
}
