//! [`ProduceParts`]: a `fjord.v1.ProduceRequest` whose records are several batches,
//! encoded back to back straight into the gRPC message, without first being joined into
//! one buffer (a copy of every byte produced).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};

use crate::v1;

/// Encodes exactly as [`v1::ProduceRequest`] with `records` the batches joined, so the
/// broker reads it as one. Only for sending: decoding one skips every field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceParts {
    pub topic: String,
    pub partition: u32,
    /// A [`v1::Acks`] value.
    pub acks: i32,
    /// Whole RecordBatch v2 batches, in order.
    pub records: Vec<Bytes>,
}

/// The field numbers of `ProduceRequest`.
const TOPIC: u32 = 1;
const PARTITION: u32 = 2;
const ACKS: u32 = 3;
const RECORDS: u32 = 4;

impl ProduceParts {
    fn records_len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }

    /// Every field up to the records' bytes: the fields, then the records' key and length.
    fn encode_head(&self, buf: &mut impl BufMut) {
        // proto3: fields at their default value are not written.
        if !self.topic.is_empty() {
            encoding::string::encode(TOPIC, &self.topic, buf);
        }
        if self.partition != 0 {
            encoding::uint32::encode(PARTITION, &self.partition, buf);
        }
        if self.acks != 0 {
            encoding::int32::encode(ACKS, &self.acks, buf);
        }
        let len = self.records_len();
        if len != 0 {
            encoding::encode_key(RECORDS, WireType::LengthDelimited, buf);
            encoding::encode_varint(len as u64, buf);
        }
    }

    /// The message as a gRPC length-prefixed frame, in pieces to send one after the
    /// other: the prefix (uncompressed, the message's length) and the fields before the
    /// records, then the records' batches themselves, not copied.
    pub fn grpc_frame(&self) -> impl Iterator<Item = Bytes> + '_ {
        use prost::Message;
        let mut head = BytesMut::with_capacity(GRPC_PREFIX + 64 + self.topic.len());
        head.put_u8(0);
        head.put_u32(self.encoded_len() as u32);
        self.encode_head(&mut head);
        std::iter::once(head.freeze()).chain(self.records.iter().filter(|b| !b.is_empty()).cloned())
    }
}

/// Bytes before each gRPC message: its compressed flag and its length.
const GRPC_PREFIX: usize = 5;

impl prost::Message for ProduceParts {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.encode_head(buf);
        for batch in &self.records {
            buf.put_slice(batch);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        let mut n = 0;
        if !self.topic.is_empty() {
            n += encoding::string::encoded_len(TOPIC, &self.topic);
        }
        if self.partition != 0 {
            n += encoding::uint32::encoded_len(PARTITION, &self.partition);
        }
        if self.acks != 0 {
            n += encoding::int32::encoded_len(ACKS, &self.acks);
        }
        let len = self.records_len();
        if len != 0 {
            n += encoding::key_len(RECORDS) + encoding::encoded_len_varint(len as u64) + len;
        }
        n
    }

    fn clear(&mut self) {
        *self = ProduceParts::default();
    }
}

impl From<ProduceParts> for v1::ProduceRequest {
    fn from(parts: ProduceParts) -> Self {
        let records_len = parts.records_len();
        let mut records = bytes::BytesMut::with_capacity(records_len);
        for batch in &parts.records {
            records.extend_from_slice(batch);
        }
        v1::ProduceRequest {
            topic: parts.topic,
            partition: parts.partition,
            acks: parts.acks,
            records: records.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encodes_as_the_joined_request() {
        let cases = [
            ProduceParts {
                topic: "orders".into(),
                partition: 3,
                acks: v1::Acks::All as i32,
                records: vec![
                    Bytes::from(vec![1u8; 300]),
                    Bytes::from_static(b"x"),
                    Bytes::from(vec![7u8; 70_000]),
                ],
            },
            // Defaults are left out, as prost does; no records at all.
            ProduceParts::default(),
            ProduceParts {
                topic: "t".into(),
                records: vec![Bytes::new(), Bytes::from_static(b"ab")],
                ..ProduceParts::default()
            },
        ];
        for parts in cases {
            let joined = v1::ProduceRequest::from(parts.clone());
            assert_eq!(parts.encode_to_vec(), joined.encode_to_vec());
            assert_eq!(parts.encoded_len(), joined.encoded_len());
            let decoded = v1::ProduceRequest::decode(&parts.encode_to_vec()[..]).unwrap();
            assert_eq!(decoded, joined);
            // As a gRPC frame: the length prefix, then the message, in pieces.
            let frame: Vec<u8> = parts.grpc_frame().flatten().collect();
            let message = joined.encode_to_vec();
            assert_eq!(frame[0], 0, "not compressed");
            assert_eq!(&frame[1..5], &(message.len() as u32).to_be_bytes());
            assert_eq!(&frame[5..], &message[..]);
        }
    }
}
