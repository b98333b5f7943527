//! Kafka RecordBatch v2, read and patched in place.
//!
//! ```text
//! offset  size  field                 covered by CRC
//!      0     8  baseOffset            no
//!      8     4  batchLength           no   (bytes after this field)
//!     12     4  partitionLeaderEpoch  no
//!     16     1  magic (= 2)           no
//!     17     4  crc (CRC-32C)         no
//!     21     2  attributes            yes  (bits 0-2 compression, 3 timestamp type,
//!                                           4 transactional, 5 control, 6 delete horizon)
//!     23     4  lastOffsetDelta       yes
//!     27     8  baseTimestamp         yes
//!     35     8  maxTimestamp          yes
//!     43     8  producerId            yes
//!     51     2  producerEpoch         yes
//!     53     4  baseSequence          yes
//!     57     4  recordCount           yes
//!     61     -  records               yes
//! ```
//! All integers are big-endian.

use thiserror::Error;

/// Bytes before `batchLength` counts: baseOffset and batchLength itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 batch header.
pub const HEADER_SIZE: usize = 61;
/// The only supported magic value.
pub const MAGIC_V2: i8 = 2;
/// Where the CRC-covered region starts.
pub const CRC_START: usize = 21;

pub const BASE_OFFSET_AT: usize = 0;
pub const LENGTH_AT: usize = 8;
pub const LEADER_EPOCH_AT: usize = 12;
pub const MAGIC_AT: usize = 16;
pub const CRC_AT: usize = 17;
pub const ATTRIBUTES_AT: usize = 21;
pub const LAST_OFFSET_DELTA_AT: usize = 23;
pub const BASE_TIMESTAMP_AT: usize = 27;
pub const MAX_TIMESTAMP_AT: usize = 35;
pub const PRODUCER_ID_AT: usize = 43;
pub const PRODUCER_EPOCH_AT: usize = 51;
pub const BASE_SEQUENCE_AT: usize = 53;
pub const RECORD_COUNT_AT: usize = 57;

/// The smallest encoded record: seven one-byte varints (length, attributes, timestamp
/// delta, offset delta, key length, value length, header count).
pub const RECORD_BYTES_MIN: usize = 7;
/// The most records one batch may declare. Decoders reserve memory by the declared
/// count, so it must be bounded before any decode; an uncompressed batch is further
/// bounded by its size.
pub const RECORD_COUNT_MAX: i32 = 1 << 20;

/// Attribute bit: the timestamps are LogAppendTime.
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
pub const ATTR_TRANSACTIONAL: i16 = 1 << 4;
pub const ATTR_CONTROL: i16 = 1 << 5;
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;

/// Why a batch was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("record batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("record batch length {length} is invalid (header needs {min})")]
    InvalidLength { length: i64, min: usize },
    #[error("record batch magic {0} is not supported (only v2)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("record batch has an impossible record count or offset range")]
    InvalidCounts,
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("record batch has {trailing} trailing bytes after its declared length")]
    TrailingBytes { trailing: usize },
    #[error("could not encode or decode records: {0}")]
    Codec(String),
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// A read-only view of the header of one batch at the start of `bytes`.
///
/// Constructed by [`BatchHeader::parse`], which checks that the whole batch is present;
/// [`BatchHeader::validate`] additionally checks the CRC.
#[derive(Debug, Clone, Copy)]
pub struct BatchHeader<'a> {
    bytes: &'a [u8],
}

impl<'a> BatchHeader<'a> {
    /// Reads the size of the batch at the start of `bytes` from its first 12 bytes.
    /// Returns `None` when fewer than 12 bytes are available.
    pub fn peek_size(bytes: &[u8]) -> Option<Result<usize, ProtocolError>> {
        if bytes.len() < LOG_OVERHEAD {
            return None;
        }
        let length = be_i32(bytes, LENGTH_AT) as i64;
        if length < (HEADER_SIZE - LOG_OVERHEAD) as i64 {
            return Some(Err(ProtocolError::InvalidLength {
                length,
                min: HEADER_SIZE - LOG_OVERHEAD,
            }));
        }
        Some(Ok(LOG_OVERHEAD + length as usize))
    }

    /// Parses the header of the batch at the start of `bytes`, checking the length field,
    /// the magic and that the whole batch is present. Does not check the CRC.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ProtocolError> {
        let size = match Self::peek_size(bytes) {
            None => {
                return Err(ProtocolError::Truncated {
                    needed: LOG_OVERHEAD,
                    available: bytes.len(),
                });
            }
            Some(size) => size?,
        };
        if bytes.len() < size {
            return Err(ProtocolError::Truncated {
                needed: size,
                available: bytes.len(),
            });
        }
        let magic = bytes[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(ProtocolError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            bytes: &bytes[..size],
        };
        if header.last_offset_delta() < 0
            || header.record_count() < 0
            || header.record_count() > RECORD_COUNT_MAX
            || header
                .base_offset()
                .checked_add(header.last_offset_delta() as i64)
                .is_none()
        {
            return Err(ProtocolError::InvalidCounts);
        }
        if header.compression_id() > 4 {
            return Err(ProtocolError::UnknownCompression(header.compression_id()));
        }
        if header.compression_id() == 0
            && header.record_count() as usize > (size - HEADER_SIZE) / RECORD_BYTES_MIN
        {
            return Err(ProtocolError::InvalidCounts);
        }
        Ok(header)
    }

    /// [`parse`](Self::parse) plus the CRC-32C check.
    pub fn validate(bytes: &'a [u8]) -> Result<Self, ProtocolError> {
        let header = Self::parse(bytes)?;
        let computed = crc32c::crc32c(&header.bytes[CRC_START..]);
        if computed != header.crc() {
            return Err(ProtocolError::CrcMismatch {
                stored: header.crc(),
                computed,
            });
        }
        Ok(header)
    }

    /// The whole batch.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Total size of the batch in bytes, including the 12-byte log overhead.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, BASE_OFFSET_AT)
    }
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, LAST_OFFSET_DELTA_AT)
    }
    /// Offset of the last record (`baseOffset + lastOffsetDelta`).
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + self.last_offset_delta() as i64
    }
    /// The offset after this batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, LEADER_EPOCH_AT)
    }
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC_AT] as i8
    }
    pub fn crc(&self) -> u32 {
        be_i32(self.bytes, CRC_AT) as u32
    }
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, ATTRIBUTES_AT)
    }
    pub fn compression_id(&self) -> i16 {
        self.attributes() & ATTR_COMPRESSION_MASK
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_LOG_APPEND_TIME != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, BASE_TIMESTAMP_AT)
    }
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, MAX_TIMESTAMP_AT)
    }
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, PRODUCER_ID_AT)
    }
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, PRODUCER_EPOCH_AT)
    }
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, BASE_SEQUENCE_AT)
    }
    pub fn record_count(&self) -> i32 {
        be_i32(self.bytes, RECORD_COUNT_AT)
    }
}

/// Iterates over the validated batches of a buffer holding several concatenated batches.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    check_crc: bool,
}

impl<'a> BatchIter<'a> {
    /// Iterates, checking each batch's CRC.
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter {
            rest: bytes,
            check_crc: true,
        }
    }
    /// Iterates over headers only, without checking CRCs.
    pub fn headers_only(bytes: &'a [u8]) -> Self {
        BatchIter {
            rest: bytes,
            check_crc: false,
        }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchHeader<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = if self.check_crc {
            BatchHeader::validate(self.rest)
        } else {
            BatchHeader::parse(self.rest)
        };
        match result {
            Ok(header) => {
                self.rest = &self.rest[header.size()..];
                Some(Ok(header))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// How many leading bytes of a batch an append rewrites: up to the end of maxTimestamp,
/// which covers the base offset, the partition leader epoch and, for LogAppendTime, the
/// CRC, the attributes and maxTimestamp.
pub const PATCHED_PREFIX: usize = MAX_TIMESTAMP_AT + 8;

/// The first [`PATCHED_PREFIX`] bytes of `batch` as the broker writes them on append: the
/// base offset and partition leader epoch assigned (both outside the CRC), and, with
/// `log_append_time`, the timestamp type and maxTimestamp turned into LogAppendTime as
/// Kafka does, with the CRC computed again over them and the rest of `batch`. `batch` is
/// left as it is: an append writes this prefix and `batch[PATCHED_PREFIX..]` side by side.
///
/// `batch` must hold exactly one batch that passed [`BatchHeader::parse`].
pub fn patched_prefix(
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    log_append_time: Option<i64>,
) -> [u8; PATCHED_PREFIX] {
    let mut prefix: [u8; PATCHED_PREFIX] = batch[..PATCHED_PREFIX]
        .try_into()
        .expect("a parsed batch holds a whole header");
    prefix[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    prefix[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now_ms) = log_append_time {
        let attributes = be_i16(&prefix, ATTRIBUTES_AT) | ATTR_LOG_APPEND_TIME;
        prefix[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
        prefix[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&prefix[CRC_START..]),
            &batch[PATCHED_PREFIX..],
        );
        prefix[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
    prefix
}

/// Rewrites the fields the broker owns on append in place: the base offset and the
/// partition leader epoch, which lie outside the CRC-covered region, so the CRC stays
/// valid. See [`patched_prefix`].
pub fn assign_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    let prefix = patched_prefix(batch, base_offset, leader_epoch, None);
    batch[..PATCHED_PREFIX].copy_from_slice(&prefix);
}

/// Turns the batch's timestamps into LogAppendTime `now_ms` in place, as Kafka does: sets
/// the timestamp-type attribute and maxTimestamp, and recomputes the CRC, which covers
/// both. See [`patched_prefix`].
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let (base_offset, epoch) = (
        be_i64(batch, BASE_OFFSET_AT),
        be_i32(batch, LEADER_EPOCH_AT),
    );
    let prefix = patched_prefix(batch, base_offset, epoch, Some(now_ms));
    batch[..PATCHED_PREFIX].copy_from_slice(&prefix);
}

/// CRC-32C's polynomial, bit-reflected.
const CRC32C_POLY: u32 = 0x82f6_3b78;

/// `a * b` modulo CRC-32C's polynomial, both bit-reflected (`1 << 31` is 1). Without
/// branches: the bits of a CRC are a coin toss each, and so would their branches be.
const fn crc32c_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut i = 0;
    while i < 32 {
        product ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        b = (b >> 1) ^ (CRC32C_POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    product
}

/// `x^(8 n)` modulo the polynomial for each byte `n` of a 32-bit length: row `k`, column
/// `n` is the shift past `n << (8 k)` bytes.
static SHIFT_BY_BYTE: [[u32; 256]; 4] = {
    let mut table = [[0; 256]; 4];
    let mut step = 1u32 << 23; // x^8: one byte
    let mut k = 0;
    while k < 4 {
        table[k][0] = 1 << 31; // 1
        let mut n = 1;
        while n < 256 {
            table[k][n] = crc32c_mul(table[k][n - 1], step);
            n += 1;
        }
        // x^(8 * 256^(k+1)): the step of the next row.
        step = crc32c_mul(table[k][255], step);
        k += 1;
    }
    table
};

/// The CRC-32C of `a ++ b` from `crc32c(a)`, `crc32c(b)` and `b`'s length, as zlib's
/// `crc32_combine`: `crc_a` times `x^(8 len_b)`, plus `crc_b`. A few table lookups and
/// multiplications, where the `crc32c` crate's combine squares 32×32 matrices (some
/// 150,000 instructions a call, more than the CRC of a 16 KiB batch itself).
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u32) -> u32 {
    let mut shift = 1u32 << 31; // 1
    for (k, row) in SHIFT_BY_BYTE.iter().enumerate() {
        let byte = (len_b >> (8 * k)) & 0xff;
        if byte != 0 {
            shift = crc32c_mul(row[byte as usize], shift);
        }
    }
    crc32c_mul(shift, crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Compression, RecordInput, encode_batch};

    #[test]
    fn combined_crcs_are_the_crc_of_the_joined_bytes() {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for (a, b) in [
            (0, 0),
            (0, 5),
            (40, 0),
            (40, 1),
            (40, 1000),
            (1, 16_384),
            (3, 65_000),
            (7, 69_000),
        ] {
            let (left, right) = (&bytes[..a], &bytes[a..a + b]);
            let combined = crc32c_combine(crc32c::crc32c(left), crc32c::crc32c(right), b as u32);
            assert_eq!(combined, crc32c::crc32c(&bytes[..a + b]), "{a} + {b}");
        }
        // Lengths past what the bytes above hold, against the crc32c crate's combine.
        for len_b in [1 << 24, (1 << 24) + 3, u32::MAX] {
            let (a, b) = (0x1234_5678, 0x9abc_def0);
            let reference = crc32c::crc32c_combine(a, b, len_b as usize);
            assert_eq!(crc32c_combine(a, b, len_b), reference, "{len_b}");
        }
    }

    fn sample() -> Vec<u8> {
        let records = vec![
            RecordInput::new(Some(b"k1".to_vec()), Some(b"v1".to_vec()), 10),
            RecordInput::new(None, Some(b"v2".to_vec()), 12),
        ];
        encode_batch(&records, Compression::None).unwrap().to_vec()
    }

    #[test]
    fn parses_and_validates_an_encoded_batch() {
        let bytes = sample();
        let h = BatchHeader::validate(&bytes).unwrap();
        assert_eq!(h.size(), bytes.len());
        assert_eq!(h.base_offset(), 0);
        assert_eq!(h.last_offset_delta(), 1);
        assert_eq!(h.record_count(), 2);
        assert_eq!(h.max_timestamp(), 12);
        assert_eq!(h.magic(), 2);
    }

    #[test]
    fn refuses_bad_crc_magic_and_length() {
        let mut bytes = sample();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        assert!(matches!(
            BatchHeader::validate(&bytes),
            Err(ProtocolError::CrcMismatch { .. })
        ));
        let mut bytes = sample();
        bytes[MAGIC_AT] = 1;
        assert_eq!(
            BatchHeader::validate(&bytes).unwrap_err(),
            ProtocolError::UnsupportedMagic(1)
        );
        let bytes = sample();
        assert!(matches!(
            BatchHeader::validate(&bytes[..bytes.len() - 3]),
            Err(ProtocolError::Truncated { .. })
        ));
        let mut bytes = sample();
        bytes[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&5i32.to_be_bytes());
        assert!(matches!(
            BatchHeader::validate(&bytes),
            Err(ProtocolError::InvalidLength { .. })
        ));
    }

    #[test]
    fn refuses_impossible_record_counts() {
        let mut bytes = sample();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            ProtocolError::InvalidCounts
        );
        let mut bytes = sample();
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&1000i32.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            ProtocolError::InvalidCounts
        );
        let mut bytes = sample();
        assign_offsets(&mut bytes, i64::MAX, 0);
        assert_eq!(
            BatchHeader::parse(&bytes).unwrap_err(),
            ProtocolError::InvalidCounts
        );
    }

    #[test]
    fn patching_offsets_keeps_the_crc_valid() {
        let mut bytes = sample();
        assign_offsets(&mut bytes, 1234, 7);
        let h = BatchHeader::validate(&bytes).unwrap();
        assert_eq!(h.base_offset(), 1234);
        assert_eq!(h.last_offset(), 1235);
        assert_eq!(h.partition_leader_epoch(), 7);
    }

    #[test]
    fn log_append_time_rewrites_the_crc() {
        let mut bytes = sample();
        set_log_append_time(&mut bytes, 99_000);
        let h = BatchHeader::validate(&bytes).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp(), 99_000);
    }

    #[test]
    fn the_patched_prefix_leaves_the_batch_alone_and_matches_a_patch_in_place() {
        let bytes = sample();
        for log_append_time in [None, Some(99_000)] {
            let prefix = patched_prefix(&bytes, 1234, 7, log_append_time);
            assert_eq!(bytes, sample(), "the batch itself is not changed");
            let mut patched = sample();
            assign_offsets(&mut patched, 1234, 7);
            if let Some(now) = log_append_time {
                set_log_append_time(&mut patched, now);
            }
            assert_eq!(prefix[..], patched[..PATCHED_PREFIX]);
            let mut joined = prefix.to_vec();
            joined.extend_from_slice(&bytes[PATCHED_PREFIX..]);
            let h = BatchHeader::validate(&joined).unwrap();
            assert_eq!(h.base_offset(), 1234);
            assert_eq!(h.is_log_append_time(), log_append_time.is_some());
        }
    }

    #[test]
    fn iterates_concatenated_batches() {
        let mut both = sample();
        let mut second = sample();
        assign_offsets(&mut second, 2, 0);
        both.extend_from_slice(&second);
        let offsets: Vec<i64> = BatchIter::new(&both)
            .map(|h| h.unwrap().base_offset())
            .collect();
        assert_eq!(offsets, vec![0, 2]);
    }
}
