//! Building and decoding RecordBatch v2 records, on the `kafka-protocol` crate's
//! `RecordBatchEncoder` / `RecordBatchDecoder`, which implement Kafka's record varint
//! encoding and the gzip, snappy (xerial framing, as Kafka's Java client), lz4 (frame) and
//! zstd codecs.
//!
//! Batches are built and decoded by [`crate::records`] (records written straight into the
//! batch buffer, decoded as slices of it); [`reencode_records`], which the compacting
//! cleaner uses, goes through kafka-protocol, which stores headers in an ordered map, so
//! there two headers with the same key in one record collapse into the last one.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    self as kp, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};

use crate::batch::{BatchHeader, ProtocolError};
pub use crate::records::{BatchBuilder, decode_batch};

/// Kafka's compression codecs (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn from_id(id: i16) -> Result<Self, ProtocolError> {
        Ok(match id {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(ProtocolError::UnknownCompression(other)),
        })
    }

    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    fn to_kp(self) -> kp::Compression {
        match self {
            Compression::None => kp::Compression::None,
            Compression::Gzip => kp::Compression::Gzip,
            Compression::Snappy => kp::Compression::Snappy,
            Compression::Lz4 => kp::Compression::Lz4,
            Compression::Zstd => kp::Compression::Zstd,
        }
    }
}

/// A record to put into a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordInput {
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: i64,
}

impl RecordInput {
    pub fn new(key: Option<Vec<u8>>, value: Option<Vec<u8>>, timestamp_ms: i64) -> Self {
        RecordInput {
            key,
            value,
            headers: Vec::new(),
            timestamp_ms,
        }
    }
}

/// Producer identity written into a batch (idempotent producers); defaults mean "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for ProducerFields {
    fn default() -> Self {
        ProducerFields {
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
        }
    }
}

/// A record decoded from a batch, with its absolute offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub sequence: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partition_leader_epoch: i32,
    pub log_append_time: bool,
    pub control: bool,
    pub transactional: bool,
}

fn codec_error(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Codec(e.to_string())
}

/// Builds one batch (base offset 0, records at offsets 0..n) from `records`.
pub fn encode_batch(
    records: &[RecordInput],
    compression: Compression,
) -> Result<Bytes, ProtocolError> {
    encode_batch_with(records, compression, ProducerFields::default())
}

/// [`encode_batch`] with producer id, epoch and base sequence.
pub fn encode_batch_with(
    records: &[RecordInput],
    compression: Compression,
    producer: ProducerFields,
) -> Result<Bytes, ProtocolError> {
    let mut builder = BatchBuilder::with_capacity(
        records
            .iter()
            .map(|r| 32 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum(),
    );
    for r in records {
        builder.push(
            r.timestamp_ms,
            r.key.as_deref(),
            r.value.as_deref(),
            &r.headers,
        );
    }
    builder.finish(compression, producer)
}

/// Encodes records that carry their offsets (which may have gaps, and the batch's base
/// offset is the first one) and producer fields into one batch. The compacting cleaner
/// re-encodes the records it keeps with this.
pub fn reencode_records(
    records: &[DecodedRecord],
    compression: Compression,
) -> Result<Bytes, ProtocolError> {
    if records.is_empty() {
        return Err(ProtocolError::Codec(
            "a batch needs at least one record".into(),
        ));
    }
    let kp_records: Vec<kp::Record> = records
        .iter()
        .map(|r| kp::Record {
            transactional: r.transactional,
            control: r.control,
            delete_horizon: false,
            partition_leader_epoch: r.partition_leader_epoch,
            producer_id: r.producer_id,
            producer_epoch: r.producer_epoch,
            timestamp_type: if r.log_append_time {
                TimestampType::LogAppend
            } else {
                TimestampType::Creation
            },
            offset: r.offset,
            sequence: r.sequence,
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect(),
        })
        .collect();
    let bytes = encode_kp_records(&kp_records, compression)?;
    if records[0].log_append_time {
        // kafka-protocol does not write the timestamp-type bit; keep the original type.
        let mut patched = bytes.to_vec();
        let max_ts = BatchHeader::parse(&patched)?.max_timestamp();
        crate::batch::set_log_append_time(&mut patched, max_ts);
        return Ok(Bytes::from(patched));
    }
    Ok(bytes)
}

fn encode_kp_records(
    records: &[kp::Record],
    compression: Compression,
) -> Result<Bytes, ProtocolError> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: compression.to_kp(),
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).map_err(codec_error)?;
    Ok(buf.freeze())
}

/// Decodes every record of the single batch in `batch` (validating its CRC first), with
/// absolute offsets. Copies the batch once; [`decode_batch`] on `Bytes` copies nothing.
pub fn decode_records(batch: &[u8]) -> Result<Vec<DecodedRecord>, ProtocolError> {
    decode_batch(&Bytes::copy_from_slice(batch))
}

/// [`decode_records`] through kafka-protocol's decoder (the reference the tests compare
/// [`decode_batch`] with).
#[cfg(test)]
pub(crate) fn decode_records_kp(batch: &[u8]) -> Result<Vec<DecodedRecord>, ProtocolError> {
    let header = BatchHeader::validate(batch)?;
    let mut buf = Bytes::copy_from_slice(header.as_bytes());
    let set = kp::RecordBatchDecoder::decode(&mut buf).map_err(codec_error)?;
    let log_append_time = header.is_log_append_time();
    Ok(set
        .records
        .into_iter()
        .map(|r| DecodedRecord {
            offset: r.offset,
            timestamp_ms: if log_append_time {
                header.max_timestamp()
            } else {
                r.timestamp
            },
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
            sequence: r.sequence,
            producer_id: r.producer_id,
            producer_epoch: r.producer_epoch,
            partition_leader_epoch: r.partition_leader_epoch,
            log_append_time,
            control: r.control,
            transactional: r.transactional,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize) -> Vec<RecordInput> {
        (0..n)
            .map(|i| RecordInput {
                key: if i % 3 == 0 {
                    None
                } else {
                    Some(format!("key-{i}").into_bytes())
                },
                value: if i % 5 == 4 {
                    None
                } else {
                    Some(vec![b'x'; i * 7])
                },
                headers: vec![("h".into(), Some(vec![i as u8])), ("empty".into(), None)],
                timestamp_ms: 1_700_000_000_000 + i as i64,
            })
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let records = sample(40);
        for compression in Compression::ALL {
            let batch = encode_batch(&records, compression).unwrap();
            let header = BatchHeader::validate(&batch).unwrap();
            assert_eq!(header.compression_id(), compression.id(), "{compression:?}");
            assert_eq!(header.record_count(), 40);
            let decoded = decode_records(&batch).unwrap();
            assert_eq!(decoded.len(), 40);
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                assert_eq!(d.offset, i as i64);
                assert_eq!(d.key.as_deref(), r.key.as_deref());
                assert_eq!(d.value.as_deref(), r.value.as_deref());
                assert_eq!(d.timestamp_ms, r.timestamp_ms);
                assert_eq!(d.headers.len(), 2);
                assert_eq!(d.headers[0].1.as_deref(), Some(&[i as u8][..]));
            }
        }
    }

    #[test]
    fn compression_shrinks_repetitive_values() {
        let records: Vec<RecordInput> = (0..16)
            .map(|_| RecordInput::new(None, Some(vec![b'a'; 1024]), 0))
            .collect();
        let plain = encode_batch(&records, Compression::None).unwrap().len();
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let packed = encode_batch(&records, c).unwrap().len();
            assert!(packed * 4 < plain, "{c:?}: {packed} vs {plain}");
        }
    }

    #[test]
    fn reencode_keeps_offsets_with_gaps_and_producer_fields() {
        let batch = encode_batch_with(
            &sample(6),
            Compression::Zstd,
            ProducerFields {
                producer_id: 42,
                producer_epoch: 3,
                base_sequence: 100,
            },
        )
        .unwrap();
        let mut shifted = batch.to_vec();
        crate::batch::assign_offsets(&mut shifted, 1000, 5);
        let decoded = decode_records(&shifted).unwrap();
        let kept: Vec<DecodedRecord> = decoded.into_iter().filter(|r| r.offset % 2 == 1).collect();
        let rebuilt = reencode_records(&kept, Compression::Zstd).unwrap();
        let header = BatchHeader::validate(&rebuilt).unwrap();
        assert_eq!(header.base_offset(), 1001);
        assert_eq!(header.last_offset(), 1005);
        assert_eq!(header.producer_id(), 42);
        assert_eq!(header.partition_leader_epoch(), 5);
        let again = decode_records(&rebuilt).unwrap();
        assert_eq!(
            again.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![1001, 1003, 1005]
        );
        assert_eq!(again[1].sequence, 103);
        assert_eq!(again, kept);
    }

    #[test]
    fn empty_input_is_an_error_not_a_panic() {
        assert!(encode_batch(&[], Compression::None).is_err());
        assert!(decode_records(&[0u8; 10]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(
            recs in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
                 any::<i32>()),
                1..20),
            codec in 0usize..5,
        ) {
            let records: Vec<RecordInput> = recs
                .into_iter()
                .map(|(k, v, t)| RecordInput::new(k, v, t as i64 + 1_600_000_000_000))
                .collect();
            let batch = encode_batch(&records, Compression::ALL[codec]).unwrap();
            let decoded = decode_records(&batch).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (d, r) in decoded.iter().zip(&records) {
                prop_assert_eq!(d.key.as_deref(), r.key.as_deref());
                prop_assert_eq!(d.value.as_deref(), r.value.as_deref());
                prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
            }
        }
    }
}
