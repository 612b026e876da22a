//! The event-driven side of a bank run, read once it is quiet and checked: every
//! participant's feed, the events protocol's transfer records, the participants' inboxes and
//! the read model. Under every protocol, every committed change must have its event (and no
//! event may lack its change), and the read model must hold exactly what the participants
//! hold, having applied each event once. Under the events protocol, every accepted transfer
//! must have settled, and every account must hold what the recorded effects give: a credit or
//! refund applied twice, or lost, shows there.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use txn_proto::pb::v1 as pb;
use txn_types::types::decode_counter;

use super::violation::Violation;
use super::{Account, Observed, Outcome, Protocol, Record};

/// One participant's feed, as it holds it.
#[derive(Debug, Clone, Default)]
pub struct Feed {
    pub head: u64,
    pub floor: u64,
    pub events: Vec<pb::Event>,
}

/// What the read model answered once quiet.
#[derive(Debug, Clone, Default)]
pub struct ReadModelSeen {
    pub feeds: Vec<pb::FeedProgress>,
    /// Each account's balance in the raw view and in the txn-consistent one, by index.
    pub raw: Vec<i64>,
    pub consistent: Vec<i64>,
}

/// The feeds, transfer records, inboxes and read model of a quiet run.
#[derive(Debug, Clone, Default)]
pub struct FeedsSeen {
    pub feeds: BTreeMap<String, Feed>,
    /// Every transfer record of the events protocol, by transfer id.
    pub transfers: BTreeMap<String, Vec<pb::TransferInfo>>,
    /// Each participant's inboxes (the events protocol's consumers).
    pub inboxes: Vec<(String, pb::InboxInfo)>,
    pub readmodel: Option<ReadModelSeen>,
}

/// Reads every feed from its first kept event, every transfer record, the inboxes, and the
/// read model's view of `accounts` (raw and consistent).
pub async fn observe_feeds(
    cluster: &crate::cluster::Cluster,
    accounts: &[Account],
) -> anyhow::Result<FeedsSeen> {
    let mut seen = FeedsSeen::default();
    for p in &cluster.participants {
        let mut feed = cluster.feed_client(&p.name)?;
        let status = feed
            .feed_status(pb::FeedStatusRequest {})
            .await
            .with_context(|| format!("feed status of {}", p.name))?
            .into_inner();
        let mut f = Feed {
            head: status.head,
            floor: status.floor,
            events: Vec::new(),
        };
        let mut at = status.floor;
        while at < status.head {
            let b = feed
                .read_events(pb::ReadEventsRequest {
                    from_offset: at,
                    limit: 0,
                })
                .await
                .with_context(|| format!("reading {}'s feed from {at}", p.name))?
                .into_inner();
            if b.next_offset <= at {
                break;
            }
            at = b.next_offset;
            f.events.extend(b.events);
        }
        seen.feeds.insert(p.name.clone(), f);
        seen.inboxes
            .extend(status.inboxes.into_iter().map(|i| (p.name.clone(), i)));
        let mut client = cluster.participant_client(&p.name).await?;
        let mut start_after = String::new();
        loop {
            let page = client
                .list_transfers(pb::ListTransfersRequest {
                    start_after: start_after.clone(),
                    limit: 0,
                })
                .await
                .with_context(|| format!("listing transfers at {}", p.name))?
                .into_inner();
            for t in page.transfers {
                seen.transfers
                    .entry(t.transfer_id.clone())
                    .or_default()
                    .push(t);
            }
            if page.next.is_empty() {
                break;
            }
            start_after = page.next;
        }
    }
    if cluster.readmodel.is_some() {
        let mut rm = cluster.readmodel_client()?;
        let refs: Vec<pb::AccountRef> = accounts
            .iter()
            .map(|a| pb::AccountRef {
                participant: a.participant.clone(),
                key: a.key.as_bytes().to_vec(),
            })
            .collect();
        let view = |consistent: bool| {
            let req = pb::GetBalancesRequest {
                accounts: refs.clone(),
                consistent,
                limit: 0,
            };
            let mut rm = rm.clone();
            async move { rm.get_balances(req).await.map(|r| r.into_inner()) }
        };
        let raw = view(false).await.context("the read model's balances")?;
        let consistent = view(true).await.context("the read model's balances")?;
        let values = |r: &pb::GetBalancesResponse| -> anyhow::Result<Vec<i64>> {
            r.balances
                .iter()
                .map(|b| decode_counter(b.value.as_deref()).map_err(anyhow::Error::msg))
                .collect()
        };
        seen.readmodel = Some(ReadModelSeen {
            raw: values(&raw)?,
            consistent: values(&consistent)?,
            feeds: rm
                .status(pb::ReadModelStatusRequest {})
                .await?
                .into_inner()
                .feeds,
        });
    }
    Ok(seen)
}

fn kind(e: &pb::Event) -> pb::EventKind {
    pb::EventKind::try_from(e.kind).unwrap_or(pb::EventKind::Unspecified)
}

fn state(t: &pb::TransferInfo) -> pb::TransferState {
    pb::TransferState::try_from(t.state).unwrap_or(pb::TransferState::Unspecified)
}

fn role(t: &pb::TransferInfo) -> pb::TransferRole {
    pb::TransferRole::try_from(t.role).unwrap_or(pb::TransferRole::Unspecified)
}

/// The source's and the destination's record of a transfer.
pub fn sides(
    records: &[pb::TransferInfo],
) -> (Option<&pb::TransferInfo>, Option<&pb::TransferInfo>) {
    let find = |r: pb::TransferRole| records.iter().find(|t| role(t) == r);
    (
        find(pb::TransferRole::Source),
        find(pb::TransferRole::Destination),
    )
}

/// Every change the participants recorded, as (participant, txn, event kinds that describe
/// it), from their own records: outcomes (2PC, one-phase), saga barriers, transfer records.
fn recorded_changes(observed: &Observed) -> Vec<(String, String, Vec<pb::EventKind>)> {
    use pb::EventKind as K;
    let mut out = Vec::new();
    for (txn, records) in &observed.outcomes {
        for r in records {
            if r.state == pb::TxnState::Committed && r.writes > 0 {
                out.push((
                    r.participant.clone(),
                    txn.clone(),
                    vec![K::TwoPhaseCommit, K::OnePhaseCommit],
                ));
            }
        }
    }
    for (saga, records) in &observed.barriers {
        for (p, b) in records {
            let kind = match pb::BarrierOutcome::try_from(b.outcome) {
                Ok(pb::BarrierOutcome::Executed) => K::SagaExecute,
                Ok(pb::BarrierOutcome::Compensated) => K::SagaCompensate,
                _ => continue,
            };
            out.push((p.clone(), saga.clone(), vec![kind]));
        }
    }
    for (id, records) in &observed.feeds.transfers {
        for t in records {
            let kinds: &[K] = match (role(t), state(t)) {
                (pb::TransferRole::Source, pb::TransferState::Refunded) => {
                    &[K::TransferDebit, K::TransferRefund]
                }
                (pb::TransferRole::Source, pb::TransferState::Rejected) => &[],
                (pb::TransferRole::Source, _) => &[K::TransferDebit],
                (_, pb::TransferState::Credited) => &[K::TransferCredit],
                (_, pb::TransferState::Refused) => &[K::TransferRefused],
                _ => &[],
            };
            for k in kinds {
                out.push((t.participant.clone(), id.clone(), vec![*k]));
            }
        }
    }
    out
}

/// Every committed change has its event in its participant's feed, every event has its
/// change, and each feed is dense from its first kept offset to its head.
pub fn check_events(observed: &Observed) -> Vec<Violation> {
    let mut problems = Vec::new();
    let mut by_txn: HashMap<(&str, &str), Vec<pb::EventKind>> = HashMap::new();
    for (p, feed) in &observed.feeds.feeds {
        for (i, e) in feed.events.iter().enumerate() {
            let expected = feed.floor + i as u64;
            if e.offset != expected {
                problems.push(Violation::FeedGap {
                    participant: p.clone(),
                    expected,
                    found: e.offset,
                });
                break;
            }
            by_txn
                .entry((p.as_str(), e.txn_id.as_str()))
                .or_default()
                .push(kind(e));
        }
        if feed.floor + feed.events.len() as u64 != feed.head {
            problems.push(Violation::FeedGap {
                participant: p.clone(),
                expected: feed.head,
                found: feed.floor + feed.events.len() as u64,
            });
        }
    }
    let changes = recorded_changes(observed);
    let recorded: std::collections::HashSet<(&str, &str, pb::EventKind)> = changes
        .iter()
        .flat_map(|(p, t, kinds)| kinds.iter().map(move |k| (p.as_str(), t.as_str(), *k)))
        .collect();
    let pruned = observed.feeds.feeds.values().any(|f| f.floor > 0);
    for (p, txn, kinds) in &changes {
        let found = by_txn
            .get(&(p.as_str(), txn.as_str()))
            .is_some_and(|k| k.iter().any(|k| kinds.contains(k)));
        if !found && !pruned {
            problems.push(Violation::EventLost {
                participant: p.clone(),
                txn: txn.clone(),
                what: format!("{kinds:?}"),
            });
        }
    }
    for (p, feed) in &observed.feeds.feeds {
        for e in &feed.events {
            if !recorded.contains(&(p.as_str(), e.txn_id.as_str(), kind(e))) {
                problems.push(Violation::EventWithoutChange {
                    participant: p.clone(),
                    offset: e.offset,
                    txn: e.txn_id.clone(),
                });
            }
        }
    }
    problems
}

/// The read model, once quiet, holds what the participants hold, raw and consistent, and
/// applied every event of every feed exactly once.
pub fn check_readmodel(observed: &Observed, accounts: &[Account]) -> Vec<Violation> {
    let Some(rm) = &observed.feeds.readmodel else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for f in &rm.feeds {
        let head = observed
            .feeds
            .feeds
            .get(&f.participant)
            .map(|x| x.head)
            .unwrap_or(0);
        if f.offset != head || f.held > 0 {
            problems.push(Violation::ReadModelBehind {
                participant: f.participant.clone(),
                offset: f.offset,
                head,
            });
        } else if f.applied != head {
            problems.push(Violation::ReadModelCountOff {
                participant: f.participant.clone(),
                applied: f.applied,
                head,
            });
        }
    }
    for (view, values) in [("raw", &rm.raw), ("consistent", &rm.consistent)] {
        for (i, (got, want)) in values.iter().zip(&observed.balances).enumerate() {
            if got != want {
                problems.push(Violation::ReadModelWrong {
                    account: format!("{}/{}", accounts[i].participant, accounts[i].key),
                    view,
                    holds: *got,
                    expected: *want,
                });
            }
        }
    }
    problems
}

/// The events protocol's guarantees, from the transfer records: every transfer a client saw
/// accepted was debited, every one it saw refused was not, every accepted one settled, the
/// two sides' records agree, and every account holds what the recorded effects give.
pub fn check_transfers(
    initial: &[i64],
    accounts: &[Account],
    history: &[Record],
    observed: &Observed,
) -> Vec<Violation> {
    if observed.protocol != Some(Protocol::Events) {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let transfers = &observed.feeds.transfers;
    for r in history {
        let (txn, accepted) = match &r.outcome {
            Outcome::Committed { txn } => (txn, true),
            Outcome::Aborted { txn, .. } => (txn, false),
            _ => continue,
        };
        let source = transfers.get(txn).and_then(|t| sides(t).0);
        let debited = source.is_some_and(|s| state(s) != pb::TransferState::Rejected);
        if accepted && !debited {
            problems.push(Violation::AcknowledgedTransferLost {
                transfer: txn.clone(),
            });
        }
        if !accepted && debited {
            problems.push(Violation::AbortedTransferApplied {
                transfer: txn.clone(),
            });
        }
    }
    for (id, records) in transfers {
        let (source, dest) = sides(records);
        let settled = match (source.map(state), dest.map(state)) {
            (Some(pb::TransferState::Rejected), None) => true,
            (Some(pb::TransferState::Credited), Some(pb::TransferState::Credited)) => true,
            (Some(pb::TransferState::Refunded), Some(pb::TransferState::Refused)) => true,
            (Some(pb::TransferState::Accepted), _) => false,
            (s, d) => {
                problems.push(Violation::TransferRecordsDisagree {
                    transfer: id.clone(),
                    detail: format!("source {s:?}, destination {d:?}"),
                });
                continue;
            }
        };
        if !settled {
            problems.push(Violation::TransferUnsettled {
                transfer: id.clone(),
            });
        }
    }
    // Every account: its start plus every effect the records say was applied to it.
    let mut expected = initial.to_vec();
    let index: HashMap<(&str, &str), usize> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| ((a.participant.as_str(), a.key.as_str()), i))
        .collect();
    for records in transfers.values() {
        for t in records {
            let applied = match state(t) {
                pb::TransferState::Rejected | pb::TransferState::Refused => continue,
                pb::TransferState::Refunded => false,
                _ => true,
            };
            for c in t.changes.iter().filter(|_| applied) {
                let key = String::from_utf8_lossy(&c.key);
                if let Some(&i) = index.get(&(t.participant.as_str(), key.as_ref())) {
                    expected[i] += c.delta.unwrap_or(0);
                }
            }
        }
    }
    for (i, (want, got)) in expected.iter().zip(&observed.balances).enumerate() {
        if want != got {
            problems.push(Violation::EffectMismatch {
                account: format!("{}/{}", accounts[i].participant, accounts[i].key),
                holds: *got,
                expected: *want,
            });
        }
    }
    problems
}
