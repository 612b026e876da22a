//! The wire protocol, and nothing else: the gRPC services and messages generated from
//! `proto/txn/v1/txn.proto`, the file descriptor set served through reflection, and the
//! checked conversions between wire messages and the domain types of `txn-types`.
//!
//! Layout:
//! - [`pb`]: generated protobuf messages and tonic clients and servers.
//! - [`convert`]: wire to domain (checked, errors name the field) and back.
//! - [`events`]: the feed's events and the events protocol's transfer records on the wire.

pub mod convert;
pub mod events;

/// Generated protobuf code.
pub mod pb {
    /// Wire messages and services.
    pub mod v1 {
        tonic::include_proto!("txn.v1");
    }
}

/// Encoded descriptors of every txn.v1 service and message, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/txn_descriptor.bin"));
