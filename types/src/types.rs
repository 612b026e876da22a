//! Validated domain types. Everything that arrives over the wire passes through the checked
//! conversions here before protocol code sees it, so protocol code never has to ask whether a
//! key is too long or a vote was left UNSPECIFIED.

use std::fmt;
use std::sync::Arc;

/// Longest txn id, in bytes. Ids are logged and used as storage keys, so they stay short.
pub const MAX_TXN_ID_LEN: usize = 128;
/// Longest participant name, in bytes.
pub const MAX_PARTICIPANT_ID_LEN: usize = 64;
/// Longest key, in bytes. Keys live in lock tables and prepared records.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Largest durable record (a prepared record, a saga step's barrier, a saga log entry). Far
/// below sled's blob threshold (see `txn_storage::SEGMENT_SIZE`), so every record lives in the one
/// log file that the group-commit flusher fsyncs. A branch whose record would be larger is
/// refused with a NO vote rather than written unsafely.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most operations in one branch.
pub const MAX_OPS_PER_BRANCH: usize = 256;
/// Most branches (participants) in one txn.
pub const MAX_BRANCHES: usize = 32;
/// Most txns in one CommitBatch call: bounds the work and the write batch of one call.
pub const MAX_COMMIT_BATCH: usize = 512;
/// Most Prepares in one PrepareBatch call: bounds the work of one call and the votes it
/// streams back.
pub const MAX_PREPARE_BATCH: usize = 512;
/// Most bytes of Prepares the coordinator puts in one PrepareBatch call, well below
/// [`MAX_MESSAGE_BYTES`]; a Prepare larger than this goes alone.
pub const MAX_PREPARE_BATCH_BYTES: usize = 1024 * 1024;
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

    /// The coordinator epoch of a generated id (`EPOCH.SEQ`), or None for an id of another
    /// shape. A coordinator uses it to tell its own txns, which it may already have presumed
    /// aborted, from those of an earlier life.
    pub fn epoch(&self) -> Option<u64> {
        let (epoch, seq) = self.0.split_once('.')?;
        seq.parse::<u64>().ok()?;
        epoch.parse().ok()
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
pub fn check_name(field: &str, raw: &str, max: usize) -> Result<(), InvalidInput> {
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

pub fn check_key(field: &str, key: &[u8]) -> Result<(), InvalidInput> {
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

pub fn check_value(field: &str, value: &[u8]) -> Result<(), InvalidInput> {
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

    /// Checks the operation against the size limits and its own consistency (`min <= max`);
    /// `field` is its path in the request, such as `branches[1].ops[0]`.
    pub fn validate(&self, field: &str) -> Result<(), InvalidInput> {
        match self {
            Op::Put { value, .. } => check_value(&format!("{field}.put.value"), value)?,
            Op::Add {
                min: Some(min),
                max: Some(max),
                ..
            } if min > max => {
                return Err(InvalidInput::new(
                    format!("{field}.add.min"),
                    format!("min {min} is greater than max {max}"),
                ));
            }
            Op::Check {
                expected: Some(v), ..
            } => check_value(&format!("{field}.check.expected"), v)?,
            Op::Read { .. } | Op::Delete { .. } | Op::Add { .. } | Op::Check { .. } => {}
        }
        check_key(&format!("{field}.key"), self.key())
    }
}

/// Checks the number of operations of one branch; `field` names the list.
pub fn check_op_count(field: &str, count: usize) -> Result<(), InvalidInput> {
    if count == 0 {
        return Err(InvalidInput::new(field, "must hold at least one operation"));
    }
    if count > MAX_OPS_PER_BRANCH {
        return Err(InvalidInput::new(
            field,
            format!("has {count} operations, the limit is {MAX_OPS_PER_BRANCH}"),
        ));
    }
    Ok(())
}

/// A key and its value, if it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A participant's vote on a prepared branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The branch is durably prepared; `reads` are the values its Read operations saw.
    Yes { reads: Vec<KeyValue> },
    /// The branch cannot commit.
    No { reason: String },
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
    /// A txn whose commit point is its votes, begun by an earlier incarnation of the
    /// coordinator, which kept no record of it: only its participants' records say whether it
    /// committed, so the asker must ask them (see [`CommitPoint::Votes`]).
    AskParticipants,
}

/// Where a 2PC txn commits.
///
/// - `Decision`: presumed abort with a logged decision. The txn commits when the coordinator's
///   decision record is durable; two forced writes lie on the critical path (the votes, then
///   the decision). A txn the coordinator has no record of is aborted.
/// - `Votes`: the txn commits when every participant holds a durable YES, and the coordinator
///   answers the client without logging anything. An abort is only ever decided once it is
///   fenced: some participant holds a durable NO or tombstone, so it can never vote YES. A
///   participant in doubt whose peers are all prepared may therefore commit; the coordinator
///   of a later epoch, which has no record of the txn, says so instead of presuming abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum CommitPoint {
    #[default]
    Decision,
    Votes,
}

impl CommitPoint {
    pub fn name(self) -> &'static str {
        match self {
            CommitPoint::Decision => "decision",
            CommitPoint::Votes => "votes",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, InvalidInput> {
        match s {
            "decision" => Ok(CommitPoint::Decision),
            "votes" => Ok(CommitPoint::Votes),
            other => Err(InvalidInput::new(
                field,
                format!("{other:?} is not a commit point (decision or votes)"),
            )),
        }
    }
}

/// Which protocol runs a txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    TwoPhase,
    Saga,
    /// Choreography: the first branch commits at once with an outbox event, and the second
    /// branch's participant applies its own branch when it consumes that event.
    Events,
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
    /// Where a 2PC txn commits; None for the coordinator's default.
    pub commit_point: Option<CommitPoint>,
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

    #[test]
    fn counters_round_trip_and_missing_is_zero() {
        assert_eq!(decode_counter(None), Ok(0));
        assert_eq!(decode_counter(Some(&encode_counter(-17))), Ok(-17));
        assert!(decode_counter(Some(b"abc")).is_err());
    }

    #[test]
    fn the_epoch_of_a_generated_id() {
        assert_eq!(TxnId::generated(7, 42).epoch(), Some(7));
        assert_eq!(TxnId::parse("t", "client-key").unwrap().epoch(), None);
        assert_eq!(TxnId::parse("t", "7.x").unwrap().epoch(), None);
        assert_eq!(TxnId::parse("t", "x.7").unwrap().epoch(), None);
    }

    #[test]
    fn ops_are_checked_with_their_field_named() {
        let add = |min, max| Op::Add {
            key: b"k".to_vec(),
            delta: 1,
            min,
            max,
        };
        assert_eq!(
            add(Some(5), Some(1)).validate("ops[0]").unwrap_err().field,
            "ops[0].add.min"
        );
        assert!(add(Some(1), Some(5)).validate("ops[0]").is_ok());
        let empty = Op::Read { key: Vec::new() };
        assert_eq!(empty.validate("ops[2]").unwrap_err().field, "ops[2].key");
        let long = Op::Read {
            key: vec![b'k'; MAX_KEY_LEN + 1],
        };
        assert!(
            long.validate("ops[0]")
                .unwrap_err()
                .problem
                .contains("limit")
        );
        assert!(check_op_count("ops", 0).is_err());
        assert!(check_op_count("ops", MAX_OPS_PER_BRANCH + 1).is_err());
    }
}
