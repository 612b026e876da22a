//! The soak, short (CI's version of `harness soak`): a minute of fixed-rate 2PC, saga and
//! one-phase transfers, with aborts among them, against a cluster whose retentions are a
//! second. The records that retentions bound (prepared, outcomes and their index, barriers
//! and theirs, the saga log, end notices, decisions) level off during the load instead of
//! growing with it, and once the load stops they come back down to nothing; only the
//! accounts' data and the participants' links to their peers' feeds stay.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use txn_tests::bank;
use txn_tests::cluster::{Cluster, ClusterOptions};
use txn_tests::soak::{self, NodeSample, Sample, SoakOptions};

const RATE: u32 = 100;

/// Records that no retention bounds because history does not grow them: the accounts' data,
/// and each participant's consumer registration at and inbox from each of its peers (the
/// events protocol's links), one per peer.
const STRUCTURAL: [&str; 3] = ["d/", "c/", "i/"];

/// Records held that some retention bounds: all but the structural ones.
fn bounded(n: &NodeSample) -> u64 {
    n.records
        .iter()
        .filter(|(prefix, _)| !STRUCTURAL.contains(&prefix.as_str()))
        .map(|(_, r)| r)
        .sum()
}

fn bounded_total(s: &[NodeSample]) -> u64 {
    s.iter().map(bounded).sum()
}

fn at(samples: &[Sample], from: f64, to: f64) -> Vec<u64> {
    samples
        .iter()
        .filter(|s| s.at_s >= from && s.at_s < to)
        .map(|s| bounded_total(&s.nodes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_load_levels_off_and_leaves_only_data_behind() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 3,
        outcome_retention_secs: 1,
        coordinator_args: vec![
            "--saga-retention-secs".into(),
            "1".into(),
            "--saga-timeout-ms".into(),
            "1000".into(),
        ],
        participant_args: vec!["--event-retention-secs".into(), "1".into()],
        ..Default::default()
    })
    .await?;
    let accounts = bank::accounts(3, 60);
    soak::seed(&cluster, &accounts).await?;
    let opts = SoakOptions {
        duration_s: 60,
        rate: RATE,
        warmup_s: 20,
        sample_every_s: 5,
        seed: 7,
    };
    let samples = soak::run(&cluster, &accounts, &opts, |s| {
        let records: BTreeMap<&str, u64> = s
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), bounded(n)))
            .collect();
        println!(
            "{:>4.0} s: {} committed, {} aborted, {} shed, {} failed; bounded records {records:?}",
            s.at_s, s.committed, s.aborted, s.shed, s.failed
        );
    })
    .await?;
    let answered: u64 = samples.iter().map(|s| s.committed + s.aborted).sum();
    let due: u64 = samples.iter().map(|s| s.due).sum();
    let failed: u64 = samples.iter().map(|s| s.failed).sum();
    assert!(
        answered * 2 >= due && due >= u64::from(RATE) * 50,
        "the load ran: {answered} of {due} answered"
    );
    assert_eq!(
        failed, 0,
        "no fault was injected, every call has an outcome"
    );
    assert!(
        samples.iter().map(|s| s.aborted).sum::<u64>() > 0,
        "the mix aborts some"
    );

    // Level during the load: the last samples hold no more than those just after the
    // warm-up, give or take the sweeps' sawtooth and the load's jitter.
    let early = at(&samples, 20.0, 35.0);
    let late = at(&samples, 45.0, 61.0);
    let peak_early = *early.iter().max().expect("samples after the warm-up");
    let peak_late = *late.iter().max().expect("samples at the end");
    assert!(
        peak_late <= peak_early * 2 + 200,
        "records grow with the load: {early:?} then {late:?}"
    );
    let chart = tempfile::tempdir()?;
    soak::chart(&chart.path().join("soak.svg"), &samples, 20.0)?;
    assert!(std::fs::metadata(chart.path().join("soak.svg"))?.len() > 1000);

    // Once the load stops, everything a retention bounds goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = soak::sample_nodes(&cluster).await?;
        let left: BTreeMap<String, BTreeMap<String, u64>> = nodes
            .iter()
            .map(|n| {
                let held = n
                    .records
                    .iter()
                    .filter(|(p, r)| !STRUCTURAL.contains(&p.as_str()) && **r > 0)
                    .map(|(p, r)| (p.clone(), *r))
                    .collect();
                (n.node.clone(), held)
            })
            .collect();
        if left.values().all(BTreeMap::is_empty) {
            assert!(
                nodes.iter().skip(1).all(|n| n.records["d/"] == 20),
                "the accounts' data stays: {nodes:?}"
            );
            assert!(
                nodes
                    .iter()
                    .skip(1)
                    .all(|n| n.records["c/"] <= 2 && n.records["i/"] <= 2),
                "one consumer and one inbox per peer at most: {nodes:?}"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still held a minute after the load: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.shutdown()?;
    Ok(())
}
