//! The broker process through its gRPC API: persistence across SIGTERM and kill -9,
//! long polls, retention, compaction, live config changes, bad input, HTTP, embedding.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fjord::protocol::v1::{self, Acks};

use crate::support::{BrokerProcess, batch, create_topic, eventually, produce, read_all};

const FAST: &[&str] = &[
    "--log-retention-check-interval-ms",
    "100",
    "--log-cleaner-backoff-ms",
    "100",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_records_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "orders", 3, &[("retention.ms", "3600000")]).await;
    for p in 0..3 {
        let r = produce(
            &mut client,
            "orders",
            p,
            batch(&[(Some("k"), "a"), (None, "b")]),
            Acks::Leader,
        )
        .await;
        assert_eq!((r.base_offset, r.last_offset), (0, 1));
    }
    let r = produce(
        &mut client,
        "orders",
        1,
        batch(&[(Some("k"), "c")]),
        Acks::All,
    )
    .await;
    assert_eq!(r.base_offset, 2);
    assert!(broker.stop(), "SIGTERM exits 0");
    for p in 0..3 {
        assert!(
            dir.path()
                .join(format!("orders-{p}/clean-shutdown"))
                .exists()
        );
    }
    let broker = broker.restart();
    let mut client = broker.client().await;
    let topic = client
        .describe_topic(v1::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topic.partitions.len(), 3);
    assert_eq!(topic.partitions[1].high_watermark, 3);
    assert!(
        topic
            .configs
            .iter()
            .any(|c| c.key == "retention.ms" && c.value == "3600000")
    );
    let records = read_all(&mut client, "orders", 1, 0).await;
    let values: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(values, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_acks_all_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "payments", 1, &[("segment.bytes", "4096")]).await;
    // A steady acks=all producer; the broker is killed while it runs.
    let producer_addr = broker.grpc_addr;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let producer = tokio::spawn(async move {
        let mut client = v1::fjord_client::FjordClient::connect(format!("http://{producer_addr}"))
            .await
            .unwrap();
        for i in 0.. {
            let value = format!("payment-{i}");
            let request = v1::ProduceRequest {
                topic: "payments".into(),
                partition: 0,
                acks: Acks::All as i32,
                records: batch(&[(Some("id"), &value)]).into(),
            };
            match client.produce(request).await {
                Ok(r) => {
                    if acked_tx.send((r.into_inner().base_offset, value)).is_err() {
                        return;
                    }
                }
                Err(_) => return, // the broker is gone
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 300 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    broker.kill();
    let _ = producer.await;
    while let Ok(a) = acked_rx.try_recv() {
        acked.push(a);
    }
    let broker = broker.restart();
    let mut client = broker.client().await;
    let records = read_all(&mut client, "payments", 0, 0).await;
    let by_offset: BTreeMap<i64, &str> = records.iter().map(|r| (r.0, r.2.as_str())).collect();
    for (offset, value) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(&value.as_str()),
            "acknowledged record at {offset}"
        );
    }
    let mut values: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    let total = values.len();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), total, "no record twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_waits_without_spinning_and_wakes_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "events", 1, &[]).await;
    let cpu_before = cpu_ticks(broker.pid());
    let started = Instant::now();
    let mut waiter = broker.client().await;
    let poll = tokio::spawn(async move {
        waiter
            .fetch(v1::FetchRequest {
                topic: "events".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                max_wait_ms: 30_000,
                min_bytes: 1,
            })
            .await
            .unwrap()
            .into_inner()
    });
    // Let the poll sit at the log end for a while: the broker must stay idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!poll.is_finished(), "the fetch waits for data");
    let idle_ticks = cpu_ticks(broker.pid()) - cpu_before;
    produce(
        &mut client,
        "events",
        0,
        batch(&[(None, "hello")]),
        Acks::Leader,
    )
    .await;
    let response = poll.await.unwrap();
    assert!(!response.records.is_empty());
    assert_eq!(response.next_offset, 1);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "woken by the append, not the timeout"
    );
    // 1.5 s with a waiting fetch; a busy loop would burn ~150 ticks (100 per second).
    assert!(
        idle_ticks < 40,
        "broker CPU while a fetch waits: {idle_ticks} ticks"
    );
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_stream_tails_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "tail", 1, &[]).await;
    produce(
        &mut client,
        "tail",
        0,
        batch(&[(None, "first")]),
        Acks::Leader,
    )
    .await;
    let mut stream = client
        .subscribe(v1::SubscribeRequest {
            topic: "tail".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.next_offset, 1);
    assert!(!first.records.is_empty());
    // Caught up: an answer without records says so, with the high watermark.
    let at_end = stream.message().await.unwrap().unwrap();
    assert!(at_end.records.is_empty(), "{at_end:?}");
    assert_eq!((at_end.next_offset, at_end.high_watermark), (1, 1));
    produce(
        &mut client,
        "tail",
        0,
        batch(&[(None, "second")]),
        Acks::Leader,
    )
    .await;
    let second = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.next_offset, 2);
    assert_eq!(second.high_watermark, 2);
    assert!(!second.records.is_empty());
    let at_end = stream.message().await.unwrap().unwrap();
    assert!(at_end.records.is_empty(), "{at_end:?}");
    assert_eq!((at_end.next_offset, at_end.high_watermark), (2, 2));
    // A subscription does not hold up a graceful shutdown: it ends, the broker exits 0.
    let mut broker = broker;
    assert!(broker.stop());
    let end = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

async fn earliest(
    client: &mut v1::fjord_client::FjordClient<tonic::transport::Channel>,
    topic: &str,
) -> i64 {
    client
        .list_offsets(v1::ListOffsetsRequest {
            topic: topic.into(),
            partitions: vec![0],
            spec: v1::OffsetSpec::Earliest as i32,
            timestamp_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .offsets[0]
        .offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_and_time_changes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), FAST);
    let mut client = broker.client().await;
    create_topic(&mut client, "logs", 1, &[("segment.bytes", "1024")]).await;
    for i in 0..60 {
        produce(
            &mut client,
            "logs",
            0,
            batch(&[(None, &format!("line {i:04} {}", "x".repeat(40)))]),
            Acks::Leader,
        )
        .await;
    }
    assert_eq!(earliest(&mut client, "logs").await, 0);
    let alter = |set: Vec<(&str, &str)>| v1::AlterTopicConfigRequest {
        name: "logs".into(),
        set: set
            .into_iter()
            .map(|(k, v)| v1::ConfigEntry {
                key: k.into(),
                value: v.into(),
            })
            .collect(),
        delete: vec![],
    };
    client
        .alter_topic_config(alter(vec![("retention.bytes", "2048")]))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "size retention", || {
        let mut c = client.clone();
        async move { earliest(&mut c, "logs").await > 0 }
    })
    .await;
    let after_size = earliest(&mut client, "logs").await;
    client
        .alter_topic_config(alter(vec![
            ("retention.bytes", "-1"),
            ("retention.ms", "1"),
        ]))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "time retention", || {
        let mut c = client.clone();
        async move { earliest(&mut c, "logs").await > after_size }
    })
    .await;
    let start = earliest(&mut client, "logs").await;
    let records = read_all(&mut client, "logs", 0, start).await;
    assert!(!records.is_empty(), "the active segment stays");
    assert_eq!(records.last().unwrap().0, 59);
    // Reading below the start is out of range, and says where the log starts.
    let err = client
        .fetch(v1::FetchRequest {
            topic: "logs".into(),
            partition: 0,
            offset: 0,
            max_bytes: 100,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    assert_eq!(
        err.metadata()
            .get("fjord-log-start-offset")
            .unwrap()
            .to_str()
            .unwrap(),
        start.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_latest_value_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), FAST);
    let mut client = broker.client().await;
    create_topic(
        &mut client,
        "profiles",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "1024"),
            ("min.cleanable.dirty.ratio", "0.01"),
        ],
    )
    .await;
    for round in 0..20 {
        for user in 0..5 {
            let value = format!("user{user}-v{round}-{}", "p".repeat(20));
            produce(
                &mut client,
                "profiles",
                0,
                batch(&[(Some(&format!("user{user}")), &value)]),
                Acks::Leader,
            )
            .await;
        }
    }
    eventually(Duration::from_secs(30), "compaction", || {
        let mut c = client.clone();
        async move { read_all(&mut c, "profiles", 0, 0).await.len() < 40 }
    })
    .await;
    let records = read_all(&mut client, "profiles", 0, 0).await;
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for (_, key, value) in &records {
        latest.insert(key.clone().unwrap(), value.clone());
    }
    for user in 0..5 {
        assert!(latest[&format!("user{user}")].starts_with(&format!("user{user}-v19-")));
    }
    let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets keep their order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "t", 2, &[("max.message.bytes", "200")]).await;
    let produce_to = |topic: &str, partition: u32, records: Vec<u8>| v1::ProduceRequest {
        topic: topic.into(),
        partition,
        acks: Acks::Leader as i32,
        records: records.into(),
    };
    let err = client
        .produce(produce_to("nope", 0, batch(&[(None, "x")])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());
    let err = client
        .produce(produce_to("t", 7, batch(&[(None, "x")])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("partition 7"), "{}", err.message());
    let err = client
        .produce(produce_to("t", 0, batch(&[(None, &"x".repeat(500))])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("max.message.bytes"),
        "{}",
        err.message()
    );
    let mut corrupt = batch(&[(None, "x")]);
    *corrupt.last_mut().unwrap() ^= 1;
    let err = client
        .produce(produce_to("t", 0, corrupt))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("CRC"), "{}", err.message());
    let err = client
        .produce(produce_to("t", 0, vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    for (key, value) in [
        ("retention.ms", "soon"),
        ("no.such.config", "1"),
        ("cleanup.policy", "shred"),
    ] {
        let err = client
            .create_topic(v1::CreateTopicRequest {
                name: "u".into(),
                partitions: 1,
                configs: vec![v1::ConfigEntry {
                    key: key.into(),
                    value: value.into(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(key), "{}", err.message());
    }
    for name in ["", "a/b", "..", "__internal"] {
        let err = client
            .create_topic(v1::CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                configs: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
    }
    let err = client
        .create_topic(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            configs: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = client
        .fetch(v1::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 5,
            max_bytes: 100,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    // Still serving, and nothing bad was written.
    let r = produce(&mut client, "t", 0, batch(&[(None, "fine")]), Acks::All).await;
    assert_eq!(r.base_offset, 0);
    assert_eq!(read_all(&mut client, "t", 0, 0).await.len(), 1);
    // Each refusal left a log line on the broker.
    let refused: Vec<String> = broker
        .stderr
        .try_iter()
        .filter(|line| line.contains("request refused"))
        .collect();
    assert!(refused.len() >= 10, "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("CRC")), "{refused:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "m", 1, &[]).await;
    produce(
        &mut client,
        "m",
        0,
        batch(&[(None, "x"), (None, "y")]),
        Acks::Leader,
    )
    .await;
    assert_eq!(broker.http_get("/health").trim(), "ok");
    let metrics = broker.http_get("/metrics");
    assert!(
        metrics.contains("fjord_partition_log_end_offset{topic=\"m\",partition=\"0\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fjord_produce_records_total{topic=\"m\"} 2"),
        "{metrics}"
    );
}

/// The value of the broker's "malloc settings" log line (it follows the listening line).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_settings(broker: &BrokerProcess) -> String {
    loop {
        let line = broker
            .stderr
            .recv_timeout(Duration::from_secs(30))
            .expect("a malloc settings line");
        if line.contains("malloc settings") {
            let at = line.find("glibc_tunables=").expect("its value") + 15;
            return line[at..].split_whitespace().next().unwrap().to_string();
        }
    }
}

/// A NUL-separated `/proc/<pid>/cmdline`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cmdline(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    text.split_terminator('\0').map(str::to_string).collect()
}

/// It checks the variable the broker started again with, not what glibc made of it (a
/// misspelled tunable would pass): the W1 figures in docs/BENCHMARKS.md check that.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_runs_with_its_malloc_settings_and_the_operators_win() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    // It started itself again with them: the same pid and arguments, and it serves.
    assert_eq!(
        malloc_settings(&broker),
        "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=16777216"
    );
    let args = cmdline(broker.pid());
    // Started again from /proc/self/exe, under the name it was started by.
    let started_as = crate::support::binary("fjord-broker");
    assert_eq!(args[0], started_as.to_string_lossy(), "{args:?}");
    assert_eq!(args[1..3], ["--data-dir", &*dir.path().to_string_lossy()]);
    let mut client = broker.client().await;
    create_topic(&mut client, "m", 1, &[]).await;
    drop(broker);

    let dir = tempfile::tempdir().unwrap();
    let operator = [("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000")];
    let broker = BrokerProcess::start_with_env(dir.path(), &[], &operator);
    assert_eq!(
        malloc_settings(&broker),
        "glibc.malloc.trim_threshold=1000:glibc.malloc.mmap_threshold=33554432"
    );
    let mut client = broker.client().await;
    create_topic(&mut client, "m", 1, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_embedded_in_a_program() {
    let dir = tempfile::tempdir().unwrap();
    let config = fjord::BrokerConfig::embedded(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    let broker = fjord::Broker::start(config).await.unwrap();
    let mut client = v1::fjord_client::FjordClient::connect(format!("http://{}", broker.grpc_addr))
        .await
        .unwrap();
    create_topic(&mut client, "embedded", 1, &[]).await;
    produce(
        &mut client,
        "embedded",
        0,
        batch(&[(Some("k"), "v")]),
        Acks::All,
    )
    .await;
    assert_eq!(read_all(&mut client, "embedded", 0, 0).await.len(), 1);
    drop(client);
    broker.shutdown().await.unwrap();
    assert!(dir.path().join("embedded-0/clean-shutdown").exists());
}

/// Regression: a deleted topic's log kept working after the delete, so a topic created
/// again under the same name could see the old log write into its directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_created_again_starts_empty_and_stays_so() {
    let dir = tempfile::tempdir().unwrap();
    let fast = [
        "--log-retention-check-interval-ms",
        "50",
        "--log-flush-offset-checkpoint-interval-ms",
        "50",
    ];
    let mut broker = BrokerProcess::start(dir.path(), &fast);
    let mut client = broker.client().await;
    create_topic(&mut client, "again", 1, &[("segment.bytes", "1024")]).await;
    for i in 0..30 {
        let value = format!("old-{i}-{}", "o".repeat(40));
        produce(
            &mut client,
            "again",
            0,
            batch(&[(None, &value)]),
            Acks::Leader,
        )
        .await;
    }
    client
        .delete_topic(v1::DeleteTopicRequest {
            name: "again".into(),
        })
        .await
        .unwrap();
    let err = client
        .produce(v1::ProduceRequest {
            topic: "again".into(),
            partition: 0,
            acks: Acks::All as i32,
            records: batch(&[(None, "late")]).into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    create_topic(&mut client, "again", 1, &[]).await;
    produce(&mut client, "again", 0, batch(&[(None, "new")]), Acks::All).await;
    // Background checkpoints and retention run meanwhile; none may touch the new data.
    let records = read_all(&mut client, "again", 0, 0).await;
    assert_eq!(
        records.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        ["new"]
    );
    assert!(broker.stop());
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-delete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let broker = broker.restart();
    let mut client = broker.client().await;
    let records = read_all(&mut client, "again", 0, 0).await;
    assert_eq!(
        records.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        ["new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_partitions_and_commits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &["--offsets-topic-num-partitions", "4"]);
    let mut client = broker.client().await;
    create_topic(&mut client, "orders", 4, &[]).await;
    for p in 0..4 {
        produce(
            &mut client,
            "orders",
            p,
            batch(&[(None, "a"), (None, "b"), (None, "c")]),
            Acks::Leader,
        )
        .await;
    }
    let beat =
        |member_id: &str, epoch: i32, owned: Vec<v1::GroupPartition>| v1::GroupHeartbeatRequest {
            group_id: "views".into(),
            member_id: member_id.into(),
            member_epoch: epoch,
            subscriptions: vec!["orders".into()],
            subscriptions_changed: false,
            owned,
        };
    let a = client
        .group_heartbeat(beat("", 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.assignment.len(), 4);
    let b = client
        .group_heartbeat(beat("", 0, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(b.assignment.is_empty(), "a still owns them all");
    let a = client
        .group_heartbeat(beat(&a.member_id, a.member_epoch, a.assignment.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.assignment.len(), 2, "a gives two up");
    let a = client
        .group_heartbeat(beat(&a.member_id, a.member_epoch, a.assignment.clone()))
        .await
        .unwrap()
        .into_inner();
    let b = client
        .group_heartbeat(beat(&b.member_id, b.member_epoch, vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.assignment.len(), 2);
    assert!(a.assignment.iter().all(|p| !b.assignment.contains(p)));
    // Commits: from the owner with its epoch; a stale epoch is fenced.
    let commit = |member: &v1::GroupHeartbeatResponse, epoch: i32| v1::CommitOffsetsRequest {
        group_id: "views".into(),
        member_id: member.member_id.clone(),
        member_epoch: epoch,
        offsets: member
            .assignment
            .iter()
            .map(|p| v1::OffsetCommit {
                topic: p.topic.clone(),
                partition: p.partition,
                offset: 2,
                metadata: "m".into(),
            })
            .collect(),
    };
    client
        .commit_offsets(commit(&a, a.member_epoch))
        .await
        .unwrap();
    let err = client
        .commit_offsets(commit(&b, b.member_epoch - 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.metadata().get("fjord-error").unwrap(),
        "fenced-member-epoch"
    );
    let described = client
        .describe_group(v1::DescribeGroupRequest {
            group_id: "views".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.state, "STABLE");
    assert_eq!(described.members.len(), 2);
    let lag: i64 = described.partitions.iter().map(|p| p.lag).sum();
    assert_eq!(
        lag,
        2 + 2 * 3,
        "two partitions committed at 2 of 3, two not at all"
    );
    // kill -9: the commits were fsync'd to __consumer_offsets before they were acknowledged.
    broker.kill();
    let broker = broker.restart();
    let mut client = broker.client().await;
    let fetched = client
        .fetch_offsets(v1::FetchOffsetsRequest {
            group_id: "views".into(),
            partitions: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<(String, u32, i64)> = fetched
        .offsets
        .iter()
        .map(|o| (o.topic.clone(), o.partition, o.offset))
        .collect();
    got.sort();
    let mut want: Vec<(String, u32, i64)> = a
        .assignment
        .iter()
        .map(|p| (p.topic.clone(), p.partition, 2))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let groups = client
        .list_groups(v1::ListGroupsRequest {})
        .await
        .unwrap()
        .into_inner()
        .groups;
    assert_eq!(groups, ["views"]);
    let topics = client
        .list_topics(v1::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    assert!(
        topics.iter().all(|t| t.name == "orders"),
        "internal topics are not listed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_with_calls_back_once_per_record_with_its_offset() {
    use fjord::client::{Producer, ProducerConfig, ProducerRecord};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "cb", 2, &[]).await;
    let addr = broker.grpc_addr.to_string();
    let producer = Producer::connect(&addr, ProducerConfig::default())
        .await
        .unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    for i in 0..100u32 {
        let outcomes = outcomes.clone();
        let record = ProducerRecord {
            topic: "cb".into(),
            partition: Some(1),
            value: Some(format!("v{i}").into()),
            ..ProducerRecord::default()
        };
        producer
            .send_with(record, move |result| {
                outcomes.lock().unwrap().push((i, result));
            })
            .await
            .unwrap();
    }
    // A record for a partition that does not exist fails through its callback.
    let bad = ProducerRecord {
        topic: "cb".into(),
        partition: Some(7),
        value: Some("x".into()),
        ..ProducerRecord::default()
    };
    let failed = outcomes.clone();
    producer
        .send_with(bad, move |result| {
            failed.lock().unwrap().push((u32::MAX, result));
        })
        .await
        .unwrap();
    producer.flush().await.unwrap();
    let outcomes = outcomes.lock().unwrap();
    assert_eq!(outcomes.len(), 101, "one callback per record");
    let mut offsets = BTreeMap::new();
    for (i, result) in outcomes.iter() {
        match result {
            Ok(meta) => {
                assert_eq!(meta.partition, 1);
                offsets.insert(*i, meta.offset);
            }
            Err(e) => {
                assert_eq!(*i, u32::MAX, "{e}");
                assert!(e.to_string().contains('7'), "{e}");
            }
        }
    }
    let expected: BTreeMap<u32, i64> = (0..100).map(|i| (i, i64::from(i))).collect();
    assert_eq!(offsets, expected, "in send order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_move_on_to_another_partition_when_a_batch_fills() {
    use fjord::client::{Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "spread", 4, &[]).await;
    let config = ProducerConfig {
        batch_bytes: 2048,
        linger_ms: 1000,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap();
    let sends: Vec<_> = (0..400)
        .map(|_| producer.send("spread", None, Some(vec![b'x'; 100].into()), vec![]))
        .collect();
    let mut placed = Vec::new();
    for send in sends {
        placed.push(send.await.unwrap().partition);
    }
    let used: std::collections::BTreeSet<u32> = placed.iter().copied().collect();
    // About 20 batches of 2 KiB: each full one sends the next records elsewhere.
    assert!(used.len() >= 2, "every keyless record went to {used:?}");
    // Records stick to a partition until their batch is full (about 17 of ~109 bytes in
    // 2 KiB): every run of records in one partition but the last fills a batch.
    let runs: Vec<usize> = placed.chunk_by(|a, b| a == b).map(<[u32]>::len).collect();
    let (last, full) = runs.split_last().unwrap();
    assert!(*last <= 20, "{runs:?}");
    assert!(full.iter().all(|&n| (10..=20).contains(&n)), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_producer_buffer_gets_its_room_back_from_answered_and_failed_records() {
    use fjord::client::{ClientError, Producer, ProducerConfig};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "room", 1, &[]).await;
    // 16 KiB of buffer, and a send that finds no room fails after 2 s instead of waiting.
    let config = ProducerConfig {
        buffer_memory: 16 * 1024,
        max_block_ms: 2_000,
        batch_bytes: 4096,
        linger_ms: 1,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap();
    let value = || Some(bytes::Bytes::from(vec![b'r'; 1000]));
    // 40 records to a partition that does not exist: each fails, and its room (not in
    // any batch) comes back; 40 KiB would not fit otherwise.
    for _ in 0..40 {
        let failed = producer
            .send_to_partition("room", 7, None, value(), vec![])
            .await;
        assert!(
            matches!(failed, Err(ClientError::UnknownPartition(_))),
            "{failed:?}"
        );
    }
    // 2 MiB through a 16 KiB buffer: every answered batch gives its records' room back.
    // (`send_with` returns once the record is queued, so the sends keep their order.)
    let offsets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..2000 {
        let record = fjord::client::ProducerRecord {
            topic: "room".into(),
            value: value(),
            ..Default::default()
        };
        let offsets = std::sync::Arc::clone(&offsets);
        producer
            .send_with(record, move |answer| {
                offsets
                    .lock()
                    .unwrap()
                    .push(answer.expect("answered").offset)
            })
            .await
            .expect("room came back");
    }
    producer.flush().await.unwrap();
    let offsets = offsets.lock().unwrap().clone();
    assert_eq!(offsets, (0..2000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_produce_stream_answers_in_order_and_stops_at_the_first_failure() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "s", 1, &[]).await;
    let request = |value: &str, acks: Acks| v1::ProduceRequest {
        topic: "s".into(),
        partition: 0,
        acks: acks as i32,
        records: batch(&[(None, value), (None, value)]).into(),
    };
    let mut corrupt = request("bad", Acks::Leader);
    let mut records = corrupt.records.to_vec();
    *records.last_mut().unwrap() ^= 1;
    corrupt.records = records.into();
    // All six go before any answer is read: acks=all and acks=1 mixed, the fourth corrupt.
    let requests = vec![
        request("a", Acks::All),
        request("b", Acks::Leader),
        request("c", Acks::All),
        corrupt,
        request("d", Acks::Leader),
        request("e", Acks::All),
    ];
    let mut answers = client
        .produce_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for base in [0, 2, 4] {
        let answer = answers.message().await.unwrap().expect("an answer");
        assert_eq!((answer.base_offset, answer.last_offset), (base, base + 1));
    }
    let err = answers.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("CRC"), "{}", err.message());
    assert!(
        matches!(answers.message().await, Ok(None) | Err(_)),
        "the stream ended"
    );
    // Nothing sent after the failed request was appended.
    let values: Vec<String> = read_all(&mut client, "s", 0, 0)
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(values, ["a", "a", "b", "b", "c", "c"]);
    // A new stream goes on from there; a closed request side ends the answers.
    let mut answers = client
        .produce_stream(tokio_stream::iter(vec![request("f", Acks::All)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().base_offset, 6);
    assert!(answers.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_requests_in_flight_keeps_order_when_one_fails() {
    use fjord::client::{ClientError, Producer, ProducerConfig, ProducerRecord};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "o", 1, &[("max.message.bytes", "4096")]).await;
    let config = ProducerConfig {
        batch_bytes: 1024,
        request_bytes: 1024,
        linger_ms: 0,
        max_in_flight: 5,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap();
    // A batch per request, several in flight; every 500th record is too large for the
    // topic, so its request fails between requests already sent after it, which go again
    // on a new stream.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    for i in 0..3000u32 {
        let value = if i % 500 == 250 {
            "x".repeat(10_000)
        } else {
            format!("v{i:04}-{}", "p".repeat(90))
        };
        let record = ProducerRecord {
            topic: "o".into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        };
        let outcomes = outcomes.clone();
        producer
            .send_with(record, move |r| outcomes.lock().unwrap().push((i, r)))
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    assert_eq!(outcomes.len(), 3000, "one outcome per record");
    let mut acknowledged = Vec::new();
    for (i, outcome) in outcomes {
        match outcome {
            Ok(meta) => acknowledged.push((meta.offset, i)),
            Err(e) => {
                assert_eq!(i % 500, 250, "record {i} failed: {e}");
                assert!(matches!(e, ClientError::RecordTooLarge(_)), "{e:?}");
            }
        }
    }
    acknowledged.sort();
    let good: Vec<u32> = (0..3000).filter(|i| i % 500 != 250).collect();
    let offsets: Vec<i64> = (0..good.len() as i64).collect();
    assert_eq!(
        acknowledged.iter().map(|a| a.0).collect::<Vec<_>>(),
        offsets
    );
    assert_eq!(
        acknowledged.iter().map(|a| a.1).collect::<Vec<_>>(),
        good,
        "offsets follow send order"
    );
    // The log holds each acknowledged record once, in send order.
    let values: Vec<String> = read_all(&mut client, "o", 0, 0)
        .await
        .into_iter()
        .map(|(_, _, v)| v[1..5].to_string())
        .collect();
    let expected: Vec<String> = good.iter().map(|i| format!("{i:04}")).collect();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retries_through_a_broker_restart_in_order() {
    use fjord::client::{Acks as ClientAcks, Producer, ProducerConfig, ProducerRecord};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "r", 1, &[]).await;
    let config = ProducerConfig {
        acks: ClientAcks::All,
        batch_bytes: 1024,
        request_bytes: 4096,
        retries: 1000,
        retry_backoff_ms: 20,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let send = |i: u32| {
        let outcomes = outcomes.clone();
        let record = ProducerRecord {
            topic: "r".into(),
            value: Some(format!("{i:04}").into()),
            ..ProducerRecord::default()
        };
        let producer = producer.clone();
        async move {
            producer
                .send_with(record, move |r| outcomes.lock().unwrap().push((i, r)))
                .await
                .unwrap();
        }
    };
    for i in 0..1000 {
        send(i).await;
    }
    producer.flush().await.unwrap();
    // The broker dies with the producer's stream open; what is sent meanwhile is retried
    // until the broker is back, in order, on a new stream.
    broker.kill();
    for i in 1000..2000 {
        send(i).await;
    }
    let broker = broker.restart_on_same_ports();
    producer.flush().await.unwrap();
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    outcomes.sort_by_key(|o| o.0);
    let offsets: Vec<i64> = outcomes
        .into_iter()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("record {i}: {e}")).offset)
        .collect();
    assert_eq!(offsets, (0..2000).collect::<Vec<i64>>());
    let mut client = broker.client().await;
    let values: Vec<String> = read_all(&mut client, "r", 0, 0)
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect();
    let expected: Vec<String> = (0..2000).map(|i| format!("{i:04}")).collect();
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_callback_does_not_stop_the_other_records() {
    use fjord::client::{Producer, ProducerConfig, ProducerRecord};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "p", 1, &[]).await;
    let config = ProducerConfig {
        batch_bytes: 256,
        request_bytes: 256,
        linger_ms: 0,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap();
    let answered = Arc::new(AtomicU32::new(0));
    for i in 0..500u32 {
        let record = ProducerRecord {
            topic: "p".into(),
            value: Some(format!("{i:03}-{}", "v".repeat(60)).into()),
            ..ProducerRecord::default()
        };
        let answered = answered.clone();
        producer
            .send_with(record, move |r| {
                r.unwrap();
                answered.fetch_add(1, Ordering::SeqCst);
                assert!(i % 100 != 50, "the application's callback panics");
            })
            .await
            .unwrap();
    }
    // Were a panic to take a partition's sender down, this would wait forever.
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("flush returns")
        .unwrap();
    assert_eq!(answered.load(Ordering::SeqCst), 500);
    assert_eq!(read_all(&mut client, "p", 0, 0).await.len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stops_at_a_batch_damaged_on_disk_and_delivers_nothing_twice() {
    use fjord::client::{ClientError, ConsumerConfig, Seek};
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "d", 1, &[]).await;
    let values = |batch: u32| -> Vec<String> { (0..10).map(|i| format!("b{batch}-{i}")).collect() };
    let mut first_batch_len = 0;
    for b in 0..3 {
        let v = values(b);
        let records: Vec<(Option<&str>, &str)> = v.iter().map(|s| (None, s.as_str())).collect();
        let bytes = batch(&records);
        if b == 0 {
            first_batch_len = bytes.len();
        }
        produce(&mut client, "d", 0, bytes, Acks::All).await;
    }
    // A clean stop (no recovery scan at the next start), then one flipped bit inside the
    // second batch's records: only a reader's CRC check can notice.
    assert!(broker.stop());
    let log = broker.data_dir.join("d-0").join("00000000000000000000.log");
    let mut data = std::fs::read(&log).unwrap();
    data[first_batch_len + 70] ^= 0x01;
    std::fs::write(&log, data).unwrap();
    let broker = broker.restart();
    let mut consumer = quick_consumer(&broker, ConsumerConfig::default().max_bytes).await;
    consumer.assign("d", &[0]).await.unwrap();
    consumer.seek("d", 0, Seek::Beginning).await.unwrap();
    let mut delivered = Vec::new();
    let mut errors = 0;
    // The first batch once, then the damaged one's error on every poll after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while errors < 3 {
        assert!(Instant::now() < deadline, "{delivered:?}, {errors} errors");
        match consumer.poll().await {
            Ok(records) => delivered.extend(
                records
                    .into_iter()
                    .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap()),
            ),
            Err(e) => {
                assert!(matches!(e, ClientError::Codec(_)), "{e:?}");
                errors += 1;
            }
        }
        assert!(delivered.len() <= 10, "{delivered:?}");
    }
    assert_eq!(delivered, values(0));
    assert_eq!(consumer.position("d", 0), Some(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_by_stream_one_answer_per_poll_and_a_seek_starts_over() {
    use fjord::client::Seek;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    create_topic(&mut client, "s", 1, &[]).await;
    create_topic(&mut client, "empty", 1, &[]).await;
    // 8 batches of 20 records of 10 KiB: one batch (200 KiB) per answer of 300 KiB.
    let value = "v".repeat(10 * 1024);
    let mut bytes = 0;
    for _ in 0..8 {
        let records: Vec<(Option<&str>, &str)> = (0..20).map(|_| (None, value.as_str())).collect();
        let records = batch(&records);
        bytes += records.len();
        produce(&mut client, "s", 0, records, Acks::Leader).await;
    }
    let mut consumer = quick_consumer(&broker, 300 * 1024).await;
    consumer.assign("s", &[0]).await.unwrap();
    consumer.assign("empty", &[0]).await.unwrap();
    consumer.seek("s", 0, Seek::Beginning).await.unwrap();
    consumer.seek("empty", 0, Seek::Beginning).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // The first poll opens the stream; then the broker reads every batch and sends them
    // ahead (its fetch metric counts what it read) while this consumer takes none.
    let first = consumer.poll().await.unwrap();
    assert!(
        first.len() <= 20,
        "{} records in the first poll",
        first.len()
    );
    let mut offsets: Vec<i64> = first.iter().map(|r| r.offset).collect();
    let all_read = format!("fjord_fetch_bytes_total{{topic=\"s\"}} {bytes}\n");
    while !broker.http_get("/metrics").contains(&all_read) {
        assert!(Instant::now() < deadline, "{}", broker.http_get("/metrics"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Answers are waiting, but a poll takes one (one batch here) per partition.
    while offsets.len() < 160 || consumer.high_watermark("empty", 0).is_none() {
        assert!(Instant::now() < deadline, "{} records", offsets.len());
        let records = consumer.poll().await.unwrap();
        assert!(records.len() <= 20, "{} records in one poll", records.len());
        assert!(records.iter().all(|r| r.topic == "s"));
        offsets.extend(records.iter().map(|r| r.offset));
    }
    assert_eq!(offsets, (0..160).collect::<Vec<i64>>());
    // At the end: the stream's empty answer brings the high watermark, also of a
    // partition that never had a record.
    while consumer.high_watermark("s", 0) != Some(160) {
        assert!(Instant::now() < deadline);
        assert!(consumer.poll().await.unwrap().is_empty());
    }
    assert_eq!(consumer.high_watermark("empty", 0), Some(0));
    assert_eq!(consumer.position("s", 0), Some(160));
    // A seek drops the stream waiting at the end: the records come again from there.
    consumer.seek("s", 0, Seek::Offset(150)).await.unwrap();
    let mut again = Vec::new();
    while again.len() < 10 {
        assert!(Instant::now() < deadline, "{again:?}");
        again.extend(consumer.poll().await.unwrap().iter().map(|r| r.offset));
    }
    assert_eq!(again, (150..160).collect::<Vec<i64>>());
    // New records reach the tailing stream.
    produce(&mut client, "s", 0, batch(&[(None, "last")]), Acks::Leader).await;
    let mut last = Vec::new();
    while last.is_empty() {
        assert!(Instant::now() < deadline);
        last = consumer.poll().await.unwrap();
    }
    assert_eq!(last.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![160]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_backlog_read_ahead_does_not_block_its_admin_calls() {
    use fjord::client::{ConsumerConfig, Seek};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    // 6 partitions of 10 MiB: more read ahead (8 MiB a stream) than one connection's
    // 32 MiB window holds.
    create_topic(&mut client, "backlog", 6, &[]).await;
    let one_mib = one_mib_batch();
    for partition in 0..6 {
        for _ in 0..10 {
            produce(
                &mut client,
                "backlog",
                partition,
                one_mib.clone(),
                Acks::Leader,
            )
            .await;
        }
    }
    let mut consumer = quick_consumer(&broker, ConsumerConfig::default().max_bytes).await;
    consumer.assign("backlog", &[]).await.unwrap();
    for partition in 0..6 {
        consumer
            .seek("backlog", partition, Seek::Beginning)
            .await
            .unwrap();
    }
    // One poll opens the streams; then the broker sends ahead until the windows are full.
    let mut taken = consumer.poll().await.unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let read_ahead = |metrics: &str| -> u64 {
        let prefix = "fjord_fetch_bytes_total{topic=\"backlog\"} ";
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    // Settled: the count stands still (the windows are full) past one window's worth.
    // (Waiting for that is the point of this test; correct code passes however long.)
    let (mut last, mut still) = (0, 0);
    while last < 32 << 20 || still < 3 {
        assert!(Instant::now() < deadline, "{}", broker.http_get("/metrics"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read_ahead(&broker.http_get("/metrics"));
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    // Unary calls still get their answers while the backlog waits unpolled.
    let ends = tokio::time::timeout(Duration::from_secs(20), consumer.end_offsets())
        .await
        .expect("end_offsets answered despite the read-ahead")
        .unwrap();
    assert_eq!(ends.values().copied().collect::<Vec<i64>>(), vec![1000; 6]);
    while taken < 6000 {
        assert!(Instant::now() < deadline, "{taken} records");
        taken += consumer.poll().await.unwrap().len();
    }
    assert_eq!(taken, 6000);
}

/// A consumer of `broker` whose polls wait 100 ms at most.
async fn quick_consumer(broker: &BrokerProcess, max_bytes: u32) -> fjord::client::Consumer {
    let config = fjord::client::ConsumerConfig {
        max_bytes,
        max_wait_ms: 100,
        ..fjord::client::ConsumerConfig::default()
    };
    fjord::client::Consumer::connect(&broker.grpc_addr.to_string(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_sealed_segments_leaves_their_pages_out_of_the_broker_rss() {
    use fjord::client::Seek;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut client = broker.client().await;
    // 64 MiB in sealed segments of 4 MiB: each read of them is a slice of a file map.
    create_topic(&mut client, "sealed", 1, &[("segment.bytes", "4194304")]).await;
    let one_mib = one_mib_batch();
    for _ in 0..66 {
        produce(&mut client, "sealed", 0, one_mib.clone(), Acks::Leader).await;
    }
    let before = broker.status_kib("RssFile");
    let mut consumer =
        quick_consumer(&broker, fjord::client::ConsumerConfig::default().max_bytes).await;
    consumer.assign("sealed", &[0]).await.unwrap();
    consumer.seek("sealed", 0, Seek::Beginning).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut read = 0;
    while read < 6600 {
        assert!(Instant::now() < deadline, "{read} records");
        read += consumer.poll().await.unwrap().len();
    }
    // Caught up (the stream's answer at the end is here): no read slice is held.
    while consumer.high_watermark("sealed", 0) != consumer.position("sealed", 0) {
        assert!(Instant::now() < deadline);
        consumer.poll().await.unwrap();
    }
    let grown = broker.status_kib("RssFile").saturating_sub(before);
    // Without dropping the pages of finished reads, all 64 MiB would stay mapped.
    assert!(grown < 16 * 1024, "RssFile grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_behind_keeps_a_partitions_page_cache_small_and_loses_nothing() {
    const MIB: u64 = 1 << 20;
    // On the target's disk, not a tmpfs `TMPDIR`: shared memory is never dropped.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // No recovery-point checkpoint during the test: a restart recovers the whole segment.
    let args = [
        "--log-drop-behind-bytes",
        "4194304",
        "--log-flush-offset-checkpoint-interval-ms",
        "3600000",
    ];
    let mut broker = BrokerProcess::start(dir.path(), &args);
    let mut client = broker.client().await;
    create_topic(&mut client, "tail", 1, &[]).await;
    let one_mib = one_mib_batch();
    // acks=all: each append finds the ones before it written back, so the drops it asks
    // for leave none of their pages behind.
    for _ in 0..30 {
        produce(&mut client, "tail", 0, one_mib.clone(), Acks::All).await;
    }
    let segment = dir.path().join("tail-0/00000000000000000000.log");
    assert!(std::fs::metadata(&segment).unwrap().len() > 28 * MIB);
    // The drops are made by the broker's drop-behind thread, after the answers.
    eventually(Duration::from_secs(20), "the segment's pages to go", || {
        let cached = crate::support::cached_bytes(&segment);
        async move { cached <= 12 * MIB }
    })
    .await;
    let records = read_all(&mut client, "tail", 0, 0).await;
    assert_eq!(records.len(), 3000);
    assert!(records.iter().enumerate().all(|(i, r)| r.0 == i as i64));
    assert!(records.iter().all(|r| r.2.len() == 10 * 1024));
    assert!(
        crate::support::cached_bytes(&segment) > 28 * MIB,
        "read back in"
    );

    // kill -9: the restart's recovery scans the segment again, and drops what it has
    // passed as the appends did; it is the open's only pass over the segment.
    broker.kill();
    let broker = broker.restart();
    let cached = crate::support::cached_bytes(&segment);
    assert!(
        cached <= 12 * MIB,
        "{cached} bytes cached after the recovery"
    );
    let mut client = broker.client().await;
    let again = read_all(&mut client, "tail", 0, 0).await;
    assert_eq!(again, records);

    // A window smaller than one step (4 MiB) is refused at start, naming the setting.
    let mut child = std::process::Command::new(crate::support::binary("fjord-broker"))
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--kafka-addr", "127.0.0.1:0"])
        .args(["--log-drop-behind-bytes", "65536"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the broker started with a 64 KiB drop-behind window");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("log.drop.behind.bytes"), "{stderr}");
}

/// One batch of 100 records of 10 KiB (about 1 MiB).
fn one_mib_batch() -> Vec<u8> {
    let value = "v".repeat(10 * 1024);
    let records: Vec<(Option<&str>, &str)> = (0..100).map(|_| (None, value.as_str())).collect();
    batch(&records)
}
