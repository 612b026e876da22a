//! The model's stand-in for the drivers' I/O: what the services do with a core's
//! [`Step`], over the in-memory store. It makes no protocol decision; the step says which
//! answer waits for durability, exactly as it tells the services.
//!
//! Group commit is abstracted as an immediate sync: a forced step's answer goes out once
//! everything applied so far is durable, which is what the services' flusher gives, minus the
//! batching (which cannot change what is durable when an answer goes out).

use txn_participant_core::step::Step;
use txn_types::store::{MemStore, Store};

/// Applies the step's write and, for a forced step, makes everything durable before the
/// answer is returned.
pub fn carry_out<A>(store: &MemStore, step: Step<A>) -> A {
    // A patient step promises the same as a forced one; only the driver's timing differs.
    let forced = step.durability.waits();
    let answer = carry_out_unsynced(store, step);
    if forced {
        store.sync().expect("mem store");
    }
    answer
}

/// A planted bug's driver: applies the write and answers at once, whatever the step says.
pub fn carry_out_unsynced<A>(store: &MemStore, step: Step<A>) -> A {
    if !step.write.is_empty() {
        store.apply(step.write).expect("mem store");
    }
    step.answer
}
