//! The records of `__consumer_offsets`, in Kafka's own layout so Kafka tools can read
//! them: an offset commit is keyed by (group, topic, partition) and a group's removal is
//! a tombstone, so compaction keeps exactly the latest state.
//!
//! ```text
//! OffsetCommitKey   (version 1): i16 version | string group | string topic | i32 partition
//! OffsetCommitValue (version 3): i16 version | i64 offset | i32 leader epoch (-1)
//!                                | string metadata | i64 commit timestamp
//! GroupMetadataKey  (version 2): i16 version | string group      (value: tombstone only)
//! ```
//! Strings are an i16 length then UTF-8 bytes; integers big-endian.

use thiserror::Error;

use super::assignor::TopicPartition;
use super::state::Committed;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("truncated __consumer_offsets record")]
    Truncated,
    #[error("unknown __consumer_offsets key version {0}")]
    UnknownKeyVersion(i16),
    #[error("unknown offset commit value version {0}")]
    UnknownValueVersion(i16),
    #[error("string of {0} bytes does not fit a record")]
    TooLong(usize),
    #[error("record string is not UTF-8")]
    NotUtf8,
}

/// What a `__consumer_offsets` record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A commit, or with `None` its removal.
    Offset {
        group: String,
        tp: TopicPartition,
        committed: Option<Committed>,
    },
    /// The group was deleted (a tombstone on its metadata key).
    GroupDeleted { group: String },
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), RecordError> {
    let len = i16::try_from(s.len()).map_err(|_| RecordError::TooLong(s.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, RecordError> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let len = self.i16()?;
        let len = usize::try_from(len).map_err(|_| RecordError::Truncated)?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| RecordError::NotUtf8)
    }
}

/// The key and value of an offset commit record.
pub fn offset_commit(
    group: &str,
    tp: &TopicPartition,
    committed: &Committed,
) -> Result<(Vec<u8>, Vec<u8>), RecordError> {
    let mut key = 1i16.to_be_bytes().to_vec();
    put_str(&mut key, group)?;
    put_str(&mut key, &tp.topic)?;
    key.extend_from_slice(&(tp.partition as i32).to_be_bytes());
    let mut value = 3i16.to_be_bytes().to_vec();
    value.extend_from_slice(&committed.offset.to_be_bytes());
    value.extend_from_slice(&(-1i32).to_be_bytes());
    put_str(&mut value, &committed.metadata)?;
    value.extend_from_slice(&committed.commit_timestamp_ms.to_be_bytes());
    Ok((key, value))
}

/// The key of the tombstone that deletes a group's metadata.
pub fn group_tombstone_key(group: &str) -> Result<Vec<u8>, RecordError> {
    let mut key = 2i16.to_be_bytes().to_vec();
    put_str(&mut key, group)?;
    Ok(key)
}

/// Reads a record of `__consumer_offsets`.
pub fn parse(key: &[u8], value: Option<&[u8]>) -> Result<OffsetsRecord, RecordError> {
    let mut k = Reader(key);
    match k.i16()? {
        0 | 1 => {
            let group = k.string()?;
            let topic = k.string()?;
            let partition = k.i32()?;
            let tp = TopicPartition {
                topic,
                partition: u32::try_from(partition).map_err(|_| RecordError::Truncated)?,
            };
            let committed = match value {
                None => None,
                Some(value) => {
                    let mut v = Reader(value);
                    let version = v.i16()?;
                    let offset = v.i64()?;
                    if version >= 3 {
                        v.i32()?; // leader epoch
                    }
                    let metadata = v.string()?;
                    let commit_timestamp_ms = match version {
                        0..=3 => v.i64()?,
                        other => return Err(RecordError::UnknownValueVersion(other)),
                    };
                    Some(Committed {
                        offset,
                        metadata,
                        commit_timestamp_ms,
                    })
                }
            };
            Ok(OffsetsRecord::Offset {
                group,
                tp,
                committed,
            })
        }
        2 => Ok(OffsetsRecord::GroupDeleted { group: k.string()? }),
        other => Err(RecordError::UnknownKeyVersion(other)),
    }
}

/// Kafka's coordinator partition of a group: `abs(javaHashCode(group)) % partitions`, so
/// a group maps to the same `__consumer_offsets` partition as in Kafka.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    let mut hash: i32 = 0;
    for unit in group.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(unit as i32);
    }
    // Kafka's Utils.abs: Integer.MIN_VALUE maps to 0.
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive as u32 % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_commits_round_trip() {
        let tp = TopicPartition::new("orders", 7);
        let committed = Committed {
            offset: 1234,
            metadata: "view v2".into(),
            commit_timestamp_ms: 1_700_000_000_000,
        };
        let (key, value) = offset_commit("billing", &tp, &committed).unwrap();
        assert_eq!(&key[..2], &[0, 1]);
        assert_eq!(
            parse(&key, Some(&value)).unwrap(),
            OffsetsRecord::Offset {
                group: "billing".into(),
                tp: tp.clone(),
                committed: Some(committed),
            }
        );
        assert_eq!(
            parse(&key, None).unwrap(),
            OffsetsRecord::Offset {
                group: "billing".into(),
                tp,
                committed: None,
            }
        );
        let key = group_tombstone_key("billing").unwrap();
        assert_eq!(
            parse(&key, None).unwrap(),
            OffsetsRecord::GroupDeleted {
                group: "billing".into()
            }
        );
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(parse(&[0], None), Err(RecordError::Truncated));
        assert_eq!(
            parse(&[0, 9, 0, 0], None),
            Err(RecordError::UnknownKeyVersion(9))
        );
        assert_eq!(
            parse(&[0, 1, 0, 5, b'a'], None),
            Err(RecordError::Truncated)
        );
        assert_eq!(
            parse(&[0, 1, 0xff, 0xff], None),
            Err(RecordError::Truncated)
        );
    }

    #[test]
    fn groups_map_to_kafkas_partitions() {
        // Java: "my-group".hashCode() == -1906497762, abs % 50 == 12.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 16), 0);
        assert!(partition_for("any", 16) < 16);
    }
}
