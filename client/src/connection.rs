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

/// Opens the streaming call `path` on `channel` with a request body of gRPC frames built
/// by the caller (`body` yields each message already length-prefixed, in as many pieces as
/// it likes: sent as they are, not copied into one message buffer), and its answers read
/// with `decoder`, within the same limits as [`raw_client`]'s calls.
pub(crate) async fn raw_streaming<B, D>(
    channel: &Channel,
    path: &'static str,
    body: B,
    decoder: D,
) -> std::result::Result<tonic::Streaming<D::Item>, tonic::Status>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    D: tonic::codec::Decoder<Error = tonic::Status> + Send + 'static,
{
    use tonic::client::GrpcService;
    use tonic::codegen::http::{self, header};
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| GrpcService::<tonic::body::Body>::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    // What tonic's own client sends: its channel adds the scheme, host and user agent.
    let mut request = http::Request::new(tonic::body::Body::new(body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let response = GrpcService::call(&mut channel, request)
        .await
        .map_err(|e| tonic::Status::from_error(e.into()))?;
    // As tonic's client reads an answer: a status in the headers (trailers only) ends
    // the call at once; the broker compresses no answers.
    let status_code = response.status();
    let (parts, body) = response.into_parts();
    match tonic::Status::from_header_map(&parts.headers) {
        Some(status) if status.code() != tonic::Code::Ok => Err(status),
        Some(_) => Ok(tonic::Streaming::new_empty(decoder, body)),
        None => Ok(tonic::Streaming::new_response(
            decoder,
            body,
            status_code,
            None,
            Some(MAX_RESPONSE_BYTES),
        )),
    }
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
