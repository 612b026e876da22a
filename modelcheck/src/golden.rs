//! A tiny runner for golden protocol scripts: the same actors the model checker explores,
//! stepped by hand. A script is a header naming the system, then one command a line; the
//! runner appends what each command did as `> ` lines, and the test compares the whole text
//! with the file (`UPDATE_GOLDEN=1` rewrites the files instead).
//!
//! Header: `2pc N` (N participants) or `saga N` / `saga N fail` (N steps, the last failing).
//! Commands (nodes are `c` or `o` for the coordinator/orchestrator, `p1`, `p2`, ...):
//! - `deliver FROM TO MSG`: deliver the oldest in-flight message whose text starts with MSG;
//! - `dup FROM TO MSG`: duplicate it; `drop FROM TO MSG`: lose it;
//! - `tick NODE TIMER`: fire a timer that is set;
//! - `crash NODE`, `restart NODE`: stop (losing volatile state) and restart from what was synced;
//! - `state`: print every node; `expect NODE TEXT`: fail unless the node's state shows TEXT.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Arc;

use stateright::actor::{Actor, Command, Id, Out};

use crate::{saga, twopc};

struct Sim<A: Actor> {
    names: Vec<String>,
    actors: Vec<A>,
    states: Vec<A::State>,
    disks: Vec<Option<A::Storage>>,
    crashed: Vec<bool>,
    timers: Vec<BTreeSet<A::Timer>>,
    network: Vec<(usize, usize, A::Msg)>,
    describe: fn(&A::State) -> String,
}

impl<A: Actor> Sim<A>
where
    A::Timer: Ord,
{
    fn new(
        names: Vec<String>,
        actors: Vec<A>,
        describe: fn(&A::State) -> String,
    ) -> (Self, String) {
        let n = actors.len();
        let mut sim = Sim {
            names,
            actors,
            states: Vec::new(),
            disks: vec![None; n],
            crashed: vec![false; n],
            timers: vec![BTreeSet::new(); n],
            network: Vec::new(),
            describe,
        };
        let mut log = String::new();
        for i in 0..n {
            let mut out = Out::new();
            let st = sim.actors[i].on_start(Id::from(i), &None, &mut out);
            sim.states.push(st);
            log += &sim.process(i, out);
        }
        (sim, log)
    }

    fn node(&self, name: &str) -> Result<usize, String> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("no node {name}"))
    }

    fn process(&mut self, i: usize, out: Out<A>) -> String {
        let mut log = String::new();
        for c in out {
            match c {
                Command::Send(dst, msg) => {
                    log += &format!(
                        "> {} -> {}: {msg:?}\n",
                        self.names[i],
                        self.names[usize::from(dst)]
                    );
                    self.network.push((i, usize::from(dst), msg));
                }
                Command::SetTimer(t, _) => {
                    self.timers[i].insert(t);
                }
                Command::CancelTimer(t) => {
                    self.timers[i].remove(&t);
                }
                Command::Save(d) => self.disks[i] = Some(d),
                Command::ChooseRandom(..) => {}
            }
        }
        log
    }

    fn find(&self, words: &[&str]) -> Result<usize, String> {
        let [from, to, prefix] = words else {
            return Err("expected FROM TO MSG".into());
        };
        let (from, to) = (self.node(from)?, self.node(to)?);
        self.network
            .iter()
            .position(|(s, d, m)| *s == from && *d == to && format!("{m:?}").starts_with(prefix))
            .ok_or_else(|| format!("no message {prefix} in flight from {from} to {to}"))
    }

    fn run(&mut self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (cmd, args) = words.split_first().ok_or("empty command")?;
        match *cmd {
            "deliver" => {
                let k = self.find(args)?;
                let (src, dst, msg) = self.network.remove(k);
                if self.crashed[dst] {
                    return Ok(format!("> {} is down: message lost\n", self.names[dst]));
                }
                let mut out = Out::new();
                let mut st = Cow::Borrowed(&self.states[dst]);
                self.actors[dst].on_msg(Id::from(dst), &mut st, Id::from(src), msg, &mut out);
                let changed = matches!(st, Cow::Owned(_));
                if let Cow::Owned(s) = st {
                    self.states[dst] = s;
                }
                let mut log = self.process(dst, out);
                if !changed && log.is_empty() {
                    log = "> (no change)\n".into();
                }
                Ok(log)
            }
            "dup" => {
                let k = self.find(args)?;
                let m = self.network[k].clone();
                self.network.push(m);
                Ok(String::new())
            }
            "drop" => {
                let k = self.find(args)?;
                self.network.remove(k);
                Ok(String::new())
            }
            "tick" => {
                let [node, timer] = args else {
                    return Err("expected NODE TIMER".into());
                };
                let i = self.node(node)?;
                let t = self.timers[i]
                    .iter()
                    .find(|t| format!("{t:?}") == *timer)
                    .cloned()
                    .ok_or_else(|| format!("timer {timer} is not set at {node}"))?;
                self.timers[i].remove(&t);
                let mut out = Out::new();
                let mut st = Cow::Borrowed(&self.states[i]);
                self.actors[i].on_timeout(Id::from(i), &mut st, &t, &mut out);
                if let Cow::Owned(s) = st {
                    self.states[i] = s;
                }
                Ok(self.process(i, out))
            }
            "crash" => {
                let i = self.node(args.first().ok_or("expected NODE")?)?;
                self.crashed[i] = true;
                self.timers[i].clear();
                Ok(String::new())
            }
            "restart" => {
                let i = self.node(args.first().ok_or("expected NODE")?)?;
                self.crashed[i] = false;
                let mut out = Out::new();
                self.states[i] = self.actors[i].on_start(Id::from(i), &self.disks[i], &mut out);
                let mut log = self.process(i, out);
                log += &format!("> {}\n", (self.describe)(&self.states[i]));
                Ok(log)
            }
            "state" => Ok(self
                .states
                .iter()
                .map(|s| format!("> {}\n", (self.describe)(s)))
                .collect()),
            "expect" => {
                let (node, text) = args.split_first().ok_or("expected NODE TEXT")?;
                let i = self.node(node)?;
                let shown = (self.describe)(&self.states[i]);
                let text = text.join(" ");
                if shown.contains(&text) {
                    Ok(String::new())
                } else {
                    Err(format!(
                        "expected {node} to show {text:?}, it shows {shown:?}"
                    ))
                }
            }
            other => Err(format!("unknown command {other}")),
        }
    }

    fn timers_line(&self) -> String {
        let set: Vec<String> = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_empty())
            .map(|(i, t)| format!("{}:{:?}", self.names[i], t))
            .collect();
        format!("> timers {}\n", set.join(" "))
    }
}

fn describe_twopc(s: &twopc::State) -> String {
    let t = twopc::txn();
    match s {
        twopc::State::Coordinator(c) => format!(
            "c epoch={} txn={:?} logged={} replied={:?}",
            c.core.epoch(),
            c.core.view(&t),
            twopc::durable_has(&c.store, &txn_coordinator_core::core::decision_key(&t)),
            c.ghost.replied
        ),
        twopc::State::Participant(p) => format!(
            "participant status={:?} durable_prepared={} voted_yes={} committed={} aborted_by={:?}",
            p.core.status(&t, &p.store).expect("mem store"),
            twopc::durable_has(&p.store, &txn_participant_core::keys::prepared_key(&t)),
            p.ghost.voted_yes,
            p.ghost.committed,
            p.ghost.aborted_by
        ),
    }
}

fn describe_saga(s: &saga::State) -> String {
    match s {
        saga::State::Orchestrator(o) => format!("o next={:?}", o.saga.next()),
        saga::State::Participant(st) => format!(
            "participant executed={} compensated={} counter={}",
            st.executed,
            st.compensated,
            txn_types::types::decode_counter(
                txn_types::store::Store::get(
                    &st.store,
                    &txn_participant_core::keys::data_key(b"k")
                )
                .expect("mem store")
                .as_deref()
            )
            .expect("counter")
        ),
    }
}

fn run_sim<A: Actor>(
    mut sim: Sim<A>,
    start: String,
    header: &str,
    lines: &[&str],
) -> Result<String, String>
where
    A::Timer: Ord,
    A::Msg: Debug,
{
    let mut text = format!("{header}\n{start}{}", sim.timers_line());
    for line in lines {
        text += line;
        text += "\n";
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        text += &sim.run(line).map_err(|e| format!("{line}: {e}"))?;
        if !line.starts_with("expect") && !line.starts_with("state") {
            text += &sim.timers_line();
        }
    }
    Ok(text)
}

/// Runs a script (its `> ` lines are ignored) and returns the text it should have.
pub fn run(script: &str) -> Result<String, String> {
    let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with("> ")).collect();
    let (header, rest) = lines.split_first().ok_or("empty script")?;
    let words: Vec<&str> = header.split_whitespace().collect();
    let n: usize = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .ok_or("header: expected `2pc N` or `saga N [fail]`")?;
    let mut names = vec![if words[0] == "saga" { "o" } else { "c" }.to_string()];
    names.extend((1..=n).map(|i| format!("p{i}")));
    match words[0] {
        "2pc" => {
            let cluster = Arc::new(twopc::Cluster::new(n));
            let mut actors = vec![twopc::Node::Coordinator(cluster.clone())];
            actors.extend((0..n).map(|i| twopc::Node::Participant(i, cluster.clone())));
            let (sim, start) = Sim::new(names, actors, describe_twopc);
            run_sim(sim, start, header, rest)
        }
        "saga" => {
            let plan = Arc::new(saga::Plan::new(n, words.get(2) == Some(&"fail")));
            let mut actors = vec![saga::Node::Orchestrator(plan.clone())];
            actors.extend((0..n).map(|i| saga::Node::Participant(i, plan.clone())));
            let (sim, start) = Sim::new(names, actors, describe_saga);
            run_sim(sim, start, header, rest)
        }
        other => Err(format!("unknown system {other}")),
    }
}
