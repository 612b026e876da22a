//! Exhaustive model checks of the protocol cores, and a runner for golden protocol scripts.
//!
//! The coordinator's and the participants' pure state machines (the same code the services
//! run) are wrapped as stateright actors; [`twopc`] checks two-phase commit with cooperative
//! termination under message loss, duplication, reordering and crashes, also with
//! participants that drop outcomes (forgotten commits, expired aborts), [`onephase`] the
//! one-phase commit of single-branch txns (a lost answer settled by an Abort), [`saga`] the
//! saga executor and the participants' barrier, [`locks`] the participant's lock queue (the
//! real lock table, driven as the participant drives it). [`golden`] replays small text
//! scripts against the same actors and prints what happens, so protocol behaviour is reviewed
//! as text in diffs.
//!
//! # Layout
//!
//! - [`twopc`]: the 2PC model. Its setup is in the module itself; `wire` has the messages and
//!   timers, `state` each actor's state and what its crash keeps, `node` the actor, which
//!   hands each event to `coordinator` or `participant` (the two drivers' parts), `model` the
//!   bounded model and its boundary, `properties` what is checked.
//! - [`onephase`]: the one-phase model, with submodules of the same names and roles.
//! - [`saga`]: the saga model (orchestrator and participants in one file).
//! - [`locks`]: the lock queue model (one participant's lock table and its waiters).
//! - [`adoption`]: several coordinators over a shared log: fencing, takeover of a gone
//!   owner's decision, Resolve about a txn held elsewhere.
//! - [`events`]: the events protocol and the outbox/inbox rules (exactly-once effects under
//!   at-least-once delivery and crashes; a change and its event durable together).
//! - [`golden`]: the runner of golden scripts over the 2PC and saga actors.
//! - [`checked`]: the model wrapper that drops steps which change nothing, so liveness can be
//!   judged.
//! - [`io`]: what the drivers do with a core's step over the in-memory store.

pub mod adoption;
pub mod checked;
pub mod events;
pub mod golden;
pub mod io;
pub mod locks;
pub mod onephase;
pub mod saga;
pub mod twopc;

/// Checks `model` until it finds a counterexample to `property` (searching at most `depth`
/// steps deep, if given), prints the path and returns how many states it took. Panics if
/// there is none: the tests of planted bugs use it to show the checker finds each one.
pub fn counterexample<M>(model: M, property: &'static str, depth: Option<usize>) -> usize
where
    M: stateright::Model + Send + Sync + 'static,
    M::State: std::fmt::Debug + std::hash::Hash + Clone + PartialEq + Send + Sync + 'static,
    M::Action: std::fmt::Debug + Clone + PartialEq + Send + Sync,
{
    use stateright::{Checker, HasDiscoveries};
    let mut builder =
        model
            .checker()
            .finish_when(HasDiscoveries::AnyOf(std::collections::BTreeSet::from([
                property,
            ])));
    if let Some(depth) = depth {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("the checker missed the planted bug ({property} holds)"));
    let states = checker.unique_state_count();
    println!("counterexample to {property:?}, after {states} states:");
    for action in path.into_actions() {
        println!("  {}", checker.model().format_action(&action));
    }
    states
}
