//! Bad input against running services: every refusal carries the right gRPC status and names
//! the field, and none of them writes anything. Also: idempotency keys, expired deadlines and
//! cancelled calls (no partial state), a flood beyond the in-flight bound, and a participant
//! whose disk is full or read-only.
//!
//! Layout: `refusals` sends every kind of malformed call and checks each refusal; `limits`
//! covers what is well formed but retried, cut short, too much, or meets a disk that cannot
//! take writes. `support` builds the requests and clusters both use.

mod limits;
mod refusals;
mod support;
