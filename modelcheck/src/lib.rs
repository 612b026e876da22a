//! Exhaustive model checks of the protocol cores, and a runner for golden protocol scripts.
//!
//! The coordinator's and the participants' pure state machines (the same code the services
//! run) are wrapped as stateright actors; [`twopc`] checks two-phase commit with cooperative
//! termination under message loss, duplication, reordering and crashes, also with
//! participants that drop outcomes (forgotten commits, expired aborts), [`onephase`] the
//! one-phase commit of single-branch txns (a lost answer settled by an Abort), [`saga`] the
//! saga executor and the participants' barrier. [`golden`] replays small text scripts against
//! the same actors and prints what happens, so protocol behaviour is reviewed as text in diffs.
//!
//! # Layout
//!
//! - [`twopc`]: the 2PC model. Its setup is in the module itself; `wire` has the messages and
//!   timers, `state` each actor's state and what its crash keeps, `node` the actor, which
//!   hands each event to `coordinator` or `participant` (the two drivers' parts), `model` the
//!   bounded model and its boundary, `properties` what is checked.
//! - [`onephase`]: the one-phase model, with submodules of the same names and roles.
//! - [`saga`]: the saga model (orchestrator and participants in one file).
//! - [`golden`]: the runner of golden scripts over the 2PC and saga actors.
//! - [`checked`]: the model wrapper that drops steps which change nothing, so liveness can be
//!   judged.
//! - [`io`]: what the drivers do with a core's step over the in-memory store.

pub mod checked;
pub mod golden;
pub mod io;
pub mod onephase;
pub mod saga;
pub mod twopc;
