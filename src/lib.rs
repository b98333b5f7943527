//! Fjord, embedded: re-exports the broker, protocol and client crates so an application or
//! a test can use Fjord as a library.

pub use fjord_broker as broker;
pub use fjord_client as client;
pub use fjord_protocol as protocol;
