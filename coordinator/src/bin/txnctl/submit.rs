//! `txnctl submit`: a whole transaction written as JSON, read from a file or standard input
//! (at most [`MAX_SUBMIT_BYTES`]) and turned into a TransactRequest. Unknown fields are
//! refused, so a typo cannot silently drop an operation.

use std::io::Read as _;

use serde::Deserialize;
use txn_proto::pb::v1 as pb;

use crate::{Res, protocol_of};

/// Largest transaction file `submit` reads.
const MAX_SUBMIT_BYTES: u64 = 4 * 1024 * 1024;

pub fn read_input(file: &str) -> Res<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_SUBMIT_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        f.take(MAX_SUBMIT_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(text)
}

/// The JSON form of a transaction for `submit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTxn {
    #[serde(default = "default_protocol")]
    protocol: String,
    branches: Vec<SubmitBranch>,
    #[serde(default)]
    timeout_ms: u32,
    /// Idempotency key (see TransactRequest.client_txn_id).
    #[serde(default)]
    client_txn_id: String,
}

fn default_protocol() -> String {
    "2pc".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBranch {
    participant: String,
    ops: Vec<SubmitOp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum SubmitOp {
    Read {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Add {
        key: String,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    Check {
        key: String,
        expected: Option<String>,
    },
}

pub fn parse_submit(text: &str) -> Res<pb::TransactRequest> {
    let t: SubmitTxn =
        serde_json::from_str(text).map_err(|e| format!("malformed transaction JSON: {e}"))?;
    let protocol = protocol_of(&t.protocol).map_err(|e| e.replace("--protocol", "protocol"))?;
    let branches = t
        .branches
        .into_iter()
        .map(|b| pb::Branch {
            participant: b.participant,
            ops: b
                .ops
                .into_iter()
                .map(|op| {
                    use pb::op::Kind;
                    let kind = match op {
                        SubmitOp::Read { key } => Kind::Read(pb::ReadOp {
                            key: key.into_bytes(),
                        }),
                        SubmitOp::Put { key, value } => Kind::Put(pb::PutOp {
                            key: key.into_bytes(),
                            value: value.into_bytes(),
                        }),
                        SubmitOp::Delete { key } => Kind::Delete(pb::DeleteOp {
                            key: key.into_bytes(),
                        }),
                        SubmitOp::Add {
                            key,
                            delta,
                            min,
                            max,
                        } => Kind::Add(pb::AddOp {
                            key: key.into_bytes(),
                            delta,
                            min,
                            max,
                        }),
                        SubmitOp::Check { key, expected } => Kind::Check(pb::CheckOp {
                            key: key.into_bytes(),
                            expected: expected.map(String::into_bytes),
                        }),
                    };
                    pb::Op { kind: Some(kind) }
                })
                .collect(),
        })
        .collect();
    Ok(pb::TransactRequest {
        protocol: protocol as i32,
        branches,
        prepare_timeout_ms: t.timeout_ms,
        client_txn_id: t.client_txn_id,
        commit_point: 0,
    })
}
