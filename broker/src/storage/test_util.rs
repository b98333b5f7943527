//! Helpers shared by the storage tests.

use fjord_protocol::BatchHeader;
use fjord_protocol::codec::{DecodedRecord, decode_records};

use super::{Log, ReadLimit};

/// Every record at or after `from` (and the log start), reading with a `max_bytes` that
/// varies with the offset so that reads cut at many different batch boundaries.
pub fn read_from(log: &Log, from: i64) -> Vec<DecodedRecord> {
    let mut out = Vec::new();
    let from = from.max(log.log_start_offset());
    let mut offset = from;
    while offset < log.log_end_offset() {
        let max_bytes = 1 + (offset as usize * 37) % 3000;
        let result = log.read(offset, max_bytes, ReadLimit::LogEnd).unwrap();
        if result.records.is_empty() {
            break;
        }
        let mut rest = &result.records[..];
        while !rest.is_empty() {
            let header = BatchHeader::validate(rest).unwrap();
            out.extend(
                decode_records(header.as_bytes())
                    .unwrap()
                    .into_iter()
                    .filter(|r| r.offset >= offset && r.offset >= from),
            );
            offset = header.next_offset();
            rest = &rest[header.size()..];
        }
    }
    out
}
