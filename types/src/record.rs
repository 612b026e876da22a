//! Checksummed durable records: the protobuf encoding followed by a little-endian CRC32 of it.
//!
//! A record that fails its checksum is corruption, reported as [`CorruptRecord`]: callers must
//! stop, never treat it as "no record". Reading garbage as "no decision" would let presumed
//! abort turn a committed txn into an aborted one.

use prost::Message;

/// Size of the checksum trailer.
const CRC_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record at key {key:?}: {problem}")]
pub struct CorruptRecord {
    pub key: String,
    pub problem: String,
}

pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut buf = Vec::with_capacity(msg.encoded_len() + CRC_LEN);
    msg.encode(&mut buf).expect("Vec<u8> grows as needed");
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

pub fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, CorruptRecord> {
    let corrupt = |problem: String| CorruptRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        problem,
    };
    if bytes.len() < CRC_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than its checksum",
            bytes.len()
        )));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes(trailer.try_into().expect("split at CRC_LEN"));
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x})"
        )));
    }
    M::decode(body).map_err(|e| corrupt(format!("undecodable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rec::EpochRecord;

    #[test]
    fn round_trip() {
        let bytes = encode(&EpochRecord { epoch: 7 });
        let back: EpochRecord = decode(b"epoch", &bytes).unwrap();
        assert_eq!(back.epoch, 7);
    }

    #[test]
    fn flipped_bit_and_torn_write_are_detected() {
        let mut bytes = encode(&EpochRecord { epoch: 7 });
        bytes[0] ^= 0x40;
        assert!(decode::<EpochRecord>(b"epoch", &bytes).is_err());
        let bytes = encode(&EpochRecord { epoch: 7 });
        assert!(decode::<EpochRecord>(b"epoch", &bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<EpochRecord>(b"epoch", &[]).is_err());
    }
}
