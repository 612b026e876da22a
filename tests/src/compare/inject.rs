//! The faults of each scenario, injected on a seeded schedule inside a run, and the heal at
//! its end (every process restarted or resumed, the read model too).

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;
use txn_proto::pb::v1 as pb;

use super::{
    DOWNTIME_MS, ETCD_DOWNTIME, FaultWindow, LINK_PARTICIPANT, MESSAGE_LOSS, SCENARIOS,
    VICTIM_PARTICIPANT, Variant,
};
use crate::bank::Protocol;
use crate::cluster::Cluster;

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

async fn sleep_until(started: Instant, at: Duration) {
    let now = started.elapsed();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// Injects the scenario's faults on a seeded schedule inside the run, healing each one before
/// the run's last quarter. Returns the fault windows.
pub(super) async fn inject(
    scenario: &str,
    variant: Variant,
    cluster: &mut Cluster,
    duration: Duration,
    started: Instant,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<FaultWindow>> {
    let protocol = variant.protocol;
    let mut faults = Vec::new();
    let at = |frac: f64| duration.mul_f64(frac);
    match scenario {
        "coordinator-failover" => {
            sleep_until(started, at(rng.random_range(0.2..0.35))).await;
            let victim = busiest_coordinator(cluster).await?;
            let start = ms_since(started);
            cluster.node(&victim).kill();
            // One coordinator of its own log comes back by a restart; of several over etcd,
            // the others take over and the victim stays down until late in the run.
            if variant.etcd {
                sleep_until(started, at(0.75)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
            }
            cluster.node(&victim).start().await?;
            faults.push(FaultWindow {
                what: format!("kill -9 {victim} (the most txns in flight)"),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        "etcd-member-loss" => {
            anyhow::ensure!(
                variant.etcd,
                "etcd-member-loss needs the coordinators on etcd"
            );
            for (round, lo) in [(0, 0.2), (1, 0.5)] {
                sleep_until(started, at(rng.random_range(lo..lo + 0.05))).await;
                let etcd = cluster.etcd.as_mut().expect("an etcd variant has etcd");
                let leader = etcd.leader().await?;
                // First a follower, then the leader.
                let member = if round == 0 {
                    (leader + 1) % etcd.members.len()
                } else {
                    leader
                };
                let name = format!("e{}", member + 1);
                let start = ms_since(started);
                cluster.node(&name).kill();
                tokio::time::sleep(ETCD_DOWNTIME).await;
                cluster.node(&name).start().await?;
                faults.push(FaultWindow {
                    what: format!(
                        "kill -9 etcd {} {name}",
                        if round == 0 { "follower" } else { "leader" }
                    ),
                    start_ms: start,
                    end_ms: ms_since(started),
                });
            }
        }
        "none" => {}
        "coordinator-crash" | "participant-crash" => {
            for round in 0..2 {
                let lo = 0.15 + 0.3 * round as f64;
                sleep_until(started, at(rng.random_range(lo..lo + 0.2))).await;
                let victim = if scenario == "coordinator-crash" {
                    "coordinator".to_string()
                } else {
                    format!("p{}", rng.random_range(1..=cluster.participants.len()))
                };
                let start = ms_since(started);
                cluster.node(&victim).kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
                cluster.node(&victim).start().await?;
                faults.push(FaultWindow {
                    what: format!("kill -9 {victim}"),
                    start_ms: start,
                    end_ms: ms_since(started),
                });
            }
        }
        "crash-after-decision" | "crash-after-prepare" => {
            let (node, failpoint) = match (scenario, protocol) {
                ("crash-after-decision", Protocol::TwoPhase) => {
                    ("coordinator", "coordinator::after_decision_durable")
                }
                ("crash-after-decision", Protocol::Saga) => {
                    ("coordinator", "coordinator::saga_after_step_logged")
                }
                (_, Protocol::TwoPhase) => {
                    (VICTIM_PARTICIPANT, "participant::after_prepare_durable")
                }
                (_, Protocol::Saga) => {
                    (VICTIM_PARTICIPANT, "participant::saga_after_step_executed")
                }
                // The accept point: the debit and its event durable, no answer yet.
                ("crash-after-decision", Protocol::Events) => (
                    VICTIM_PARTICIPANT,
                    "participant::events_after_debit_durable",
                ),
                // A credit durable with its inbox, the feed not acknowledged: it comes again.
                (_, Protocol::Events) => (
                    VICTIM_PARTICIPANT,
                    "participant::events_after_credit_durable",
                ),
            };
            sleep_until(started, at(rng.random_range(0.2..0.35))).await;
            cluster.set_failpoint(node, failpoint, "crash").await?;
            let armed = ms_since(started);
            let limit = at(0.75).saturating_sub(started.elapsed());
            match cluster.node(node).wait_exit(limit).await {
                Ok(_) => {
                    let start = ms_since(started);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
                    cluster.node(node).start().await?;
                    faults.push(FaultWindow {
                        what: format!("{node} crashed at {failpoint}"),
                        start_ms: start,
                        end_ms: ms_since(started),
                    });
                }
                Err(_) => {
                    // Never reached (e.g. nothing committed): disarm; the window stays empty.
                    cluster.set_failpoint(node, failpoint, "off").await?;
                    faults.push(FaultWindow {
                        what: format!("{failpoint} armed, never reached"),
                        start_ms: armed,
                        end_ms: armed,
                    });
                }
            }
        }
        "consumer-crash" => {
            // The read model and a participant, both consumers of feeds (and the participant
            // a feed too), killed together mid-stream.
            for round in 0..2 {
                let lo = 0.15 + 0.3 * round as f64;
                sleep_until(started, at(rng.random_range(lo..lo + 0.2))).await;
                let start = ms_since(started);
                cluster.node("readmodel").kill();
                cluster.node(VICTIM_PARTICIPANT).kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
                cluster.node(VICTIM_PARTICIPANT).start().await?;
                cluster.node("readmodel").start().await?;
                faults.push(FaultWindow {
                    what: format!("kill -9 readmodel and {VICTIM_PARTICIPANT}"),
                    start_ms: start,
                    end_ms: ms_since(started),
                });
            }
        }
        "partition" => {
            sleep_until(started, at(rng.random_range(0.2..0.3))).await;
            let start = ms_since(started);
            for p in &cluster.proxies {
                p.partition();
            }
            sleep_until(started, at(0.6)).await;
            for p in &cluster.proxies {
                p.heal();
            }
            faults.push(FaultWindow {
                what: format!("partition coordinator <-> {LINK_PARTICIPANT}"),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        "pause" => {
            sleep_until(started, at(rng.random_range(0.2..0.3))).await;
            let start = ms_since(started);
            cluster.node(VICTIM_PARTICIPANT).pause()?;
            sleep_until(started, at(0.55)).await;
            cluster.node(VICTIM_PARTICIPANT).resume()?;
            faults.push(FaultWindow {
                what: format!("SIGSTOP {VICTIM_PARTICIPANT}"),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        "message-loss" => {
            sleep_until(started, at(0.2)).await;
            let start = ms_since(started);
            for p in &cluster.proxies {
                p.set_loss(MESSAGE_LOSS);
            }
            sleep_until(started, at(0.7)).await;
            for p in &cluster.proxies {
                p.heal();
            }
            faults.push(FaultWindow {
                what: format!(
                    "{}% of connections cut, coordinator <-> {LINK_PARTICIPANT}",
                    (MESSAGE_LOSS * 100.0) as u32
                ),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ),
    }
    Ok(faults)
}

/// Undoes every fault still in force: restarts dead processes, resumes paused ones, heals
/// the proxies.
pub(super) async fn heal(cluster: &mut Cluster) -> anyhow::Result<()> {
    for p in &cluster.proxies {
        p.heal();
    }
    let names: Vec<String> = cluster
        .etcd
        .iter()
        .flat_map(|e| e.members.iter().map(|m| m.name.clone()))
        .chain(cluster.coordinator_names())
        .chain(cluster.participants.iter().map(|p| p.name.clone()))
        .chain(cluster.readmodel.iter().map(|p| p.name.clone()))
        .collect();
    for name in names {
        let node = cluster.node(&name);
        if node.is_running() {
            let _ = node.resume();
        } else {
            node.start().await?;
        }
    }
    Ok(())
}

/// The running coordinator with the most txns in flight (collecting votes, deciding, or
/// committing); the first if none has any.
async fn busiest_coordinator(cluster: &mut Cluster) -> anyhow::Result<String> {
    let mut best = (0, cluster.coordinator.name.clone());
    for name in cluster.coordinator_names() {
        if !cluster.node(&name).is_running() {
            continue;
        }
        let s = cluster
            .stats_client(&name)
            .await?
            .get_stats(pb::StatsRequest {})
            .await?
            .into_inner();
        if s.in_flight + s.in_doubt + s.sagas_active > best.0 {
            best = (s.in_flight + s.in_doubt + s.sagas_active, name);
        }
    }
    Ok(best.1)
}
