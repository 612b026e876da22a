//! Validated domain types. Everything that arrives over the wire passes through the checked
//! conversions here before protocol code sees it, so protocol code never has to ask whether a
//! key is too long or a vote was left UNSPECIFIED.

use std::fmt;
use std::sync::Arc;

use crate::pb::v1 as pb;

/// Longest txn id, in bytes. Ids are logged and used as storage keys, so they stay short.
pub const MAX_TXN_ID_LEN: usize = 128;
/// Longest participant name, in bytes.
pub const MAX_PARTICIPANT_ID_LEN: usize = 64;
/// Longest key, in bytes. Keys live in lock tables and prepared records.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Largest durable record (a prepared record, a saga step's barrier, a saga log entry). Far
/// below sled's blob threshold (see `store::SEGMENT_SIZE`), so every record lives in the one
/// log file that the group-commit flusher fsyncs. A branch whose record would be larger is
/// refused with a NO vote rather than written unsafely.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most operations in one branch.
pub const MAX_OPS_PER_BRANCH: usize = 256;
/// Most branches (participants) in one txn.
pub const MAX_BRANCHES: usize = 32;
/// Most txns in one CommitBatch call: bounds the work and the write batch of one call.
pub const MAX_COMMIT_BATCH: usize = 512;
/// Largest gRPC message either service accepts. A branch at the limits above is far smaller
/// in practice; this caps what a hostile client can make a server buffer.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a wire message was refused. `field` names the offending field, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct InvalidInput {
    pub field: String,
    pub problem: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<InvalidInput> for tonic::Status {
    fn from(e: InvalidInput) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// A transaction id. Cheap to clone (shared), because it is copied into every message,
/// lock-table entry and record of the txn.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(Arc<str>);

impl TxnId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidInput> {
        check_name(field, raw, MAX_TXN_ID_LEN)?;
        Ok(Self(raw.into()))
    }

    /// Id of the `seq`-th txn started by a coordinator in `epoch`. Epochs are bumped durably at
    /// every coordinator start, so these ids never repeat across restarts.
    pub fn generated(epoch: u64, seq: u64) -> Self {
        Self(format!("{epoch}.{seq}").into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn:{}", self.0)
    }
}

/// A participant's name, as configured at the coordinator (`p1`, `p2`, ...).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(Arc<str>);

impl ParticipantId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, InvalidInput> {
        check_name(field, raw, MAX_PARTICIPANT_ID_LEN)?;
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Names are non-empty, bounded, and limited to characters that are safe in logs, file names
/// and URLs: ASCII letters, digits, and `-_.:`.
fn check_name(field: &str, raw: &str, max: usize) -> Result<(), InvalidInput> {
    if raw.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if raw.len() > max {
        return Err(InvalidInput::new(
            field,
            format!("is {} bytes, the limit is {max}", raw.len()),
        ));
    }
    if let Some(c) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(InvalidInput::new(
            field,
            format!("contains {c:?}; only ASCII letters, digits and -_.: are allowed"),
        ));
    }
    Ok(())
}

fn check_key(field: &str, key: &[u8]) -> Result<(), InvalidInput> {
    if key.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(InvalidInput::new(
            field,
            format!("is {} bytes, the limit is {MAX_KEY_LEN}", key.len()),
        ));
    }
    Ok(())
}

fn check_value(field: &str, value: &[u8]) -> Result<(), InvalidInput> {
    if value.len() > MAX_VALUE_LEN {
        return Err(InvalidInput::new(
            field,
            format!("is {} bytes, the limit is {MAX_VALUE_LEN}", value.len()),
        ));
    }
    Ok(())
}

/// One operation of a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Add {
        key: Vec<u8>,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    Check {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Read { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Add { key, .. }
            | Op::Check { key, .. } => key,
        }
    }

    /// Whether the operation changes the key (and so needs an exclusive lock).
    pub fn writes(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. } | Op::Add { .. })
    }

    /// Checked conversion from the wire; `field` is the path of this op in the request, such
    /// as `branches[1].ops[0]`.
    pub fn from_pb(field: &str, op: pb::Op) -> Result<Self, InvalidInput> {
        use pb::op::Kind;
        let kind = op.kind.ok_or_else(|| {
            InvalidInput::new(field, "no operation set (read, put, delete, add or check)")
        })?;
        let op = match kind {
            Kind::Read(r) => Op::Read { key: r.key },
            Kind::Put(p) => {
                check_value(&format!("{field}.put.value"), &p.value)?;
                Op::Put {
                    key: p.key,
                    value: p.value,
                }
            }
            Kind::Delete(d) => Op::Delete { key: d.key },
            Kind::Add(a) => {
                if let (Some(min), Some(max)) = (a.min, a.max)
                    && min > max
                {
                    return Err(InvalidInput::new(
                        format!("{field}.add.min"),
                        format!("min {min} is greater than max {max}"),
                    ));
                }
                Op::Add {
                    key: a.key,
                    delta: a.delta,
                    min: a.min,
                    max: a.max,
                }
            }
            Kind::Check(c) => {
                if let Some(v) = &c.expected {
                    check_value(&format!("{field}.check.expected"), v)?;
                }
                Op::Check {
                    key: c.key,
                    expected: c.expected,
                }
            }
        };
        check_key(&format!("{field}.key"), op.key())?;
        Ok(op)
    }

    pub fn to_pb(&self) -> pb::Op {
        use pb::op::Kind;
        let kind = match self.clone() {
            Op::Read { key } => Kind::Read(pb::ReadOp { key }),
            Op::Put { key, value } => Kind::Put(pb::PutOp { key, value }),
            Op::Delete { key } => Kind::Delete(pb::DeleteOp { key }),
            Op::Add {
                key,
                delta,
                min,
                max,
            } => Kind::Add(pb::AddOp {
                key,
                delta,
                min,
                max,
            }),
            Op::Check { key, expected } => Kind::Check(pb::CheckOp { key, expected }),
        };
        pb::Op { kind: Some(kind) }
    }
}

/// Checked conversion of a list of operations.
pub fn ops_from_pb(field: &str, ops: Vec<pb::Op>) -> Result<Vec<Op>, InvalidInput> {
    if ops.is_empty() {
        return Err(InvalidInput::new(field, "must hold at least one operation"));
    }
    if ops.len() > MAX_OPS_PER_BRANCH {
        return Err(InvalidInput::new(
            field,
            format!(
                "has {} operations, the limit is {MAX_OPS_PER_BRANCH}",
                ops.len()
            ),
        ));
    }
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| Op::from_pb(&format!("{field}[{i}]"), op))
        .collect()
}

/// A key and its value, if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl From<KeyValue> for pb::KeyValue {
    fn from(kv: KeyValue) -> Self {
        pb::KeyValue {
            key: kv.key,
            value: kv.value,
        }
    }
}

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
        }
    }
}

/// A participant's vote on a prepared branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The branch is durably prepared; `reads` are the values its Read operations saw.
    Yes { reads: Vec<KeyValue> },
    /// The branch cannot commit.
    No { reason: String },
}

impl Vote {
    /// Checked conversion: a missing or UNSPECIFIED vote is an error, never a default.
    pub fn from_pb(resp: pb::PrepareResponse) -> Result<Self, InvalidInput> {
        match pb::Vote::try_from(resp.vote) {
            Ok(pb::Vote::Yes) => Ok(Vote::Yes {
                reads: resp.reads.into_iter().map(KeyValue::from).collect(),
            }),
            Ok(pb::Vote::No) => Ok(Vote::No {
                reason: resp.reason,
            }),
            Ok(pb::Vote::Unspecified) => Err(InvalidInput::new("vote", "is UNSPECIFIED")),
            Err(_) => Err(InvalidInput::new(
                "vote",
                format!("{} is not a known vote", resp.vote),
            )),
        }
    }

    pub fn to_pb(&self) -> pb::PrepareResponse {
        match self {
            Vote::Yes { reads } => pb::PrepareResponse {
                vote: pb::Vote::Yes as i32,
                reads: reads.iter().cloned().map(Into::into).collect(),
                reason: String::new(),
            },
            Vote::No { reason } => pb::PrepareResponse {
                vote: pb::Vote::No as i32,
                reads: Vec::new(),
                reason: reason.clone(),
            },
        }
    }
}

/// The coordinator's decision for a txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Commit,
    Abort,
}

/// What the coordinator answers to Resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Decided(Decision),
    /// The txn is still in flight at the coordinator: ask again later.
    Pending,
}

impl Resolution {
    pub fn from_pb(raw: i32) -> Result<Self, InvalidInput> {
        match pb::Decision::try_from(raw) {
            Ok(pb::Decision::Commit) => Ok(Resolution::Decided(Decision::Commit)),
            Ok(pb::Decision::Abort) => Ok(Resolution::Decided(Decision::Abort)),
            Ok(pb::Decision::Pending) => Ok(Resolution::Pending),
            Ok(pb::Decision::Unspecified) => Err(InvalidInput::new("decision", "is UNSPECIFIED")),
            Err(_) => Err(InvalidInput::new(
                "decision",
                format!("{raw} is not a known decision"),
            )),
        }
    }

    pub fn to_pb(self) -> pb::Decision {
        match self {
            Resolution::Decided(Decision::Commit) => pb::Decision::Commit,
            Resolution::Decided(Decision::Abort) => pb::Decision::Abort,
            Resolution::Pending => pb::Decision::Pending,
        }
    }
}

/// Which protocol runs a txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    TwoPhase,
    Saga,
}

impl Protocol {
    pub fn from_pb(raw: i32) -> Result<Self, InvalidInput> {
        match pb::Protocol::try_from(raw) {
            Ok(pb::Protocol::TwoPhase) => Ok(Protocol::TwoPhase),
            Ok(pb::Protocol::Saga) => Ok(Protocol::Saga),
            Ok(pb::Protocol::Unspecified) => Err(InvalidInput::new(
                "protocol",
                "is UNSPECIFIED; set PROTOCOL_TWO_PHASE or PROTOCOL_SAGA",
            )),
            Err(_) => Err(InvalidInput::new(
                "protocol",
                format!("{raw} is not a known protocol"),
            )),
        }
    }
}

/// One branch of a txn: the operations a participant runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub participant: ParticipantId,
    pub ops: Vec<Op>,
}

/// A validated client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRequest {
    pub protocol: Protocol,
    pub branches: Vec<Branch>,
    pub prepare_timeout_ms: Option<u32>,
}

impl TxnRequest {
    /// Checked conversion of a Transact request: at least one branch, no participant twice,
    /// every op valid. Whether the participants exist is the coordinator's business.
    pub fn from_pb(req: pb::TransactRequest) -> Result<Self, InvalidInput> {
        let protocol = Protocol::from_pb(req.protocol)?;
        if req.branches.is_empty() {
            return Err(InvalidInput::new(
                "branches",
                "must hold at least one branch",
            ));
        }
        if req.branches.len() > MAX_BRANCHES {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "has {} branches, the limit is {MAX_BRANCHES}",
                    req.branches.len()
                ),
            ));
        }
        let mut branches: Vec<Branch> = Vec::with_capacity(req.branches.len());
        for (i, b) in req.branches.into_iter().enumerate() {
            let field = format!("branches[{i}].participant");
            let participant = ParticipantId::parse(&field, &b.participant)?;
            if branches.iter().any(|x| x.participant == participant) {
                return Err(InvalidInput::new(
                    field,
                    format!("{participant} appears in more than one branch"),
                ));
            }
            let ops = ops_from_pb(&format!("branches[{i}].ops"), b.ops)?;
            branches.push(Branch { participant, ops });
        }
        let prepare_timeout_ms = (req.prepare_timeout_ms > 0).then_some(req.prepare_timeout_ms);
        Ok(Self {
            protocol,
            branches,
            prepare_timeout_ms,
        })
    }
}

/// Counters are stored as decimal text so that they read the same through every tool.
pub fn decode_counter(value: Option<&[u8]>) -> Result<i64, String> {
    match value {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "value {:?} is not a decimal i64",
                    String::from_utf8_lossy(v)
                )
            }),
    }
}

pub fn encode_counter(n: i64) -> Vec<u8> {
    n.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &[u8], min: Option<i64>, max: Option<i64>) -> pb::Op {
        pb::Op {
            kind: Some(pb::op::Kind::Add(pb::AddOp {
                key: key.to_vec(),
                delta: 1,
                min,
                max,
            })),
        }
    }

    #[test]
    fn unspecified_vote_is_an_error_not_a_default() {
        let err = Vote::from_pb(pb::PrepareResponse::default()).unwrap_err();
        assert_eq!(err.field, "vote");
        let err = Vote::from_pb(pb::PrepareResponse {
            vote: 42,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.problem.contains("42"));
    }

    #[test]
    fn bad_fields_are_named() {
        let e = Op::from_pb("ops[0]", add(b"", None, None)).unwrap_err();
        assert_eq!(e.field, "ops[0].key");
        let e = Op::from_pb("ops[0]", add(b"k", Some(5), Some(1))).unwrap_err();
        assert_eq!(e.field, "ops[0].add.min");
        let e = Op::from_pb("ops[3]", pb::Op { kind: None }).unwrap_err();
        assert_eq!(e.field, "ops[3]");
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        let e = Op::from_pb("ops[0]", add(&long, None, None)).unwrap_err();
        assert!(e.problem.contains("limit"));
        assert!(TxnId::parse("txn_id", "").is_err());
        assert!(TxnId::parse("txn_id", "a b").is_err());
        assert!(TxnId::parse("txn_id", "7.42").is_ok());
    }

    #[test]
    fn duplicate_participant_is_refused() {
        let branch = || pb::Branch {
            participant: "p1".into(),
            ops: vec![add(b"k", None, None)],
        };
        let req = pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: vec![branch(), branch()],
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
        };
        let e = TxnRequest::from_pb(req).unwrap_err();
        assert_eq!(e.field, "branches[1].participant");
        let req = pb::TransactRequest {
            protocol: 0,
            branches: vec![branch()],
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
        };
        assert_eq!(TxnRequest::from_pb(req).unwrap_err().field, "protocol");
    }

    #[test]
    fn counters_round_trip_and_missing_is_zero() {
        assert_eq!(decode_counter(None), Ok(0));
        assert_eq!(decode_counter(Some(&encode_counter(-17))), Ok(-17));
        assert!(decode_counter(Some(b"abc")).is_err());
    }
}
