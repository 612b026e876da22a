//! The bank workload: accounts spread over the participants, transfers between accounts on
//! two different participants (some overdrawing, so they must abort), and the checks that
//! prove atomicity from what the participants durably recorded.
//!
//! Layout: this file runs the workload (seeding, transfers, closed-loop clients, the tally of
//! what clients were told). `observe` reads what the participants hold once the system is
//! quiet, `check` judges a history against it, and `violation` names each kind of finding
//! the checks report.

mod check;
mod feeds;
mod observe;
mod timing;
mod violation;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use txn_proto::pb::v1 as pb;
use txn_types::types::encode_counter;

pub use crate::coordinators::Transactor;

pub use check::{
    UnknownResolved, check, check_outcomes, check_sagas, lost_updates, resolve_unknown,
    txns_checked,
};
pub use feeds::{FeedsSeen, check_events, check_readmodel, check_transfers, sides};
pub use observe::{Observed, Recorded, observe, wait_quiet};
pub use timing::{
    TransferSpan, longest_in_doubt_ms, longest_in_flight_ms, money_in_flight, settled_after_ms,
    transfer_spans,
};
pub use violation::{Violation, to_strings};

/// Most accounts a bank may have: the seeding txn puts every account of a participant in one
/// branch, and a branch holds at most this many operations.
pub const MAX_ACCOUNTS_PER_PARTICIPANT: usize = txn_types::types::MAX_OPS_PER_BRANCH;

/// Pause of a client after a call that failed without an outcome.
pub const UNKNOWN_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    pub participant: String,
    pub key: String,
}

/// `n` accounts, dealt round-robin over participants p1..p`participants`.
pub fn accounts(participants: usize, n: usize) -> Vec<Account> {
    (0..n)
        .map(|i| Account {
            participant: format!("p{}", i % participants + 1),
            key: format!("acct-{i:04}"),
        })
        .collect()
}

fn add(key: &str, delta: i64, min: Option<i64>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min,
            max: None,
        })),
    }
}

fn by_participant(accounts: &[Account], op: impl Fn(&Account) -> pb::Op) -> Vec<pb::Branch> {
    let mut branches: Vec<pb::Branch> = Vec::new();
    for a in accounts {
        match branches.iter_mut().find(|b| b.participant == a.participant) {
            Some(b) => b.ops.push(op(a)),
            None => branches.push(pb::Branch {
                participant: a.participant.clone(),
                ops: vec![op(a)],
            }),
        }
    }
    branches
}

/// Gives every account `balance`: in one txn per [`MAX_ACCOUNTS_PER_PARTICIPANT`] accounts
/// (accounts are dealt round-robin, so no branch gets more ops than a branch may hold).
/// Returns the seeding txns' ids: they are in no client's history.
pub async fn seed<C: Transactor>(
    client: &mut C,
    accounts: &[Account],
    balance: i64,
) -> anyhow::Result<Vec<String>> {
    let mut txns = Vec::new();
    for chunk in accounts.chunks(MAX_ACCOUNTS_PER_PARTICIPANT) {
        txns.push(seed_chunk(client, chunk, balance).await?);
    }
    Ok(txns)
}

async fn seed_chunk<C: Transactor>(
    client: &mut C,
    accounts: &[Account],
    balance: i64,
) -> anyhow::Result<String> {
    let branches = by_participant(accounts, |a| pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: a.key.as_bytes().to_vec(),
            value: encode_counter(balance),
        })),
    });
    let resp = client
        .transact_for(
            0,
            pb::TransactRequest {
                protocol: pb::Protocol::TwoPhase as i32,
                branches,
                prepare_timeout_ms: 10_000,
                client_txn_id: String::new(),
                commit_point: 0,
            },
        )
        .await
        .context("seeding the bank")?;
    if resp.outcome != pb::Outcome::Committed as i32 {
        bail!("seeding the bank aborted: {}", resp.reason);
    }
    Ok(resp.txn_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub from: usize,
    pub to: usize,
    pub amount: i64,
    /// The destination refuses the credit (its account is closed): 2PC votes NO, a saga
    /// compensates the debit, the events protocol refunds it.
    pub refused_credit: bool,
}

/// The bound a closed account's credit is checked against: no balance is negative, so no
/// credit fits under it.
pub const CLOSED_ACCOUNT_MAX: i64 = -1;

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        txn: String,
    },
    Aborted {
        txn: String,
        reason: String,
    },
    /// The call failed after it may have reached a live coordinator: the txn may or may not
    /// have committed.
    Unknown {
        error: String,
    },
    /// The call was refused before any coordinator ran it (no connection, or refused at
    /// admission): it certainly did not run.
    NotStarted {
        error: String,
    },
}

/// Whether a failed call certainly never ran: the connection was refused (the coordinator
/// was down), or the coordinator refused it at admission (overloaded, or its log unreachable:
/// "not started"). Anything else may have run.
pub fn never_started(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::ResourceExhausted => true,
        tonic::Code::Unavailable => {
            let text = format!("{} {:?}", s.message(), std::error::Error::source(s));
            s.message().starts_with("not started")
                || text.contains("tcp connect error")
                || text.contains("Connection refused")
        }
        _ => false,
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub transfer: Transfer,
    pub outcome: Outcome,
    pub latency: Duration,
    /// When the answer came, from the start of the run.
    pub at: Duration,
}

/// Which protocol a workload runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    TwoPhase,
    Saga,
    /// Choreography: the debit commits at the source and is answered "accepted"; the credit
    /// follows from the source's feed. A client's "committed" means accepted.
    Events,
}

impl Protocol {
    pub fn to_pb(self) -> pb::Protocol {
        match self {
            Protocol::TwoPhase => pb::Protocol::TwoPhase,
            Protocol::Saga => pb::Protocol::Saga,
            Protocol::Events => pb::Protocol::Events,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::TwoPhase => "2pc",
            Protocol::Saga => "saga",
            Protocol::Events => "events",
        }
    }

    /// Parses a name as `name` prints it.
    pub fn parse(name: &str) -> Option<Self> {
        [Protocol::TwoPhase, Protocol::Saga, Protocol::Events]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// Moves `amount` from one account to another; the source may not go below zero. As a saga,
/// the debit runs first, so an overdraft fails at step 0 and nothing needs undoing; a failure
/// of the credit would undo the debit.
pub async fn transfer<C: Transactor>(
    client: &mut C,
    id: usize,
    accounts: &[Account],
    t: Transfer,
    protocol: Protocol,
    commit_point: pb::CommitPoint,
) -> Outcome {
    let (from, to) = (&accounts[t.from], &accounts[t.to]);
    let mut credit = add(&to.key, t.amount, None);
    if t.refused_credit
        && let Some(pb::op::Kind::Add(a)) = &mut credit.kind
    {
        a.max = Some(CLOSED_ACCOUNT_MAX);
    }
    let branches = if from.participant == to.participant {
        vec![pb::Branch {
            participant: from.participant.clone(),
            ops: vec![add(&from.key, -t.amount, Some(0)), credit],
        }]
    } else {
        vec![
            pb::Branch {
                participant: from.participant.clone(),
                ops: vec![add(&from.key, -t.amount, Some(0))],
            },
            pb::Branch {
                participant: to.participant.clone(),
                ops: vec![credit],
            },
        ]
    };
    let req = pb::TransactRequest {
        protocol: protocol.to_pb() as i32,
        branches,
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: commit_point as i32,
    };
    match client.transact_for(id, req).await {
        Ok(r) => {
            if r.outcome == pb::Outcome::Committed as i32
                || r.outcome == pb::Outcome::Accepted as i32
            {
                Outcome::Committed { txn: r.txn_id }
            } else {
                if std::env::var_os("HARNESS_DEBUG").is_some() {
                    eprintln!("transfer aborted: {}", r.reason);
                }
                Outcome::Aborted {
                    txn: r.txn_id,
                    reason: r.reason,
                }
            }
        }
        Err(s) if never_started(&s) => Outcome::NotStarted {
            error: format!("{:?}: {}", s.code(), s.message()),
        },
        Err(s) => Outcome::Unknown {
            error: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}

/// Workload shape for [`run`].
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Stop after this many transfers in all, or after `duration`, whichever comes first.
    pub transfers: usize,
    pub duration: Duration,
    /// Share of transfers (0..=1) that ask for more than any account can hold, so they abort.
    pub overdraft_share: f64,
    /// Share of transfers (0..=1) whose destination refuses the credit (see
    /// [`Transfer::refused_credit`]).
    pub refusal_share: f64,
    pub seed: u64,
    pub protocol: Protocol,
    /// Transfers between two accounts of the same participant (one branch): the local
    /// baseline.
    pub local: bool,
    /// Where 2PC transfers commit; UNSPECIFIED leaves it to the coordinator's --commit-point.
    pub commit_point: pb::CommitPoint,
}

/// Runs closed-loop transfer clients; each picks two accounts on different participants.
pub async fn run<C: Transactor>(
    client: &C,
    accounts: &[Account],
    balance: i64,
    w: &Workload,
) -> Vec<Record> {
    let started = Instant::now();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..w.clients {
        let mut client = client.clone();
        let accounts = accounts.to_vec();
        let issued = issued.clone();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w.seed.wrapping_add(c as u64));
            let mut out = Vec::new();
            while started.elapsed() < w.duration
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < w.transfers
            {
                let mut t = pick(&mut rng, &accounts, balance, w.overdraft_share, w.local);
                // Drawn only when asked for, so that a seed gives the same transfers as before.
                if w.refusal_share > 0.0 {
                    t.refused_credit = rng.random_bool(w.refusal_share.clamp(0.0, 1.0));
                }
                let t0 = Instant::now();
                let outcome =
                    transfer(&mut client, c, &accounts, t, w.protocol, w.commit_point).await;
                if matches!(
                    outcome,
                    Outcome::Unknown { .. } | Outcome::NotStarted { .. }
                ) {
                    // Like a real client: do not hammer a coordinator that is not answering.
                    tokio::time::sleep(UNKNOWN_BACKOFF).await;
                }
                out.push(Record {
                    transfer: t,
                    outcome,
                    latency: t0.elapsed(),
                    at: started.elapsed(),
                });
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task panicked"));
    }
    all
}

fn pick(
    rng: &mut StdRng,
    accounts: &[Account],
    balance: i64,
    overdraft_share: f64,
    local: bool,
) -> Transfer {
    loop {
        let from = rng.random_range(0..accounts.len());
        let to = rng.random_range(0..accounts.len());
        if from == to || (accounts[from].participant == accounts[to].participant) != local {
            continue;
        }
        let amount = if rng.random_bool(overdraft_share.clamp(0.0, 1.0)) {
            // More than the whole bank holds: must abort.
            balance * accounts.len() as i64 + 1
        } else {
            rng.random_range(1..=balance / 10 + 1)
        };
        return Transfer {
            from,
            to,
            amount,
            refused_credit: false,
        };
    }
}

/// Counts of what clients were told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub not_started: usize,
}

pub fn tally(history: &[Record]) -> Tally {
    let mut t = Tally::default();
    for r in history {
        match r.outcome {
            Outcome::Committed { .. } => t.committed += 1,
            Outcome::Aborted { .. } => t.aborted += 1,
            Outcome::Unknown { .. } => t.unknown += 1,
            Outcome::NotStarted { .. } => t.not_started += 1,
        }
    }
    t
}
