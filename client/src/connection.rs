//! Opening the gRPC channel to a broker.

use std::time::Duration;

use fjord_protocol::http2::{CONNECTION_WINDOW_BYTES, FRAME_BYTES_MAX, STREAM_WINDOW_BYTES};
use fjord_protocol::v1::fjord_client::FjordClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, Result, error_chain};

/// The generated gRPC client over one channel (cheap to clone: clones share the
/// connection).
pub type GrpcClient = FjordClient<Channel>;

/// How long opening the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest response accepted (fetches are capped at 64 MiB by the broker).
const MAX_RESPONSE_BYTES: usize = 80 * 1024 * 1024;
/// How long any one call may take: above the broker's longest long poll (60 s), so a
/// hung broker or a half-open connection fails the call instead of blocking it forever.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// HTTP/2 pings find a dead connection even when no call is running.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// Connects to `addr` (`host:port`, or a `http://` URI), eagerly: a broker that is not
/// running is a [`ClientError::Connect`] naming the address. A connection that breaks
/// later is re-established by the channel on the next call.
pub async fn connect(addr: &str) -> Result<GrpcClient> {
    Ok(grpc_client(connect_channel(addr).await?))
}

/// The generated client over `channel`.
pub fn grpc_client(channel: Channel) -> GrpcClient {
    FjordClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A call not in the generated client (the producer's `ProduceStream` with its own
/// message type), over `channel`, with the same limits.
pub fn raw_client(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// [`connect`]'s channel.
pub async fn connect_channel(addr: &str) -> Result<Channel> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::InvalidAddress {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX);
    endpoint.connect().await.map_err(|e| ClientError::Connect {
        addr: addr.to_string(),
        reason: connect_reason(&e),
    })
}

/// The most telling cause of a failed connect: the innermost I/O error if there is one
/// ("Connection refused (os error 111)"), else the whole chain.
fn connect_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut io = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if let Some(err) = cause.downcast_ref::<std::io::Error>() {
            io = Some(err.to_string());
        }
        source = cause.source();
    }
    io.unwrap_or_else(|| error_chain(e))
}
