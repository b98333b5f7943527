//! Fjord's wire formats.
//!
//! - [`batch`]: a zero-copy view of one Kafka RecordBatch v2 header, validation (magic,
//!   length, CRC-32C) and the in-place patches the broker applies on append (base offset,
//!   partition leader epoch, LogAppendTime). No record is decoded here.
//! - [`codec`]: building a batch from records and decoding its records, with every Kafka
//!   compression codec, on top of the `kafka-protocol` crate's record types.
//!
//! **Invariant:** this crate does no I/O.

pub mod batch;
pub mod codec;

pub use batch::{BatchHeader, BatchIter, ProtocolError};
pub use codec::{Compression, DecodedRecord, RecordInput, decode_records, encode_batch};
