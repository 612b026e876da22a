//! Conversions between the wire messages and the domain types of `txn-types`. Everything that
//! arrives over the wire passes through the checked conversions here before protocol code sees
//! it, so a core never has to ask whether a key is too long or a vote was left UNSPECIFIED.
//! Errors name the offending field as the client sent it.

use txn_types::types::{
    Branch, CommitPoint, Decision, InvalidInput, KeyValue, MAX_BRANCHES, Op, ParticipantId,
    Protocol, Resolution, TxnRequest, Vote, check_op_count,
};

use crate::pb::v1 as pb;

/// A checked conversion from a wire message (or a raw wire enum).
pub trait FromWire<W>: Sized {
    fn from_pb(wire: W) -> Result<Self, InvalidInput>;
}

/// The wire form of a domain value.
pub trait ToWire {
    type Wire;
    fn to_pb(&self) -> Self::Wire;
}

/// INVALID_ARGUMENT, with the field and the problem in the message.
pub fn invalid_argument(e: InvalidInput) -> tonic::Status {
    tonic::Status::invalid_argument(e.to_string())
}

/// Checked conversion of one operation; `field` is its path in the request, such as
/// `branches[1].ops[0]`.
pub fn op_from_pb(field: &str, op: pb::Op) -> Result<Op, InvalidInput> {
    use pb::op::Kind;
    let kind = op.kind.ok_or_else(|| {
        InvalidInput::new(field, "no operation set (read, put, delete, add or check)")
    })?;
    let op = match kind {
        Kind::Read(r) => Op::Read { key: r.key },
        Kind::Put(p) => Op::Put {
            key: p.key,
            value: p.value,
        },
        Kind::Delete(d) => Op::Delete { key: d.key },
        Kind::Add(a) => Op::Add {
            key: a.key,
            delta: a.delta,
            min: a.min,
            max: a.max,
        },
        Kind::Check(c) => Op::Check {
            key: c.key,
            expected: c.expected,
        },
    };
    op.validate(field)?;
    Ok(op)
}

/// Checked conversion of a branch's operations.
pub fn ops_from_pb(field: &str, ops: Vec<pb::Op>) -> Result<Vec<Op>, InvalidInput> {
    check_op_count(field, ops.len())?;
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| op_from_pb(&format!("{field}[{i}]"), op))
        .collect()
}

impl ToWire for Op {
    type Wire = pb::Op;
    fn to_pb(&self) -> pb::Op {
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

impl FromWire<pb::PrepareResponse> for Vote {
    /// Checked conversion: a missing or UNSPECIFIED vote is an error, never a default.
    fn from_pb(resp: pb::PrepareResponse) -> Result<Self, InvalidInput> {
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
}

impl ToWire for Vote {
    type Wire = pb::PrepareResponse;

    fn to_pb(&self) -> pb::PrepareResponse {
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

impl FromWire<i32> for Resolution {
    fn from_pb(raw: i32) -> Result<Self, InvalidInput> {
        match pb::Decision::try_from(raw) {
            Ok(pb::Decision::Commit) => Ok(Resolution::Decided(Decision::Commit)),
            Ok(pb::Decision::Abort) => Ok(Resolution::Decided(Decision::Abort)),
            Ok(pb::Decision::Pending) => Ok(Resolution::Pending),
            Ok(pb::Decision::AskParticipants) => Ok(Resolution::AskParticipants),
            Ok(pb::Decision::Unspecified) => Err(InvalidInput::new("decision", "is UNSPECIFIED")),
            Err(_) => Err(InvalidInput::new(
                "decision",
                format!("{raw} is not a known decision"),
            )),
        }
    }
}

impl ToWire for Resolution {
    type Wire = pb::Decision;

    fn to_pb(&self) -> pb::Decision {
        match self {
            Resolution::Decided(Decision::Commit) => pb::Decision::Commit,
            Resolution::Decided(Decision::Abort) => pb::Decision::Abort,
            Resolution::Pending => pb::Decision::Pending,
            Resolution::AskParticipants => pb::Decision::AskParticipants,
        }
    }
}

/// A commit point on the wire; None for UNSPECIFIED (the receiver's default).
pub fn commit_point_from_pb(raw: i32) -> Result<Option<CommitPoint>, InvalidInput> {
    match pb::CommitPoint::try_from(raw) {
        Ok(pb::CommitPoint::Unspecified) => Ok(None),
        Ok(pb::CommitPoint::Decision) => Ok(Some(CommitPoint::Decision)),
        Ok(pb::CommitPoint::Votes) => Ok(Some(CommitPoint::Votes)),
        Err(_) => Err(InvalidInput::new(
            "commit_point",
            format!("{raw} is not a known commit point"),
        )),
    }
}

pub fn commit_point_to_pb(c: CommitPoint) -> pb::CommitPoint {
    match c {
        CommitPoint::Decision => pb::CommitPoint::Decision,
        CommitPoint::Votes => pb::CommitPoint::Votes,
    }
}

impl FromWire<i32> for Protocol {
    fn from_pb(raw: i32) -> Result<Self, InvalidInput> {
        match pb::Protocol::try_from(raw) {
            Ok(pb::Protocol::TwoPhase) => Ok(Protocol::TwoPhase),
            Ok(pb::Protocol::Saga) => Ok(Protocol::Saga),
            Ok(pb::Protocol::Events) => Ok(Protocol::Events),
            Ok(pb::Protocol::Unspecified) => Err(InvalidInput::new(
                "protocol",
                "is UNSPECIFIED; set PROTOCOL_TWO_PHASE, PROTOCOL_SAGA or PROTOCOL_EVENTS",
            )),
            Err(_) => Err(InvalidInput::new(
                "protocol",
                format!("{raw} is not a known protocol"),
            )),
        }
    }
}

impl FromWire<pb::TransactRequest> for TxnRequest {
    /// Checked conversion of a Transact request: at least one branch, no participant twice,
    /// every op valid. Whether the participants exist is the coordinator's business.
    fn from_pb(req: pb::TransactRequest) -> Result<Self, InvalidInput> {
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
        if protocol == Protocol::Events && branches.len() > MAX_EVENTS_BRANCHES {
            return Err(InvalidInput::new(
                "branches",
                format!(
                    "has {} branches; an events transfer has at most {MAX_EVENTS_BRANCHES}: the \
                     source (run at once) and the destination (applied from the source's feed)",
                    branches.len()
                ),
            ));
        }
        let prepare_timeout_ms = (req.prepare_timeout_ms > 0).then_some(req.prepare_timeout_ms);
        let commit_point = commit_point_from_pb(req.commit_point)?;
        Ok(Self {
            protocol,
            branches,
            prepare_timeout_ms,
            commit_point,
        })
    }
}

/// Most branches of a txn under the events protocol: a source and a destination. A longer
/// chain would be a choreographed saga, whose refunds would have to travel back through every
/// earlier participant; the bank's transfer, the pattern this protocol shows, has two.
pub const MAX_EVENTS_BRANCHES: usize = 2;

/// `?` for checked conversions inside a gRPC handler: an invalid field becomes
/// INVALID_ARGUMENT naming it.
pub trait OrInvalidArgument<T> {
    fn or_invalid(self) -> Result<T, tonic::Status>;
}

impl<T> OrInvalidArgument<T> for Result<T, InvalidInput> {
    fn or_invalid(self) -> Result<T, tonic::Status> {
        self.map_err(invalid_argument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::types::{MAX_KEY_LEN, TxnId};

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
        let e = op_from_pb("ops[0]", add(b"", None, None)).unwrap_err();
        assert_eq!(e.field, "ops[0].key");
        let e = op_from_pb("ops[0]", add(b"k", Some(5), Some(1))).unwrap_err();
        assert_eq!(e.field, "ops[0].add.min");
        let e = op_from_pb("ops[3]", pb::Op { kind: None }).unwrap_err();
        assert_eq!(e.field, "ops[3]");
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        let e = op_from_pb("ops[0]", add(&long, None, None)).unwrap_err();
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
            commit_point: 0,
        };
        let e = TxnRequest::from_pb(req).unwrap_err();
        assert_eq!(e.field, "branches[1].participant");
        let req = pb::TransactRequest {
            protocol: 0,
            branches: vec![branch()],
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
            commit_point: 0,
        };
        assert_eq!(TxnRequest::from_pb(req).unwrap_err().field, "protocol");
    }
}
