//! Prometheus metrics (`/metrics`), with the `prometheus-client` crate. Counters are
//! updated on the request path; per-partition gauges are read from the logs at scrape.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;

use crate::cluster::TopicManager;
use crate::group::coordinator::Coordinator;
use crate::storage::CleanerStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupPartitionLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

/// The broker's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    produced_bytes: Family<TopicLabels, Counter>,
    produced_records: Family<TopicLabels, Counter>,
    fetched_bytes: Family<TopicLabels, Counter>,
    log_start_offset: Family<PartitionLabels, Gauge>,
    high_watermark: Family<PartitionLabels, Gauge>,
    log_end_offset: Family<PartitionLabels, Gauge>,
    size_bytes: Family<PartitionLabels, Gauge>,
    segments: Family<PartitionLabels, Gauge>,
    cleaner_bytes_read: Counter,
    cleaner_bytes_written: Counter,
    cleaner_records_removed: Counter,
    /// One scrape at a time (a render clears and refills the gauge families).
    render_lock: std::sync::Mutex<()>,
}

impl Metrics {
    pub fn produced(&self, topic: &str, bytes: u64, records: i64) {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        self.produced_bytes.get_or_create(&labels).inc_by(bytes);
        self.produced_records
            .get_or_create(&labels)
            .inc_by(records.max(0) as u64);
    }

    pub fn fetched(&self, topic: &str, bytes: u64) {
        let labels = TopicLabels {
            topic: topic.to_owned(),
        };
        self.fetched_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// The Prometheus text exposition, with gauges read now.
    pub fn render(
        &self,
        topics: &TopicManager,
        cleaner: &CleanerStats,
        groups: &Coordinator,
    ) -> String {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        for family in [
            &self.log_start_offset,
            &self.high_watermark,
            &self.log_end_offset,
            &self.size_bytes,
            &self.segments,
        ] {
            family.clear();
        }
        for partition in topics.all_partitions() {
            let labels = PartitionLabels {
                topic: partition.topic().to_owned(),
                partition: partition.id().to_string(),
            };
            let log = partition.log();
            self.log_start_offset
                .get_or_create(&labels)
                .set(log.log_start_offset());
            self.high_watermark
                .get_or_create(&labels)
                .set(log.high_watermark());
            self.log_end_offset
                .get_or_create(&labels)
                .set(log.log_end_offset());
            self.size_bytes
                .get_or_create(&labels)
                .set(log.size_bytes() as i64);
            self.segments
                .get_or_create(&labels)
                .set(log.segments().len() as i64);
        }
        let sync = |counter: &Counter, value: u64| {
            let now = counter.get();
            if value > now {
                counter.inc_by(value - now);
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        sync(&self.cleaner_bytes_read, cleaner.bytes_read.load(Relaxed));
        sync(
            &self.cleaner_bytes_written,
            cleaner.bytes_written.load(Relaxed),
        );
        sync(
            &self.cleaner_records_removed,
            cleaner.records_removed.load(Relaxed),
        );

        let mut registry = Registry::with_prefix("fjord");
        registry.register(
            "produce_bytes",
            "Record batch bytes appended",
            self.produced_bytes.clone(),
        );
        registry.register(
            "produce_records",
            "Records appended",
            self.produced_records.clone(),
        );
        registry.register(
            "fetch_bytes",
            "Record batch bytes served",
            self.fetched_bytes.clone(),
        );
        registry.register(
            "partition_log_start_offset",
            "Log start offset",
            self.log_start_offset.clone(),
        );
        registry.register(
            "partition_high_watermark",
            "High watermark",
            self.high_watermark.clone(),
        );
        registry.register(
            "partition_log_end_offset",
            "Log end offset",
            self.log_end_offset.clone(),
        );
        registry.register(
            "partition_size_bytes",
            "Bytes on disk",
            self.size_bytes.clone(),
        );
        registry.register("partition_segments", "Segments", self.segments.clone());
        registry.register(
            "cleaner_read_bytes",
            "Bytes read by the cleaner",
            self.cleaner_bytes_read.clone(),
        );
        registry.register(
            "cleaner_written_bytes",
            "Bytes written by the cleaner",
            self.cleaner_bytes_written.clone(),
        );
        registry.register(
            "cleaner_removed_records",
            "Records compacted away",
            self.cleaner_records_removed.clone(),
        );
        let dirty = Gauge::<f64, AtomicU64>::default();
        dirty.set(cleaner.last_dirty_ratio());
        registry.register(
            "cleaner_dirty_ratio",
            "Dirty ratio of the last log the cleaner looked at",
            dirty,
        );
        let lag_records = Family::<GroupPartitionLabels, Gauge>::default();
        let lag_seconds = Family::<GroupPartitionLabels, Gauge<f64, AtomicU64>>::default();
        for (group, partitions) in groups.all_lag() {
            for lag in partitions {
                let labels = GroupPartitionLabels {
                    group: group.clone(),
                    topic: lag.tp.topic,
                    partition: lag.tp.partition.to_string(),
                };
                lag_records.get_or_create(&labels).set(lag.lag_records);
                lag_seconds
                    .get_or_create(&labels)
                    .set(lag.lag_ms as f64 / 1000.0);
            }
        }
        registry.register(
            "consumer_group_lag_records",
            "Records between a group's committed offset and the high watermark",
            lag_records,
        );
        registry.register(
            "consumer_group_lag_seconds",
            "Seconds the newest record's timestamp is ahead of a group's committed position",
            lag_seconds,
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

pub type SharedMetrics = Arc<Metrics>;
