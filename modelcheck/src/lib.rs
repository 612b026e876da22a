//! Exhaustive model checks of the protocol cores, and a runner for golden protocol scripts.
//!
//! The coordinator's and the participants' pure state machines (the same code the services
//! run) are wrapped as stateright actors; [`twopc`] checks two-phase commit with cooperative
//! termination under message loss, duplication, reordering and crashes, also with
//! participants that drop outcomes (forgotten commits, expired aborts), [`onephase`] the
//! one-phase commit of single-branch txns (a lost answer settled by an Abort), [`saga`] the
//! saga executor and the participants' barrier. [`golden`] replays small text scripts against
//! the same actors and prints what happens, so protocol behaviour is reviewed as text in diffs.

pub mod checked;
pub mod golden;
pub mod io;
pub mod onephase;
pub mod saga;
pub mod twopc;
