//! The durable record messages, generated from `types/proto/txn/records/v1/records.proto`, and
//! their conversions to and from the domain types. Records are written only through
//! [`crate::record::encode`], which appends the checksum.

include!(concat!(env!("OUT_DIR"), "/txn.records.v1.rs"));

use crate::types::{self as t, InvalidInput};

impl From<t::KeyValue> for KeyValue {
    fn from(kv: t::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
        }
    }
}

impl From<KeyValue> for t::KeyValue {
    fn from(kv: KeyValue) -> Self {
        t::KeyValue {
            key: kv.key,
            value: kv.value,
        }
    }
}

impl From<&t::Op> for Op {
    fn from(op: &t::Op) -> Self {
        use op::Kind;
        let kind = match op.clone() {
            t::Op::Read { key } => Kind::Read(ReadOp { key }),
            t::Op::Put { key, value } => Kind::Put(PutOp { key, value }),
            t::Op::Delete { key } => Kind::Delete(DeleteOp { key }),
            t::Op::Add {
                key,
                delta,
                min,
                max,
            } => Kind::Add(AddOp {
                key,
                delta,
                min,
                max,
            }),
            t::Op::Check { key, expected } => Kind::Check(CheckOp { key, expected }),
        };
        Op { kind: Some(kind) }
    }
}

impl TryFrom<Op> for t::Op {
    type Error = InvalidInput;

    /// A logged op without a kind can only come from a damaged or foreign record.
    fn try_from(op: Op) -> Result<Self, InvalidInput> {
        use op::Kind;
        Ok(match op.kind {
            None => return Err(InvalidInput::new("op", "no operation set")),
            Some(Kind::Read(r)) => t::Op::Read { key: r.key },
            Some(Kind::Put(p)) => t::Op::Put {
                key: p.key,
                value: p.value,
            },
            Some(Kind::Delete(d)) => t::Op::Delete { key: d.key },
            Some(Kind::Add(a)) => t::Op::Add {
                key: a.key,
                delta: a.delta,
                min: a.min,
                max: a.max,
            },
            Some(Kind::Check(c)) => t::Op::Check {
                key: c.key,
                expected: c.expected,
            },
        })
    }
}

impl From<&t::Branch> for Branch {
    fn from(b: &t::Branch) -> Self {
        Branch {
            participant: b.participant.as_str().to_owned(),
            ops: b.ops.iter().map(Op::from).collect(),
        }
    }
}

impl From<t::Protocol> for Protocol {
    fn from(p: t::Protocol) -> Self {
        match p {
            t::Protocol::TwoPhase => Protocol::TwoPhase,
            t::Protocol::Saga => Protocol::Saga,
            t::Protocol::Events => Protocol::Events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_survive_the_log() {
        let ops = vec![
            t::Op::Read { key: b"r".to_vec() },
            t::Op::Put {
                key: b"p".to_vec(),
                value: b"v".to_vec(),
            },
            t::Op::Delete { key: b"d".to_vec() },
            t::Op::Add {
                key: b"a".to_vec(),
                delta: -3,
                min: Some(0),
                max: None,
            },
            t::Op::Check {
                key: b"c".to_vec(),
                expected: None,
            },
        ];
        for op in ops {
            assert_eq!(t::Op::try_from(Op::from(&op)).unwrap(), op);
        }
        assert!(t::Op::try_from(Op { kind: None }).is_err());
    }
}
