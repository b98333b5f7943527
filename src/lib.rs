//! Fjord, embedded: re-exports the broker, protocol and client crates so an application or
//! a test can use Fjord as a library, and starts a broker inside the program:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = fjord::BrokerConfig::embedded("./data".as_ref(), "127.0.0.1:0", "127.0.0.1:0");
//! let broker = fjord::Broker::start(config).await?;
//! println!("gRPC on {}", broker.grpc_addr);
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

pub use fjord_broker as broker;
pub use fjord_broker::{Broker, BrokerConfig, BrokerHandle};
pub use fjord_client as client;
pub use fjord_protocol as protocol;
