//! Fjord's Rust client: producer, consumer and admin over gRPC.
//!
//! Not built yet: the gRPC API arrives with the single-node broker (issue 3). Until then this
//! crate only re-exports the record codec that its producer will use.

pub use fjord_protocol::codec::{Compression, RecordInput};
