//! The read model's projection (CQRS), as a pure state machine: no tokio, no tonic, no sled
//! (`cargo tree -p txn-readmodel-core -e normal`). The `readmodel` service follows every
//! participant's change feed and hands each event to [`view::View::receive`], which returns
//! the write batch to apply: the view's changes together with the feed's cursor, so that every
//! event is applied exactly once however often it is delivered.
//!
//! Layout:
//! - [`keys`]: the view's storage layout.
//! - [`view`]: receiving events: the raw view, statements, the txn index, and the
//!   txn-consistent view that shows a two-phase txn whole or not at all.
//! - [`query`]: balances and statements, what an answer reflects, and clearing for a rebuild.

pub mod keys;
pub mod query;
pub mod view;

#[cfg(test)]
mod tests;
