//! The bank workload: accounts spread over the participants, transfers between accounts on
//! two different participants (some overdrawing, so they must abort), and the checks that
//! prove atomicity from what the participants durably recorded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::coordinator_client::CoordinatorClient;
use txn_types::types::{decode_counter, encode_counter};

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
pub async fn seed(
    client: &mut CoordinatorClient<Channel>,
    accounts: &[Account],
    balance: i64,
) -> anyhow::Result<()> {
    for chunk in accounts.chunks(MAX_ACCOUNTS_PER_PARTICIPANT) {
        seed_chunk(client, chunk, balance).await?;
    }
    Ok(())
}

async fn seed_chunk(
    client: &mut CoordinatorClient<Channel>,
    accounts: &[Account],
    balance: i64,
) -> anyhow::Result<()> {
    let branches = by_participant(accounts, |a| pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: a.key.as_bytes().to_vec(),
            value: encode_counter(balance),
        })),
    });
    let resp = client
        .transact(pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches,
            prepare_timeout_ms: 10_000,
            client_txn_id: String::new(),
        })
        .await
        .context("seeding the bank")?
        .into_inner();
    if resp.outcome != pb::Outcome::Committed as i32 {
        bail!("seeding the bank aborted: {}", resp.reason);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub from: usize,
    pub to: usize,
    pub amount: i64,
}

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
    /// The call failed: the txn may or may not have committed.
    Unknown {
        error: String,
    },
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
}

impl Protocol {
    pub fn to_pb(self) -> pb::Protocol {
        match self {
            Protocol::TwoPhase => pb::Protocol::TwoPhase,
            Protocol::Saga => pb::Protocol::Saga,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::TwoPhase => "2pc",
            Protocol::Saga => "saga",
        }
    }
}

/// Moves `amount` from one account to another; the source may not go below zero. As a saga,
/// the debit runs first, so an overdraft fails at step 0 and nothing needs undoing; a failure
/// of the credit would undo the debit.
pub async fn transfer(
    client: &mut CoordinatorClient<Channel>,
    accounts: &[Account],
    t: Transfer,
    protocol: Protocol,
) -> Outcome {
    let (from, to) = (&accounts[t.from], &accounts[t.to]);
    let branches = if from.participant == to.participant {
        vec![pb::Branch {
            participant: from.participant.clone(),
            ops: vec![
                add(&from.key, -t.amount, Some(0)),
                add(&to.key, t.amount, None),
            ],
        }]
    } else {
        vec![
            pb::Branch {
                participant: from.participant.clone(),
                ops: vec![add(&from.key, -t.amount, Some(0))],
            },
            pb::Branch {
                participant: to.participant.clone(),
                ops: vec![add(&to.key, t.amount, None)],
            },
        ]
    };
    let req = pb::TransactRequest {
        protocol: protocol.to_pb() as i32,
        branches,
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
    };
    match client.transact(req).await {
        Ok(r) => {
            let r = r.into_inner();
            if r.outcome == pb::Outcome::Committed as i32 {
                Outcome::Committed { txn: r.txn_id }
            } else {
                Outcome::Aborted {
                    txn: r.txn_id,
                    reason: r.reason,
                }
            }
        }
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
    pub seed: u64,
    pub protocol: Protocol,
    /// Transfers between two accounts of the same participant (one branch): the local
    /// baseline.
    pub local: bool,
}

/// Runs closed-loop transfer clients; each picks two accounts on different participants.
pub async fn run(
    client: &CoordinatorClient<Channel>,
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
                let t = pick(&mut rng, &accounts, balance, w.overdraft_share, w.local);
                let t0 = Instant::now();
                let outcome = transfer(&mut client, &accounts, t, w.protocol).await;
                if matches!(outcome, Outcome::Unknown { .. }) {
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
        return Transfer { from, to, amount };
    }
}

/// What the participants hold once the system is quiet.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Committed balance of each account, by index.
    pub balances: Vec<i64>,
    /// Each txn's state at each of its two participants (from, to).
    pub states: HashMap<String, (pb::TxnState, pb::TxnState)>,
    /// Prepared txns still held by any participant.
    pub in_doubt: u64,
    /// Every outcome each participant durably recorded: txn -> [(participant, state, the
    /// txn's participants as recorded with a commit)].
    pub outcomes: HashMap<String, Vec<(String, pb::TxnState, Vec<String>)>>,
    /// Saga barrier records: saga -> [(participant, barrier)].
    pub barriers: HashMap<String, Vec<(String, pb::Barrier)>>,
    /// The protocol the history ran under (None: checks that need it are skipped).
    pub protocol: Option<Protocol>,
}

/// Reads balances, txn states and in-doubt counts directly from the participants.
pub async fn observe(
    cluster: &crate::cluster::Cluster,
    accounts: &[Account],
    history: &[Record],
    protocol: Protocol,
) -> anyhow::Result<Observed> {
    let mut clients = HashMap::new();
    let mut in_doubt = 0;
    for p in &cluster.participants {
        clients.insert(p.name.clone(), cluster.participant_client(&p.name).await?);
        let s = cluster
            .stats_client(&p.name)
            .await?
            .get_stats(pb::StatsRequest {})
            .await?;
        in_doubt += s.into_inner().in_doubt;
    }
    let mut balances = Vec::with_capacity(accounts.len());
    for a in accounts {
        let c = clients
            .get_mut(&a.participant)
            .context("unknown participant")?;
        let r = c
            .read(pb::ReadRequest {
                keys: vec![a.key.as_bytes().to_vec()],
            })
            .await
            .with_context(|| format!("reading {}/{}", a.participant, a.key))?
            .into_inner();
        let v = r.values.first().and_then(|kv| kv.value.clone());
        balances.push(decode_counter(v.as_deref()).map_err(anyhow::Error::msg)?);
    }
    let mut states = HashMap::new();
    for r in history.iter().filter(|_| protocol == Protocol::TwoPhase) {
        let txn = match &r.outcome {
            Outcome::Committed { txn } | Outcome::Aborted { txn, .. } => txn.clone(),
            Outcome::Unknown { .. } => continue,
        };
        let mut state_at = |idx: usize| {
            let p = accounts[idx].participant.clone();
            let txn = txn.clone();
            let c = clients.get_mut(&p).cloned();
            async move {
                let mut c = c.context("unknown participant")?;
                let s = c
                    .get_txn_state(pb::TxnStateRequest { txn_id: txn })
                    .await?
                    .into_inner()
                    .state;
                anyhow::Ok(pb::TxnState::try_from(s).unwrap_or(pb::TxnState::Unspecified))
            }
        };
        let a = state_at(r.transfer.from).await?;
        let b = state_at(r.transfer.to).await?;
        states.insert(txn, (a, b));
    }
    let mut outcomes: HashMap<String, Vec<(String, pb::TxnState, Vec<String>)>> = HashMap::new();
    for (name, c) in clients.iter_mut() {
        let mut start_after = String::new();
        loop {
            let page = c
                .list_outcomes(pb::ListOutcomesRequest {
                    start_after: start_after.clone(),
                    limit: 0,
                })
                .await
                .with_context(|| format!("listing outcomes at {name}"))?
                .into_inner();
            for o in page.outcomes {
                let state = pb::TxnState::try_from(o.state).unwrap_or(pb::TxnState::Unspecified);
                outcomes
                    .entry(o.txn_id)
                    .or_default()
                    .push((name.clone(), state, o.participants));
            }
            if page.next.is_empty() {
                break;
            }
            start_after = page.next;
        }
    }
    let mut barriers: HashMap<String, Vec<(String, pb::Barrier)>> = HashMap::new();
    for (name, c) in clients.iter_mut() {
        let mut start_after = Vec::new();
        loop {
            let page = c
                .list_barriers(pb::ListBarriersRequest {
                    start_after: start_after.clone(),
                    limit: 0,
                })
                .await
                .with_context(|| format!("listing saga barriers at {name}"))?
                .into_inner();
            for b in page.barriers {
                barriers
                    .entry(b.saga_id.clone())
                    .or_default()
                    .push((name.clone(), b));
            }
            if page.next.is_empty() {
                break;
            }
            start_after = page.next;
        }
    }
    Ok(Observed {
        balances,
        states,
        in_doubt,
        outcomes,
        barriers,
        protocol: Some(protocol),
    })
}

/// Saga checks from the participants' barrier records: every saga ended completed (each of its
/// `steps` executed, nothing compensated) or compensated (every executed step undone), with at
/// most one record per (saga, step, action).
pub fn check_sagas(observed: &Observed, steps: u32) -> Vec<String> {
    use pb::{BarrierAction as A, BarrierOutcome as O};
    let mut problems = Vec::new();
    let mut sagas: Vec<_> = observed.barriers.iter().collect();
    sagas.sort_by(|a, b| a.0.cmp(b.0));
    for (saga, records) in sagas {
        let find = |step: u32, action: A| -> Vec<O> {
            records
                .iter()
                .filter(|(_, b)| b.step == step && b.action == action as i32)
                .map(|(_, b)| O::try_from(b.outcome).unwrap_or(O::Unspecified))
                .collect()
        };
        let compensating = records
            .iter()
            .any(|(_, b)| b.action == A::Compensate as i32);
        for step in 0..steps {
            let x = find(step, A::Execute);
            let c = find(step, A::Compensate);
            if x.len() > 1 || c.len() > 1 {
                problems.push(format!(
                    "saga {saga} step {step}: more than one effect recorded"
                ));
            }
            let executed = x.first() == Some(&O::Executed);
            if compensating {
                if executed && c.first() != Some(&O::Compensated) {
                    problems.push(format!(
                        "saga {saga} step {step}: executed but not compensated ({c:?})"
                    ));
                }
            } else if !executed && !x.contains(&O::ExecuteFailed) {
                // No compensation anywhere: either every step ran, or the first failed one
                // ended it (a failure at step 0 needs no compensation).
                let failed_before =
                    (0..step).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed));
                if !failed_before {
                    problems.push(format!(
                        "saga {saga} step {step}: never executed, yet nothing was compensated"
                    ));
                }
            } else if executed && (0..step).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed))
            {
                problems.push(format!(
                    "saga {saga} step {step}: executed after an earlier step failed"
                ));
            }
        }
        if !compensating
            && (0..steps).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed))
            && (0..steps).any(|s| find(s, A::Execute).contains(&O::Executed))
        {
            problems.push(format!(
                "saga {saga}: a step failed but executed steps were not compensated"
            ));
        }
    }
    problems
}

/// Atomicity from the participants' own records, whatever the clients were told: a txn
/// committed anywhere must be committed at every one of its participants.
pub fn check_outcomes(observed: &Observed) -> Vec<String> {
    let mut problems = Vec::new();
    let mut txns: Vec<_> = observed.outcomes.iter().collect();
    txns.sort_by(|a, b| a.0.cmp(b.0));
    for (txn, records) in txns {
        let Some((_, _, members)) = records
            .iter()
            .find(|(_, s, m)| *s == pb::TxnState::Committed && !m.is_empty())
        else {
            continue;
        };
        for member in members {
            let state = records
                .iter()
                .find(|(p, _, _)| p == member)
                .map(|(_, s, _)| *s)
                .unwrap_or(pb::TxnState::Unknown);
            if state != pb::TxnState::Committed {
                problems.push(format!(
                    "atomicity violation: txn {txn} committed at some participants but {state:?} at {member}"
                ));
            }
        }
    }
    problems
}

/// Every invariant that failed, in words; empty when all hold.
pub fn check(initial: &[i64], history: &[Record], observed: &Observed) -> Vec<String> {
    use pb::TxnState::{Committed, Prepared};
    let mut problems = Vec::new();
    let total_before: i64 = initial.iter().sum();
    let total_after: i64 = observed.balances.iter().sum();
    if total_before != total_after {
        problems.push(format!(
            "bank total not conserved: {total_before} before, {total_after} after"
        ));
    }
    if observed.in_doubt > 0 {
        problems.push(format!(
            "{} txns still prepared (in doubt)",
            observed.in_doubt
        ));
    }
    problems.extend(check_outcomes(observed));
    if observed.protocol == Some(Protocol::Saga) {
        problems.extend(check_sagas(observed, 2));
    }
    let mut expected = initial.to_vec();
    for r in history {
        let (txn, client_committed) = match &r.outcome {
            Outcome::Committed { txn } => (txn, true),
            Outcome::Aborted { txn, .. } => (txn, false),
            Outcome::Unknown { .. } => continue,
        };
        if observed.protocol == Some(Protocol::Saga) {
            let records = observed.barriers.get(txn).map(Vec::as_slice).unwrap_or(&[]);
            let compensated = records
                .iter()
                .any(|(_, b)| b.action == pb::BarrierAction::Compensate as i32);
            let executed = records
                .iter()
                .filter(|(_, b)| b.outcome == pb::BarrierOutcome::Executed as i32)
                .count();
            if client_committed && (compensated || executed < 2) {
                problems.push(format!(
                    "acknowledged saga {txn} lost: client saw COMMITTED, but {executed} steps executed{}",
                    if compensated { " and it was compensated" } else { "" }
                ));
            }
            if !client_committed && executed > 0 && !compensated {
                problems.push(format!(
                    "saga {txn}: client saw ABORTED, yet {executed} steps executed and none was compensated"
                ));
            }
            if client_committed {
                expected[r.transfer.from] -= r.transfer.amount;
                expected[r.transfer.to] += r.transfer.amount;
            }
            continue;
        }
        let Some(&(a, b)) = observed.states.get(txn) else {
            problems.push(format!("txn {txn}: no state observed"));
            continue;
        };
        if a == Prepared || b == Prepared {
            problems.push(format!("txn {txn}: still prepared ({a:?}, {b:?})"));
        }
        if (a == Committed) != (b == Committed) {
            problems.push(format!(
                "atomicity violation: txn {txn} committed at one participant only ({a:?}, {b:?})"
            ));
        }
        if client_committed && !(a == Committed && b == Committed) {
            problems.push(format!(
                "acknowledged txn {txn} lost: client saw COMMITTED, participants hold ({a:?}, {b:?})"
            ));
        }
        if !client_committed && (a == Committed || b == Committed) {
            problems.push(format!(
                "txn {txn}: client saw ABORTED, participants hold ({a:?}, {b:?})"
            ));
        }
        if client_committed {
            expected[r.transfer.from] -= r.transfer.amount;
            expected[r.transfer.to] += r.transfer.amount;
        }
    }
    if let Some(n) = lost_updates(initial, history, observed)
        && n > 0
    {
        for (i, (want, got)) in expected.iter().zip(&observed.balances).enumerate() {
            if want != got {
                problems.push(format!(
                    "lost update: account #{i} holds {got}, but the committed transfers give {want}"
                ));
            }
        }
    }
    problems
}

/// Accounts whose final balance differs from what the acknowledged transfers give. `None`
/// when some call had no answer, so the expected balances are not known.
pub fn lost_updates(initial: &[i64], history: &[Record], observed: &Observed) -> Option<usize> {
    if history
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Unknown { .. }))
    {
        return None;
    }
    let mut expected = initial.to_vec();
    for r in history {
        if matches!(r.outcome, Outcome::Committed { .. }) {
            expected[r.transfer.from] -= r.transfer.amount;
            expected[r.transfer.to] += r.transfer.amount;
        }
    }
    Some(
        expected
            .iter()
            .zip(&observed.balances)
            .filter(|(want, got)| want != got)
            .count(),
    )
}

/// Counts of what clients were told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
}

pub fn tally(history: &[Record]) -> Tally {
    let mut t = Tally::default();
    for r in history {
        match r.outcome {
            Outcome::Committed { .. } => t.committed += 1,
            Outcome::Aborted { .. } => t.aborted += 1,
            Outcome::Unknown { .. } => t.unknown += 1,
        }
    }
    t
}

/// Waits until no participant holds a prepared txn, the coordinator has no commit decision
/// waiting for acks and drives no saga, or `timeout` passes. Returns what is left.
pub async fn wait_quiet(
    cluster: &crate::cluster::Cluster,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut in_doubt = 0;
        for p in &cluster.participants {
            let s = cluster
                .stats_client(&p.name)
                .await?
                .get_stats(pb::StatsRequest {})
                .await?;
            in_doubt += s.into_inner().in_doubt;
        }
        let c = cluster
            .stats_client("coordinator")
            .await?
            .get_stats(pb::StatsRequest {})
            .await?
            .into_inner();
        in_doubt += c.in_doubt + c.sagas_active;
        if std::env::var_os("HARNESS_DEBUG").is_some() {
            eprintln!("wait_quiet: total {in_doubt}; coordinator {c:?}");
        }
        if in_doubt == 0 || Instant::now() > deadline {
            return Ok(in_doubt);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::TxnState::{Aborted, Committed, Prepared};

    fn rec(from: usize, to: usize, amount: i64, outcome: Outcome) -> Record {
        Record {
            transfer: Transfer { from, to, amount },
            outcome,
            latency: Duration::ZERO,
            at: Duration::ZERO,
        }
    }

    fn committed(t: &str) -> Outcome {
        Outcome::Committed { txn: t.into() }
    }

    #[test]
    fn a_clean_history_passes() {
        let history = vec![
            rec(0, 1, 10, committed("1.1")),
            rec(
                1,
                0,
                500,
                Outcome::Aborted {
                    txn: "1.2".into(),
                    reason: "NO".into(),
                },
            ),
        ];
        let observed = Observed {
            balances: vec![90, 110],
            states: [
                ("1.1".into(), (Committed, Committed)),
                ("1.2".into(), (Aborted, Aborted)),
            ]
            .into_iter()
            .collect(),
            in_doubt: 0,
            outcomes: HashMap::new(),
            ..Default::default()
        };
        assert_eq!(
            check(&[100, 100], &history, &observed),
            Vec::<String>::new()
        );
    }

    #[test]
    fn planted_faults_are_caught() {
        let history = vec![
            rec(0, 1, 10, committed("1.1")),
            rec(0, 1, 5, committed("1.2")),
        ];
        let observed = Observed {
            // 1.2 committed at p1 only: money vanished.
            balances: vec![85, 110],
            states: [
                ("1.1".into(), (Committed, Committed)),
                ("1.2".into(), (Committed, Prepared)),
            ]
            .into_iter()
            .collect(),
            in_doubt: 1,
            outcomes: HashMap::new(),
            ..Default::default()
        };
        let problems = check(&[100, 100], &history, &observed).join("\n");
        assert!(problems.contains("not conserved"), "{problems}");
        assert!(
            problems.contains("atomicity violation: txn 1.2"),
            "{problems}"
        );
        assert!(problems.contains("acknowledged txn 1.2 lost"), "{problems}");
        assert!(problems.contains("still prepared"), "{problems}");
        assert!(problems.contains("lost update"), "{problems}");
    }

    #[test]
    fn outcome_records_reveal_a_half_commit_the_client_never_saw() {
        let both = vec!["p1".to_string(), "p2".to_string()];
        let mut outcomes = HashMap::new();
        outcomes.insert(
            "2.7".to_string(),
            vec![
                ("p1".to_string(), Committed, both.clone()),
                ("p2".to_string(), Aborted, vec![]),
            ],
        );
        outcomes.insert(
            "2.8".to_string(),
            vec![("p1".to_string(), Committed, both.clone())],
        );
        outcomes.insert(
            "2.9".to_string(),
            vec![
                ("p1".to_string(), Committed, both.clone()),
                ("p2".to_string(), Committed, both),
            ],
        );
        let observed = Observed {
            outcomes,
            ..Default::default()
        };
        let problems = check_outcomes(&observed);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("2.7") && problems[0].contains("Aborted at p2"));
        assert!(problems[1].contains("2.8") && problems[1].contains("Unknown at p2"));
    }
}
