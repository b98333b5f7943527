//! RecordBatch v2 records written and read without intermediate record structs:
//! [`BatchBuilder`] encodes each record straight into the batch's buffer as it is added,
//! and [`decode_batch`] slices keys, values and header values out of the batch's own
//! [`Bytes`] (of the decompressed records, for a compressed batch), copying nothing.
//!
//! A record (all integers varints, zigzag-encoded):
//!
//! ```text
//! length  attributes(int8)  timestampDelta(varlong)  offsetDelta
//! keyLength(-1: null)  key  valueLength(-1: null)  value
//! headerCount  [headerKeyLength headerKey headerValueLength(-1: null) headerValue]*
//! ```
//!
//! The base timestamp is the first record's (as Kafka's Java producer writes it), so a
//! record older than the first has a negative delta.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{self as kc, Compressor, Decompressor};

use crate::batch::{
    ATTR_COMPRESSION_MASK, BatchHeader, CRC_AT, CRC_START, HEADER_SIZE, LENGTH_AT, LOG_OVERHEAD,
    MAGIC_V2, ProtocolError, RECORD_BYTES_MIN,
};
use crate::codec::{Compression, DecodedRecord, ProducerFields};

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(v: i64) -> usize {
    let mut z = zigzag(v);
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

/// Length-prefixed bytes (-1 for null): the prefix's and the bytes' size.
fn field_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => 1,
    }
}

fn put_field(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
        None => put_varint(buf, -1),
    }
}

/// Builds one batch (base offset 0) by encoding records into its buffer as they come.
/// The buffer starts with room for the header, so an uncompressed batch is finished in
/// place, without copying its records.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// `HEADER_SIZE` bytes to fill in, then the records.
    buf: BytesMut,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    /// CRC-32C of the records so far, taken as each is written while its bytes are
    /// still in cache; `None` when the batch will be compressed and needs its own.
    records_crc: Option<u32>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::with_capacity(0)
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        BatchBuilder::default()
    }

    /// A builder whose buffer first holds `bytes` of records without growing.
    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder::with_buffer(BytesMut::with_capacity(HEADER_SIZE + bytes))
    }

    /// A builder that encodes into `buf` (cleared first), such as the buffer of a batch
    /// already sent: its memory is reused rather than allocated afresh.
    pub fn with_buffer(mut buf: BytesMut) -> Self {
        buf.clear();
        buf.resize(HEADER_SIZE, 0);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            records_crc: Some(0),
        }
    }

    /// A builder for a batch that will be compressed: its CRC covers the compressed
    /// records, so a running CRC of the plain records would be wasted work.
    pub fn without_running_crc(mut self) -> Self {
        self.records_crc = None;
        self
    }

    /// Records added so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The batch's size if it were finished uncompressed now.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Appends a record at the next offset delta.
    pub fn push<H, V>(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(H, Option<V>)],
    ) where
        H: AsRef<str>,
        V: AsRef<[u8]>,
    {
        if self.count == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.wrapping_sub(self.base_timestamp);
        let offset_delta = i64::from(self.count);
        let headers_len: usize = headers
            .iter()
            .map(|(k, v)| {
                field_len(Some(k.as_ref().as_bytes())) + field_len(v.as_ref().map(AsRef::as_ref))
            })
            .sum();
        let body = 1
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + field_len(key)
            + field_len(value)
            + varint_len(headers.len() as i64)
            + headers_len;
        let buf = &mut self.buf;
        let start = buf.len();
        buf.reserve(varint_len(body as i64) + body);
        put_varint(buf, body as i64);
        buf.put_u8(0); // attributes: unused
        put_varint(buf, timestamp_delta);
        put_varint(buf, offset_delta);
        put_field(buf, key);
        put_field(buf, value);
        put_varint(buf, headers.len() as i64);
        for (k, v) in headers {
            put_field(buf, Some(k.as_ref().as_bytes()));
            put_field(buf, v.as_ref().map(AsRef::as_ref));
        }
        if let Some(crc) = &mut self.records_crc {
            *crc = crc32c::crc32c_append(*crc, &buf[start..]);
        }
        self.count += 1;
    }

    /// Splits off the buffer's room past the records so far, for another batch to encode
    /// into: this batch takes no more records, and a batch built in the room follows it
    /// in memory, so the two can be sent as one piece (see `BytesMut::unsplit`).
    pub fn split_room(&mut self) -> BytesMut {
        let len = self.buf.len();
        self.buf.split_off(len)
    }

    /// Room left in the buffer for records before it has to grow.
    pub fn room(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// The batch: header, then the records (compressed with `compression`), CRC-32C set.
    pub fn finish(
        self,
        compression: Compression,
        producer: ProducerFields,
    ) -> Result<Bytes, ProtocolError> {
        self.finish_mut(compression, producer).map(BytesMut::freeze)
    }

    /// [`finish`](Self::finish), as the buffer the batch was built in (uncompressed) or
    /// compressed into: batches split from one buffer can be joined again without a copy.
    pub fn finish_mut(
        self,
        compression: Compression,
        producer: ProducerFields,
    ) -> Result<BytesMut, ProtocolError> {
        if self.count == 0 {
            return Err(ProtocolError::Codec(
                "a batch needs at least one record".into(),
            ));
        }
        let mut records_crc = None;
        let mut out = match compression {
            Compression::None => {
                records_crc = self.records_crc;
                self.buf
            }
            compression => {
                let records = &self.buf[HEADER_SIZE..];
                let mut out = BytesMut::with_capacity(HEADER_SIZE + records.len() / 2);
                out.resize(HEADER_SIZE, 0);
                let copy = |buf: &mut BytesMut| {
                    buf.put_slice(records);
                    Ok(())
                };
                let compressed = match compression {
                    Compression::Gzip => kc::Gzip::compress(&mut out, copy),
                    Compression::Snappy => kc::Snappy::compress(&mut out, copy),
                    Compression::Lz4 => kc::Lz4::compress(&mut out, copy),
                    Compression::Zstd => kc::Zstd::compress(&mut out, copy),
                    Compression::None => unreachable!("handled above"),
                };
                compressed.map_err(|e| ProtocolError::Codec(format!("{e:#}")))?;
                out
            }
        };
        let mut header = &mut out[..HEADER_SIZE];
        header.put_i64(0); // baseOffset: assigned by the broker
        header.put_i32(0); // batchLength: below
        header.put_i32(-1); // partitionLeaderEpoch: assigned by the broker
        header.put_i8(MAGIC_V2);
        header.put_u32(0); // crc: below
        header.put_i16(compression.id() & ATTR_COMPRESSION_MASK);
        header.put_i32(self.count - 1);
        header.put_i64(self.base_timestamp);
        header.put_i64(self.max_timestamp);
        header.put_i64(producer.producer_id);
        header.put_i16(producer.producer_epoch);
        header.put_i32(producer.base_sequence);
        header.put_i32(self.count);
        let length = (out.len() - LOG_OVERHEAD) as i32;
        out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
        let crc = match (records_crc, u32::try_from(out.len() - HEADER_SIZE)) {
            (Some(records), Ok(len)) => crate::batch::crc32c_combine(
                crc32c::crc32c(&out[CRC_START..HEADER_SIZE]),
                records,
                len,
            ),
            _ => crc32c::crc32c(&out[CRC_START..]),
        };
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// A cursor over the records section.
struct Reader {
    bytes: Bytes,
    at: usize,
}

fn bad(what: &str) -> ProtocolError {
    ProtocolError::Codec(format!("malformed record: {what}"))
}

impl Reader {
    fn varint(&mut self) -> Result<i64, ProtocolError> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| bad("truncated varint"))?;
            self.at += 1;
            if shift == 63 && b > 1 {
                return Err(bad("varint overflows 64 bits"));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(bad("varint longer than 10 bytes"))
    }

    fn int32(&mut self) -> Result<i32, ProtocolError> {
        i32::try_from(self.varint()?).map_err(|_| bad("varint out of the int32 range"))
    }

    /// Length-prefixed bytes; `None` for length -1.
    fn field(&mut self, end: usize) -> Result<Option<Bytes>, ProtocolError> {
        let len = self.int32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
        if self.at + len > end {
            return Err(bad("field longer than its record"));
        }
        let field = self.bytes.slice(self.at..self.at + len);
        self.at += len;
        Ok(Some(field))
    }
}

/// Decodes every record of the one batch in `batch` (CRC checked first), with absolute
/// offsets. Keys, values and header values are slices of `batch` (or of the decompressed
/// records): no copies.
pub fn decode_batch(batch: &Bytes) -> Result<Vec<DecodedRecord>, ProtocolError> {
    let header = BatchHeader::validate(batch)?;
    let size = header.size();
    let body = batch.slice(HEADER_SIZE..size);
    let records = match Compression::from_id(header.compression_id())? {
        Compression::None => body,
        c => {
            let mut body = body;
            let decompressed = match c {
                Compression::Gzip => kc::Gzip::decompress(&mut body, |b| Ok(b.clone())),
                Compression::Snappy => kc::Snappy::decompress(&mut body, |b| Ok(b.clone())),
                Compression::Lz4 => kc::Lz4::decompress(&mut body, |b| Ok(b.clone())),
                Compression::Zstd => kc::Zstd::decompress(&mut body, |b| Ok(b.clone())),
                Compression::None => unreachable!("handled above"),
            };
            decompressed.map_err(|e| ProtocolError::Codec(format!("{e:#}")))?
        }
    };
    let count = header.record_count();
    // Bounded before anything is reserved: each record takes at least RECORD_BYTES_MIN.
    if count < 0 || count as usize > records.len() / RECORD_BYTES_MIN {
        return Err(ProtocolError::InvalidCounts);
    }
    let log_append_time = header.is_log_append_time();
    let mut out = Vec::with_capacity(count as usize);
    let mut r = Reader {
        bytes: records,
        at: 0,
    };
    for _ in 0..count {
        let len = usize::try_from(r.int32()?).map_err(|_| bad("negative record length"))?;
        let end = r.at + len;
        if end > r.bytes.len() {
            return Err(bad("record longer than the batch"));
        }
        r.at += 1; // attributes: unused
        let timestamp_delta = r.varint()?;
        let offset_delta = r.int32()?;
        let key = r.field(end)?;
        let value = r.field(end)?;
        let header_count = r.int32()?;
        if header_count < 0 || header_count as usize > len {
            return Err(bad("impossible header count"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let k = r.field(end)?.ok_or_else(|| bad("null header key"))?;
            let k = String::from_utf8(k.to_vec()).map_err(|_| bad("header key not UTF-8"))?;
            headers.push((k, r.field(end)?));
        }
        if r.at != end {
            return Err(bad("record length does not match its fields"));
        }
        out.push(DecodedRecord {
            offset: header.base_offset() + i64::from(offset_delta),
            timestamp_ms: if log_append_time {
                header.max_timestamp()
            } else {
                header.base_timestamp().wrapping_add(timestamp_delta)
            },
            key,
            value,
            headers,
            // As kafka-protocol: baseSequence + delta, also for NO_SEQUENCE (-1), which
            // keeps the offset - sequence relation of a re-encoded batch.
            sequence: header.base_sequence().wrapping_add(offset_delta),
            producer_id: header.producer_id(),
            producer_epoch: header.producer_epoch(),
            partition_leader_epoch: header.partition_leader_epoch(),
            log_append_time,
            control: header.is_control(),
            transactional: header.is_transactional(),
        });
    }
    if r.at != r.bytes.len() {
        return Err(bad("bytes after the last record"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{RecordInput, decode_records_kp, reencode_records};
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = RecordInput> {
        let bytes = || prop::option::of(prop::collection::vec(any::<u8>(), 0..300));
        let header = (
            "[a-z]{0,6}",
            prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        );
        (
            bytes(),
            bytes(),
            prop::collection::vec(header, 0..3),
            -5_000i64..5_000,
        )
            .prop_map(|(key, value, headers, ts)| RecordInput {
                key,
                value,
                headers,
                timestamp_ms: 1_700_000_000_000 + ts,
            })
    }

    fn compression() -> impl Strategy<Value = Compression> {
        prop::sample::select(Compression::ALL.to_vec())
    }

    fn build(records: &[RecordInput], compression: Compression) -> Bytes {
        build_with(BatchBuilder::new(), records, compression)
    }

    fn build_with(mut b: BatchBuilder, records: &[RecordInput], compression: Compression) -> Bytes {
        for r in records {
            b.push(
                r.timestamp_ms,
                r.key.as_deref(),
                r.value.as_deref(),
                &r.headers,
            );
        }
        b.finish(compression, ProducerFields::default()).unwrap()
    }

    /// What survives kafka-protocol's header map: distinct header keys.
    fn distinct_headers(records: &mut [RecordInput]) {
        for r in records {
            let mut seen = std::collections::BTreeSet::new();
            r.headers.retain(|(k, _)| seen.insert(k.clone()));
        }
    }

    #[test]
    fn varints_of_every_width_read_back() {
        let values = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, i64::from(i32::MAX)];
        let values = values
            .into_iter()
            .chain([i64::MAX, i64::MIN, 1 << 62, -(1 << 62)]);
        for v in values {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
            let mut reader = Reader {
                bytes: buf.freeze(),
                at: 0,
            };
            assert_eq!(reader.varint().expect("a whole varint"), v);
            assert_eq!(reader.at, varint_len(v));
        }
        assert_eq!(varint_len(i64::MIN), 10);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The CRC kept record by record and combined with the header's at the end is
        /// the CRC of the whole batch, the same as one taken over it afterwards.
        #[test]
        fn a_running_crc_gives_the_same_batch_as_one_taken_at_the_end(
            records in prop::collection::vec(record(), 1..20),
            compression in compression(),
        ) {
            let running = build(&records, compression);
            let at_the_end = build_with(
                BatchBuilder::new().without_running_crc(),
                &records,
                compression,
            );
            prop_assert_eq!(&running, &at_the_end);
            prop_assert!(BatchHeader::validate(&running).is_ok());
        }

        /// Our records decode, through kafka-protocol's decoder, to what went in; and
        /// ours decodes them the same.
        #[test]
        fn built_batches_decode_the_same_both_ways(
            mut records in prop::collection::vec(record(), 1..20),
            compression in compression(),
        ) {
            distinct_headers(&mut records);
            let batch = build(&records, compression);
            let ours = decode_batch(&batch).unwrap();
            let reference = decode_records_kp(&batch).unwrap();
            prop_assert_eq!(&ours, &reference);
            for (i, (r, d)) in records.iter().zip(&ours).enumerate() {
                prop_assert_eq!(d.offset, i as i64);
                prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
                prop_assert_eq!(d.key.as_deref(), r.key.as_deref());
                prop_assert_eq!(d.value.as_deref(), r.value.as_deref());
                let headers: Vec<(String, Option<Vec<u8>>)> = d
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_ref().map(|v| v.to_vec())))
                    .collect();
                prop_assert_eq!(&headers, &r.headers);
            }
        }

        /// kafka-protocol's batches (with every codec) decode the same with ours.
        #[test]
        fn reference_batches_decode_the_same(
            mut records in prop::collection::vec(record(), 1..20),
            compression in compression(),
            base in 0i64..1_000_000,
        ) {
            distinct_headers(&mut records);
            let decoded: Vec<DecodedRecord> = records
                .iter()
                .enumerate()
                .map(|(i, r)| DecodedRecord {
                    offset: base + i as i64,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key.clone().map(Bytes::from),
                    value: r.value.clone().map(Bytes::from),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().map(Bytes::from)))
                        .collect(),
                    sequence: 7 + i as i32,
                    producer_id: 42,
                    producer_epoch: 3,
                    partition_leader_epoch: 5,
                    log_append_time: false,
                    control: false,
                    transactional: false,
                })
                .collect();
            let batch = reencode_records(&decoded, compression).unwrap();
            prop_assert_eq!(decode_batch(&batch).unwrap(), decode_records_kp(&batch).unwrap());
        }

        /// Bytes changed inside the records (CRC fixed up, so the decoder sees them) give
        /// an error or records, never a panic.
        #[test]
        fn damaged_records_are_an_error_not_a_panic(
            records in prop::collection::vec(record(), 1..5),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let batch = build(&records, Compression::None);
            let mut bytes = batch.to_vec();
            for (at, byte) in &flips {
                let i = HEADER_SIZE + at.index(bytes.len() - HEADER_SIZE);
                bytes[i] = *byte;
            }
            let keep = HEADER_SIZE + cut.index(bytes.len() - HEADER_SIZE + 1);
            bytes.truncate(keep);
            let length = (bytes.len() - LOG_OVERHEAD) as i32;
            bytes[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[CRC_START..]);
            bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = decode_batch(&Bytes::from(bytes));
        }
    }

    #[test]
    fn uncompressed_batches_are_byte_for_byte_kafka_protocols() {
        // Same bytes as kafka-protocol's encoder when timestamps do not go backwards
        // (it bases deltas on the smallest timestamp, Kafka's Java producer on the first).
        let records: Vec<RecordInput> = (0..30)
            .map(|i| RecordInput {
                key: (i % 4 != 0).then(|| format!("key-{i}").into_bytes()),
                value: (i % 7 != 6).then(|| vec![b'v'; i * 13]),
                headers: vec![("h".into(), Some(vec![i as u8])), ("n".into(), None)],
                timestamp_ms: 1_700_000_000_000 + (i as i64 / 3),
            })
            .collect();
        let ours = build(&records, Compression::None);
        let decoded = decode_batch(&ours).unwrap();
        let reference = reencode_records(&decoded, Compression::None).unwrap();
        assert_eq!(ours, reference);
    }

    #[test]
    fn duplicate_header_keys_are_kept_and_values_are_slices_of_the_batch() {
        let mut b = BatchBuilder::new();
        let headers = [("trace", Some(&b"a"[..])), ("trace", Some(&b"b"[..]))];
        b.push(5, Some(b"k"), Some(b"value"), &headers);
        let batch = b
            .finish(Compression::None, ProducerFields::default())
            .unwrap();
        let decoded = decode_batch(&batch).unwrap();
        assert_eq!(decoded[0].headers.len(), 2);
        let value = decoded[0].value.as_ref().unwrap();
        let range = batch.as_ptr_range();
        assert!(
            range.contains(&value.as_ptr()),
            "a slice of the batch, not a copy"
        );
    }

    #[test]
    fn a_declared_count_beyond_the_bytes_is_refused_before_reserving() {
        let mut b = BatchBuilder::new();
        b.push::<&str, &[u8]>(0, None, Some(b"x"), &[]);
        let mut bytes = b
            .finish(Compression::None, ProducerFields::default())
            .unwrap()
            .to_vec();
        bytes[crate::batch::RECORD_COUNT_AT..crate::batch::RECORD_COUNT_AT + 4]
            .copy_from_slice(&1_000_000i32.to_be_bytes());
        let last = crate::batch::LAST_OFFSET_DELTA_AT;
        bytes[last..last + 4].copy_from_slice(&999_999i32.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_START..]);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            decode_batch(&Bytes::from(bytes)),
            Err(ProtocolError::InvalidCounts)
        );
    }
}
