//! The servers and the broker's life cycle.
//!
//! - [`grpc`]: the native API (`fjord.v1.Fjord`).
//! - [`http`]: `/health` and `/metrics`.
//! - [`kafka`]: the Kafka wire protocol.
//! - [`metrics`]: the Prometheus metrics.
//!
//! [`Broker::start`] opens the topics, binds the listeners and starts the background
//! work (retention, the cleaner, recovery-point checkpoints, the flush.ms policy);
//! [`BrokerHandle::shutdown`] stops accepting, lets in-flight requests finish, and closes
//! every log cleanly (flush, checkpoint, clean-shutdown marker).

pub mod grpc;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod produce_stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fjord_protocol::http2;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{TopicError, TopicManager};
use crate::config::{BrokerConfig, ConfigError};
use crate::storage::{Cleaner, CleanerConfig, SystemClock};

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Topics(#[from] TopicError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Server(String),
}

/// How long a graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// A running broker.
pub struct BrokerHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub kafka_addr: SocketAddr,
    topics: Arc<TopicManager>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), BrokerError>>>,
    background: Vec<JoinHandle<()>>,
    cleaner: Option<crate::storage::cleaner::CleanerHandle>,
}

/// Starts brokers. See the module docs.
pub struct Broker;

async fn bind(addr: &str) -> Result<TcpListener, BrokerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Resolves when the broker starts shutting down.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

/// Runs `work` on every partition every `interval` on a blocking thread, until shutdown.
fn every(
    interval: Duration,
    topics: Arc<TopicManager>,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
    work: fn(&crate::partition::Partition) -> Result<(), crate::storage::StorageError>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let topics = topics.clone();
            let done = tokio::task::spawn_blocking(move || {
                for partition in topics.all_partitions() {
                    if partition.is_deleted() {
                        continue;
                    }
                    if let Err(e) = work(&partition) {
                        let (topic, id) = (partition.topic(), partition.id());
                        tracing::warn!(topic, partition = id, error = %e, "{what} failed");
                    }
                }
            });
            let _ = done.await;
        }
    })
}

impl Broker {
    /// Opens the data directory and starts serving. Addresses may use port 0.
    pub async fn start(config: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        let defaults = config.topic_defaults()?;
        let data_dir = config.data_dir.clone();
        let partitions = config.num_partitions;
        let topics = tokio::task::spawn_blocking(move || {
            TopicManager::open(&data_dir, defaults, partitions, Arc::new(SystemClock))
        })
        .await
        .map_err(|e| BrokerError::Server(e.to_string()))??;
        let topics = Arc::new(topics);
        let assignor =
            crate::group::Assignor::parse(&config.group_consumer_assignor).ok_or_else(|| {
                ConfigError::InvalidValue {
                    key: "group.consumer.assignor".into(),
                    value: config.group_consumer_assignor.clone(),
                    reason: "expected range or uniform".into(),
                }
            })?;
        let group_config = crate::group::GroupConfig {
            session_timeout_ms: config.group_consumer_session_timeout_ms,
            heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms,
            assignor,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms.max(0),
        };
        let offsets_partitions = config.offsets_topic_num_partitions;
        let group_topics = topics.clone();
        let groups = tokio::task::spawn_blocking(move || {
            crate::group::coordinator::Coordinator::start(
                group_topics,
                offsets_partitions,
                group_config,
                Arc::new(SystemClock),
            )
        })
        .await
        .map_err(|e| BrokerError::Server(e.to_string()))?
        .map_err(|e| BrokerError::Server(format!("cannot load consumer groups: {e}")))?;
        let groups = Arc::new(groups);
        let grpc_listener = bind(&config.grpc_addr).await?;
        let http_listener = bind(&config.http_addr).await?;
        let kafka_listener = bind(&config.kafka_addr).await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        let kafka_addr = kafka_listener
            .local_addr()
            .map_err(|e| BrokerError::Server(e.to_string()))?;
        let advertised = config
            .advertised_kafka_addr
            .clone()
            .unwrap_or_else(|| kafka_addr.to_string());
        let (advertised_host, advertised_port) = advertised
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
            .ok_or_else(|| ConfigError::InvalidValue {
                key: "advertised.kafka.addr".into(),
                value: advertised.clone(),
                reason: "expected host:port".into(),
            })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(metrics::Metrics::default());

        let cleaner = Arc::new(Cleaner::new(CleanerConfig {
            dedupe_buffer_bytes: config.log_cleaner_dedupe_buffer_size,
            backoff_ms: config.log_cleaner_backoff_ms,
        }));
        let cleaner_stats = cleaner.stats();
        let cleaned = topics.clone();
        let cleaner_handle = cleaner.spawn(move || {
            cleaned
                .all_partitions()
                .into_iter()
                .filter(|p| !p.is_deleted() && p.log().config().cleanup_policy.compact)
                .map(|p| p.shared_log())
                .collect()
        });

        let service = grpc::FjordService {
            topics: topics.clone(),
            groups: groups.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
        };
        let mut grpc_shutdown = shutdown_rx.clone();
        let grpc = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .initial_stream_window_size(http2::STREAM_WINDOW_BYTES)
                .initial_connection_window_size(http2::CONNECTION_WINDOW_BYTES)
                .max_frame_size(http2::FRAME_BYTES_MAX)
                .add_service(
                    fjord_protocol::v1::fjord_server::FjordServer::new(service)
                        .max_decoding_message_size(grpc::REQUEST_BYTES_MAX)
                        .max_encoding_message_size(grpc::REQUEST_BYTES_MAX),
                )
                .serve_with_incoming_shutdown(
                    // TCP_NODELAY: without it Nagle holds each response's small trailing
                    // frame until the client's delayed ACK, ~40 ms per round trip.
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                    async move {
                        let _ = grpc_shutdown.wait_for(|&stop| stop).await;
                    },
                )
                .await
                .map_err(|e| BrokerError::Server(e.to_string()))
        });
        let producer_ids = kafka::init_producer_id::ProducerIds::open(&config.data_dir)
            .map_err(|e| BrokerError::Server(format!("cannot load producer ids: {e}")))?;
        let kafka_service = Arc::new(kafka::KafkaService {
            topics: topics.clone(),
            groups: groups.clone(),
            producer_ids: Arc::new(producer_ids),
            metrics: metrics.clone(),
            shutdown: shutdown_rx.clone(),
            node_id: config.node_id as i32,
            advertised_host,
            advertised_port: i32::from(advertised_port),
            request_bytes_max: config.socket_request_max_bytes,
        });
        let kafka = tokio::spawn(kafka::serve(kafka_listener, kafka_service));
        let router = http::router(http::HttpState {
            topics: topics.clone(),
            metrics,
            cleaner: cleaner_stats,
            groups,
        });
        let mut http_shutdown = shutdown_rx.clone();
        let http = tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_shutdown.wait_for(|&stop| stop).await;
                })
                .await
                .map_err(|e| BrokerError::Server(e.to_string()))
        });

        let background = vec![
            every(
                Duration::from_millis(config.log_retention_check_interval_ms),
                topics.clone(),
                shutdown_rx.clone(),
                "retention",
                |p| p.log_mut().apply_retention().map(|_| ()),
            ),
            every(
                Duration::from_millis(config.log_flush_offset_checkpoint_interval_ms),
                topics.clone(),
                shutdown_rx.clone(),
                "recovery-point checkpoint",
                |p| p.log().checkpoint(),
            ),
            every(
                Duration::from_millis(config.log_flush_scheduler_interval_ms),
                topics.clone(),
                shutdown_rx.clone(),
                "flush",
                |p| p.flush_if_due(),
            ),
        ];
        let data_dir = config.data_dir.display();
        tracing::info!(%grpc_addr, %http_addr, %kafka_addr, %data_dir, "fjord-broker listening");
        Ok(BrokerHandle {
            grpc_addr,
            http_addr,
            kafka_addr,
            topics,
            shutdown,
            servers: vec![grpc, http, kafka],
            background,
            cleaner: Some(cleaner_handle),
        })
    }
}

impl BrokerHandle {
    pub fn topics(&self) -> &Arc<TopicManager> {
        &self.topics
    }

    /// Stops accepting, lets in-flight requests finish, then closes every log cleanly.
    pub async fn shutdown(mut self) -> Result<(), BrokerError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for mut server in self.servers.drain(..) {
            // In-flight requests get a bounded time to finish; a connection that never
            // drains must not keep the logs from closing cleanly.
            match tokio::time::timeout(SHUTDOWN_DRAIN_MAX, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => result = Err(e),
                Ok(Err(e)) => result = Err(BrokerError::Server(e.to_string())),
                Err(_) => {
                    tracing::warn!("connections still open after the drain time; closing them");
                    server.abort();
                }
            }
        }
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        if let Some(cleaner) = self.cleaner.take() {
            tokio::task::spawn_blocking(move || cleaner.shutdown())
                .await
                .map_err(|e| BrokerError::Server(e.to_string()))?;
        }
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || topics.close_all())
            .await
            .map_err(|e| BrokerError::Server(e.to_string()))??;
        tracing::info!("fjord-broker stopped cleanly");
        result
    }
}
