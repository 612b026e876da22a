//! What the participants hold once the system is quiet, read directly from them rather than
//! from the coordinator: balances, each txn's state at its participants, every outcome and
//! saga barrier they durably recorded, and the in-doubt counts. The checks judge a history
//! only against this, so a coordinator that lied to its clients cannot hide it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use txn_proto::pb::v1 as pb;
use txn_types::types::decode_counter;

use super::{Account, Outcome, Protocol, Record};

/// What the participants hold once the system is quiet.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Committed balance of each account, by index.
    pub balances: Vec<i64>,
    /// Each txn's state at each of its two participants (from, to).
    pub states: HashMap<String, (pb::TxnState, pb::TxnState)>,
    /// Prepared txns still held by any participant.
    pub in_doubt: u64,
    /// Every outcome each participant durably recorded, by txn.
    pub outcomes: HashMap<String, Vec<Recorded>>,
    /// Saga barrier records: saga -> [(participant, barrier)].
    pub barriers: HashMap<String, Vec<(String, pb::Barrier)>>,
    /// The protocol the history ran under (None: checks that need it are skipped).
    pub protocol: Option<Protocol>,
    /// The feeds, the events protocol's transfer records, the inboxes and the read model.
    pub feeds: super::feeds::FeedsSeen,
}

/// One participant's durable outcome record of a txn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub participant: String,
    pub state: pb::TxnState,
    /// The txn's participants as this one prepared it; empty for a one-phase commit (this
    /// participant alone) and for a tombstone (never prepared here).
    pub members: Vec<String>,
    /// Keys the txn wrote here.
    pub writes: u32,
    /// When the outcome was recorded, and when this participant voted YES (0: never), in
    /// Unix milliseconds.
    pub at_unix_ms: u64,
    pub prepared_at_unix_ms: u64,
}

impl Recorded {
    pub fn new(participant: &str, state: pb::TxnState, members: &[&str], writes: u32) -> Self {
        Self {
            participant: participant.into(),
            state,
            members: members.iter().map(|m| m.to_string()).collect(),
            writes,
            at_unix_ms: 0,
            prepared_at_unix_ms: 0,
        }
    }
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
            Outcome::Unknown { .. } | Outcome::NotStarted { .. } => continue,
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
    let mut outcomes: HashMap<String, Vec<Recorded>> = HashMap::new();
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
                outcomes.entry(o.txn_id).or_default().push(Recorded {
                    participant: name.clone(),
                    state,
                    members: o.participants,
                    writes: o.writes,
                    at_unix_ms: o.at_unix_ms,
                    prepared_at_unix_ms: o.prepared_at_unix_ms,
                });
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
    let feeds = super::feeds::observe_feeds(cluster, accounts).await?;
    Ok(Observed {
        balances,
        states,
        in_doubt,
        outcomes,
        barriers,
        protocol: Some(protocol),
        feeds,
    })
}

/// Waits until no participant holds a prepared txn or an unsettled transfer, the coordinator
/// has no commit decision waiting for acks and drives no saga, and the read model (if any)
/// has caught up with every feed, or `timeout` passes. Returns what is left.
pub async fn wait_quiet(
    cluster: &crate::cluster::Cluster,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut in_doubt = 0;
        let mut heads = HashMap::new();
        for p in &cluster.participants {
            let s = cluster
                .stats_client(&p.name)
                .await?
                .get_stats(pb::StatsRequest {})
                .await?
                .into_inner();
            in_doubt += s.in_doubt + s.unsettled_transfers;
            heads.insert(p.name.clone(), s.events_head);
        }
        in_doubt += readmodel_behind(cluster, &heads).await;
        let names = cluster.coordinator_names();
        for name in &names {
            let stats = match cluster
                .stats_client(name)
                .await?
                .get_stats(pb::StatsRequest {})
                .await
            {
                Ok(s) => s.into_inner(),
                // One of several coordinators is down: the others took its txns over.
                Err(_) if names.len() > 1 => continue,
                Err(e) => return Err(e.into()),
            };
            in_doubt += stats.in_doubt + stats.sagas_active;
            if std::env::var_os("HARNESS_DEBUG").is_some() {
                eprintln!("wait_quiet: total {in_doubt}; {name} {stats:?}");
            }
        }
        if in_doubt == 0 || Instant::now() > deadline {
            return Ok(in_doubt);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many events the read model has yet to make visible (consistently), over every feed;
/// 1 if it does not answer. 0 without a read model.
async fn readmodel_behind(cluster: &crate::cluster::Cluster, heads: &HashMap<String, u64>) -> u64 {
    if cluster.readmodel.is_none() {
        return 0;
    }
    let Ok(mut rm) = cluster.readmodel_client() else {
        return 1;
    };
    match rm.status(pb::ReadModelStatusRequest {}).await {
        Ok(s) => s
            .into_inner()
            .feeds
            .iter()
            .map(|f| {
                heads
                    .get(&f.participant)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(f.offset)
                    + f.held
            })
            .sum(),
        Err(_) => 1,
    }
}
