//! Planted violations, for testing the checker itself against real processes: with the
//! system quiet, stop a participant, change its own database through the storage layer as a
//! protocol bug would have left it, and start it again. `harness compare --plant KIND` does
//! this after the workload, so the end-to-end tests can show that `compare`'s exit status
//! names the violation. Nothing here is compiled into a service binary.

use anyhow::{Context, bail};
use txn_participant_core::keys::{data_key, outcome_key};
use txn_participant_core::saga::execute_key;
use txn_storage::SledStore;
use txn_types::store::{Store, WriteBatch};
use txn_types::types::{TxnId, decode_counter, encode_counter};

use crate::bank::{Account, Outcome, Record};
use crate::cluster::Cluster;

/// What to plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plant {
    /// Undo one committed cross-participant transfer at its destination: its credit and its
    /// outcome record go, as if that branch had never committed.
    HalfCommit,
    /// Apply one completed saga's credit step a second time at its participant, and record
    /// the step's execution at a second participant too.
    DoubleEffect,
    /// Apply one settled transfer's credit (events protocol) a second time at its
    /// destination, as a consumer whose inbox was stored apart from its effect would.
    DoubleCredit,
    /// Drop the last event of a participant's feed (and its place), leaving the change it
    /// described without its event, as an event written outside its change's batch would be
    /// lost.
    LostEvent,
}

/// Plants `what` into one participant's database; returns the txn or saga it touched.
pub async fn plant(
    cluster: &mut Cluster,
    what: Plant,
    accounts: &[Account],
    history: &[Record],
) -> anyhow::Result<String> {
    if what == Plant::LostEvent {
        return lose_last_event(cluster, "p1").await;
    }
    // A committed transfer between two participants: its credit is the branch changed.
    let Some((txn, record)) = history.iter().find_map(|r| match &r.outcome {
        Outcome::Committed { txn }
            if accounts[r.transfer.from].participant != accounts[r.transfer.to].participant
                && !r.transfer.refused_credit =>
        {
            Some((txn.clone(), r))
        }
        _ => None,
    }) else {
        bail!("nothing to plant into: no committed transfer between two participants");
    };
    let to = &accounts[record.transfer.to];
    let amount = record.transfer.amount;
    let victim = to.participant.clone();
    let dir = cluster.dir().join(&victim);
    cluster
        .node(&victim)
        .terminate()
        .with_context(|| format!("stopping {victim}"))?;
    let other = cluster
        .participants
        .iter()
        .map(|p| p.name.clone())
        .find(|n| *n != victim)
        .context("a second participant")?;
    let other_dir = cluster.dir().join(&other);
    let id = TxnId::parse("txn", &txn)?;
    {
        let store = SledStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        let key = data_key(to.key.as_bytes());
        let balance = decode_counter(store.get(&key)?.as_deref()).map_err(anyhow::Error::msg)?;
        let mut batch = WriteBatch::default();
        match what {
            Plant::HalfCommit => {
                batch.put(key, encode_counter(balance - amount));
                batch.delete(outcome_key(&id));
            }
            Plant::DoubleEffect | Plant::DoubleCredit => {
                batch.put(key, encode_counter(balance + amount));
            }
            Plant::LostEvent => unreachable!("planted above"),
        }
        store.apply(batch)?;
        store.sync()?;
        if what == Plant::DoubleEffect {
            let step = store
                .get(&execute_key(&id, 1))?
                .context("the saga's credit step has no execute record")?;
            drop(store);
            cluster
                .node(&other)
                .terminate()
                .with_context(|| format!("stopping {other}"))?;
            let second = SledStore::open(&other_dir)?;
            let mut batch = WriteBatch::default();
            batch.put(execute_key(&id, 1), step);
            second.apply(batch)?;
            second.sync()?;
        }
    }
    cluster.node(&victim).start().await?;
    if what == Plant::DoubleEffect {
        cluster.node(&other).start().await?;
    }
    Ok(txn)
}

/// Drops `victim`'s last event and moves its feed's next offset back over it (so the feed
/// stays dense, and the change the event described is left without one). Returns the txn.
async fn lose_last_event(cluster: &mut Cluster, victim: &str) -> anyhow::Result<String> {
    use txn_types::rec::{EventRecord, FeedPosition};
    let dir = cluster.dir().join(victim);
    cluster
        .node(victim)
        .terminate()
        .with_context(|| format!("stopping {victim}"))?;
    let txn = {
        let store = SledStore::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        let next_key = b"f/next".to_vec();
        let next: FeedPosition = txn_types::record::decode(
            &next_key,
            &store.get(&next_key)?.context("the feed holds no event")?,
        )?;
        let last = next
            .offset
            .checked_sub(1)
            .context("the feed holds no event")?;
        let key = txn_participant_core::outbox::event_key(last);
        let ev: EventRecord =
            txn_types::record::decode(&key, &store.get(&key)?.context("the last event")?)?;
        let mut batch = WriteBatch::default();
        batch.delete(key);
        batch.put(
            next_key,
            txn_types::record::encode(&FeedPosition { offset: last }),
        );
        store.apply(batch)?;
        store.sync()?;
        ev.txn_id
    };
    cluster.node(victim).start().await?;
    Ok(txn)
}
