//! Integration tests of the `fjord` CLI and the `fjord-client` crate against the real
//! broker binary (`target/<profile>/fjord-broker`, built by `cargo build -p fjord-broker`
//! or `cargo test --workspace`). Each test starts its own broker on port 0 in a temp dir.
//! No sleeps as synchronisation: waits poll a condition against a deadline.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::*;

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

mod cli {
    use super::*;
    use fjord_client::partition_for_key;

    #[test]
    fn topic_create_list_describe_alter_delete() {
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &[
                "topic",
                "create",
                "orders",
                "--partitions",
                "3",
                "--config",
                "retention.ms=3600000",
            ],
        ));
        ok(fjord(&broker, &["topic", "create", "audit"]));
        assert_eq!(ok(fjord(&broker, &["topic", "list"])), "audit\norders\n");

        let text = ok(fjord(&broker, &["topic", "describe", "orders"]));
        let described = lines(&text);
        assert_eq!(described[0], "Topic: orders");
        assert_eq!(described[1], "Partitions: 3");
        assert!(described[2].contains("PARTITION") && described[2].contains("HIGH-WATERMARK"));
        for p in 0..3 {
            let row: Vec<&str> = described[3 + p].split_whitespace().collect();
            assert_eq!(
                row,
                [p.to_string().as_str(), "0", "0", "0", "0", "1"],
                "{text}"
            );
        }
        assert_eq!(described[6], "Configs:");
        assert!(
            described.contains(&"  retention.ms=3600000 (override)"),
            "{text}"
        );
        assert!(described.contains(&"  cleanup.policy=delete"), "{text}");

        ok(fjord(
            &broker,
            &[
                "topic",
                "alter",
                "orders",
                "--config",
                "segment.bytes=1048576",
                "--delete-config",
                "retention.ms",
            ],
        ));
        let text = ok(fjord(&broker, &["topic", "describe", "orders"]));
        assert!(
            text.contains("  segment.bytes=1048576 (override)\n"),
            "{text}"
        );
        assert!(text.contains("  retention.ms=") && !text.contains("retention.ms=3600000"));
        assert!(
            !text.contains("retention.ms=604800000 (override)"),
            "{text}"
        );

        // Defaults: the broker's num.partitions (1).
        let text = ok(fjord(&broker, &["topic", "describe", "audit"]));
        assert_eq!(lines(&text)[1], "Partitions: 1");

        ok(fjord(&broker, &["topic", "delete", "orders"]));
        assert_eq!(ok(fjord(&broker, &["topic", "list"])), "audit\n");
        let e = fails(fjord(&broker, &["topic", "describe", "orders"]));
        assert!(e.contains("unknown topic orders"), "{e}");
        let e = fails(fjord(&broker, &["topic", "create", "audit"]));
        assert!(e.contains("already exists"), "{e}");
    }

    /// `OFFSET\tKEY\tVALUE` lines of one partition, read from the beginning.
    fn consume_partition(broker: &Broker, topic: &str, p: u32) -> Vec<(i64, String, String)> {
        let text = ok(fjord(
            broker,
            &[
                "consume",
                topic,
                "--partition",
                &p.to_string(),
                "--from-beginning",
                "--print-key",
                "--print-offset",
            ],
        ));
        text.lines()
            .map(|line| {
                let parts: Vec<&str> = line.splitn(3, '\t').collect();
                assert_eq!(parts.len(), 3, "{line:?}");
                (
                    parts[0].parse().unwrap(),
                    parts[1].to_string(),
                    parts[2].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn produce_keyed_lines_and_consume_them_back_on_the_murmur2_partition() {
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &["topic", "create", "keyed", "--partitions", "4"],
        ));
        let mut input = String::new();
        for i in 0..200 {
            input.push_str(&format!("user-{}:event {i}\n", i % 17));
        }
        input.push_str("no separator here\n\nk:v:with:colons\n");
        let out = fjord_at(
            &broker.addr,
            &["produce", "keyed", "--key-separator", ":"],
            input.as_bytes(),
        );
        ok(out);

        let mut keyed = 0;
        let mut seen_values = Vec::new();
        for p in 0..4 {
            let records = consume_partition(&broker, "keyed", p);
            for (i, (offset, key, value)) in records.iter().enumerate() {
                assert_eq!(
                    *offset, i as i64,
                    "offsets of partition {p} start at 0, no gap"
                );
                if !key.is_empty() {
                    keyed += 1;
                    assert_eq!(partition_for_key(key.as_bytes(), 4), p, "key {key}");
                }
                seen_values.push(value.clone());
            }
            // Per key, the order of the input is kept.
            for k in 0..17 {
                let key = format!("user-{k}");
                let order: Vec<usize> = records
                    .iter()
                    .filter(|r| r.1 == key)
                    .map(|r| r.2.trim_start_matches("event ").parse().unwrap())
                    .collect();
                assert!(order.windows(2).all(|w| w[0] < w[1]), "{key}: {order:?}");
            }
        }
        assert_eq!(keyed, 201);
        assert_eq!(seen_values.len(), 203);
        assert!(seen_values.contains(&"no separator here".to_string()));
        assert!(
            seen_values.contains(&String::new()),
            "the empty line is a record"
        );
        assert!(seen_values.contains(&"v:with:colons".to_string()));

        // All partitions, values only; and --max-messages.
        let all = ok(fjord(&broker, &["consume", "keyed", "--from-beginning"]));
        assert_eq!(all.lines().count(), 203);
        let five = ok(fjord(
            &broker,
            &[
                "consume",
                "keyed",
                "--from-beginning",
                "--max-messages",
                "5",
            ],
        ));
        assert_eq!(five.lines().count(), 5);
        // --print-key alone: KEY\tVALUE.
        let text = ok(fjord(
            &broker,
            &[
                "consume",
                "keyed",
                "--from-beginning",
                "--print-key",
                "--max-messages",
                "300",
            ],
        ));
        assert!(
            text.lines().any(|l| l == "\tno separator here"),
            "null key prints empty"
        );
        assert!(text.lines().all(|l| l.split('\t').count() >= 2), "{text}");
        // Default start: the end, so nothing without --follow.
        assert_eq!(ok(fjord(&broker, &["consume", "keyed"])), "");
        // --offset applies to every partition read.
        let from_offset = consume_from(&broker, &["--partition", "0", "--offset", "1"]);
        assert_eq!(
            from_offset.len(),
            consume_partition(&broker, "keyed", 0).len() - 1
        );
    }

    fn consume_from(broker: &Broker, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["consume", "keyed", "--print-offset"];
        args.extend_from_slice(extra);
        ok(fjord(broker, &args))
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn produce_with_explicit_partition_and_acks() {
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &["topic", "create", "p", "--partitions", "3"],
        ));
        for acks in ["all", "1", "0"] {
            let out = fjord_at(
                &broker.addr,
                &["produce", "p", "--partition", "2", "--acks", acks],
                b"x\ny\n",
            );
            ok(out);
        }
        let text = ok(fjord(&broker, &["offsets", "p"]));
        assert_eq!(text, "0 0 0\n1 0 0\n2 0 6\n");
        let out = fjord_at(&broker.addr, &["produce", "p", "--acks", "2"], b"x\n");
        assert_eq!(out.status.code(), Some(2), "usage error");
    }

    #[tokio::test]
    async fn offsets_and_offsets_by_time() {
        use fjord_client::{Producer, ProducerConfig, ProducerRecord};
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &["topic", "create", "timed", "--partitions", "2"],
        ));
        let producer = Producer::connect(&broker.addr, ProducerConfig::default())
            .await
            .unwrap();
        let mut sends = Vec::new();
        for ts in [1000, 2000, 3000] {
            sends.push(producer.send_record(ProducerRecord {
                topic: "timed".into(),
                partition: Some(0),
                value: Some(format!("at {ts}").into()),
                timestamp_ms: Some(ts),
                ..ProducerRecord::default()
            }));
        }
        for (i, send) in sends.into_iter().enumerate() {
            assert_eq!(send.await.unwrap().offset, i as i64);
        }
        // (Blocking calls in this async test are fine: nothing else runs meanwhile.)
        let run = |args: &[&str]| ok(fjord(&broker, args));
        assert_eq!(run(&["offsets", "timed"]), "0 0 3\n1 0 0\n");
        let at = |t: &str| run(&["offsets", "timed", "--time", t]);
        assert_eq!(at("1970-01-01T00:00:00Z"), "0 0\n1 -1\n");
        assert_eq!(at("1970-01-01T00:00:01.500Z"), "0 1\n1 -1\n");
        assert_eq!(at("1970-01-01T01:00:02+01:00"), "0 1\n1 -1\n");
        assert_eq!(at("1970-01-01T00:00:03Z"), "0 2\n1 -1\n");
        assert_eq!(at("2100-01-01T00:00:00Z"), "0 -1\n1 -1\n");
        // consume --from-time starts at the same offset.
        let text = run(&[
            "consume",
            "timed",
            "--partition",
            "0",
            "--from-time",
            "1970-01-01T00:00:02Z",
            "--print-offset",
        ]);
        assert_eq!(text, "1\tat 2000\n2\tat 3000\n");
        let out = fjord(&broker, &["offsets", "timed", "--time", "yesterday"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "an unparsable time is a usage error"
        );
    }

    #[test]
    fn delete_records_then_consume_from_beginning_shows_the_rest() {
        let broker = Broker::start();
        ok(fjord(&broker, &["topic", "create", "d"]));
        let input: String = (0..10).map(|i| format!("r{i}\n")).collect();
        ok(fjord_at(&broker.addr, &["produce", "d"], input.as_bytes()));
        assert_eq!(ok(fjord(&broker, &["offsets", "d"])), "0 0 10\n");
        let out = fjord(
            &broker,
            &["delete-records", "d", "--partition", "0", "--before", "4"],
        );
        assert_eq!(ok(out), "0 4\n");
        assert_eq!(ok(fjord(&broker, &["offsets", "d"])), "0 4 10\n");
        let text = ok(fjord(
            &broker,
            &["consume", "d", "--from-beginning", "--print-offset"],
        ));
        let expected: String = (4..10).map(|i| format!("{i}\tr{i}\n")).collect();
        assert_eq!(text, expected);
        let e = fails(fjord(
            &broker,
            &["delete-records", "d", "--partition", "0", "--before", "11"],
        ));
        assert!(e.contains("11"), "{e}");
    }

    /// Reads stdout lines of a child on a thread; `next` waits with a deadline.
    struct LineReader(mpsc::Receiver<String>);

    impl LineReader {
        fn new(stdout: impl Read + Send + 'static) -> LineReader {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            LineReader(rx)
        }

        fn next(&self) -> String {
            self.0
                .recv_timeout(DEADLINE)
                .expect("a line before the deadline")
        }
    }

    /// Kills a child process on drop.
    struct Reap(Child);

    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn follow_sees_a_record_produced_after_it_started() {
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &["topic", "create", "live", "--partitions", "2"],
        ));
        ok(fjord_at(
            &broker.addr,
            &["produce", "live", "--partition", "1"],
            b"first\n",
        ));
        let mut child = fjord_command(
            &broker.addr,
            &[
                "consume",
                "live",
                "--follow",
                "--from-beginning",
                "--print-offset",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fjord consume --follow");
        let reader = LineReader::new(child.stdout.take().expect("piped stdout"));
        let child = Reap(child);
        // Once "first" is printed the consumer is tailing both partitions.
        assert_eq!(reader.next(), "0\tfirst");
        ok(fjord_at(
            &broker.addr,
            &["produce", "live", "--partition", "0"],
            b"second\n",
        ));
        assert_eq!(reader.next(), "0\tsecond");
        ok(fjord_at(
            &broker.addr,
            &["produce", "live", "--partition", "1"],
            b"third\n",
        ));
        assert_eq!(reader.next(), "1\tthird");
        drop(child);
    }

    #[test]
    fn closed_stdout_ends_consume_quietly() {
        let broker = Broker::start();
        ok(fjord(&broker, &["topic", "create", "big"]));
        let input: String = (0..50_000)
            .map(|i| format!("record number {i}\n"))
            .collect();
        ok(fjord_at(
            &broker.addr,
            &["produce", "big"],
            input.as_bytes(),
        ));
        let mut child = fjord_command(&broker.addr, &["consume", "big", "--from-beginning"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fjord consume");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(first, "record number 0\n");
        drop(stdout);
        let output = child.wait_with_output().expect("wait");
        assert!(output.status.success(), "{:?}", output.status);
        assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    }

    #[test]
    fn errors_exit_non_zero_with_one_line() {
        let broker = Broker::start();
        ok(fjord(
            &broker,
            &["topic", "create", "t", "--partitions", "2"],
        ));

        // Unknown topic.
        for args in [
            vec!["consume", "nope", "--from-beginning"],
            vec!["produce", "nope"],
            vec!["topic", "describe", "nope"],
            vec!["topic", "delete", "nope"],
            vec!["offsets", "nope"],
            vec![
                "delete-records",
                "nope",
                "--partition",
                "0",
                "--before",
                "0",
            ],
        ] {
            let e = fails(fjord_at(&broker.addr, &args, b"x\n"));
            assert!(e.contains("unknown topic nope"), "{args:?}: {e}");
        }

        // Bad config key and value: the message names the key.
        let e = fails(fjord(
            &broker,
            &["topic", "create", "c", "--config", "no.such.key=1"],
        ));
        assert!(e.contains("no.such.key"), "{e}");
        let e = fails(fjord(
            &broker,
            &["topic", "alter", "t", "--config", "retention.ms=soon"],
        ));
        assert!(e.contains("retention.ms"), "{e}");
        let out = fjord(&broker, &["topic", "create", "c", "--config", "novalue"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "KEY=VALUE is checked by the parser"
        );

        // A partition that does not exist.
        for args in [
            vec!["consume", "t", "--partition", "7", "--from-beginning"],
            vec!["produce", "t", "--partition", "7"],
            vec!["delete-records", "t", "--partition", "7", "--before", "0"],
        ] {
            let e = fails(fjord_at(&broker.addr, &args, b"x\n"));
            assert!(e.contains("no partition 7"), "{args:?}: {e}");
        }

        // Broker not running: the message names the address.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        for args in [
            vec!["topic", "list"],
            vec!["consume", "t"],
            vec!["produce", "t"],
        ] {
            let e = fails(fjord_at(&addr, &args, b"x\n"));
            assert!(e.contains(&addr), "{args:?}: {e}");
            assert!(e.contains("cannot connect"), "{e}");
        }
        // --brokers wins over FJORD_BROKERS.
        let e = fails(fjord_at(
            &broker.addr,
            &["--brokers", &addr, "topic", "list"],
            b"",
        ));
        assert!(e.contains(&addr), "{e}");
    }
}

mod client {
    use super::*;
    use bytes::Bytes;
    use fjord_client::{
        Acks, Admin, ClientError, Compression, Consumer, ConsumerConfig, ConsumerRecord,
        OffsetSpec, Producer, ProducerConfig, ProducerRecord, Seek, TopicPartition,
        partition_for_key,
    };
    use futures_util::StreamExt;

    /// Polls until `n` records arrived (or the deadline passes).
    async fn poll_n(consumer: &mut Consumer, n: usize) -> Vec<ConsumerRecord> {
        let deadline = Instant::now() + DEADLINE;
        let mut records = Vec::new();
        while records.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records",
                records.len()
            );
            records.extend(consumer.poll().await.unwrap());
        }
        records
    }

    fn value(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Counts the batches of a partition by fetching its raw bytes.
    async fn batch_count(addr: &str, topic: &str, partition: u32) -> usize {
        use fjord_protocol::v1::{FetchRequest, fjord_client::FjordClient};
        let mut client = FjordClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut offset = 0;
        let mut batches = 0;
        loop {
            let request = FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
            };
            let response = client.fetch(request).await.unwrap().into_inner();
            if response.records.is_empty() {
                return batches;
            }
            batches += fjord_protocol::BatchIter::new(&response.records).count();
            offset = response.next_offset;
        }
    }

    #[tokio::test]
    async fn producer_batches_records_and_offsets_follow_send_order() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("b", 1, &[]).await.unwrap();
        let producer = Producer::connect(&broker.addr, ProducerConfig::default())
            .await
            .unwrap();
        let sends: Vec<_> = (0..2000)
            .map(|i| producer.send("b", None, value(&format!("value {i}")), vec![]))
            .collect();
        for (i, send) in sends.into_iter().enumerate() {
            let meta = send.await.unwrap();
            assert_eq!((meta.partition, meta.offset), (0, i as i64));
        }
        let batches = batch_count(&broker.addr, "b", 0).await;
        assert!(batches < 200, "2000 records in {batches} batches");
        let offsets = admin.list_offsets("b", OffsetSpec::Latest).await.unwrap();
        assert_eq!(offsets[0].offset, Some(2000));
    }

    /// The first records of a topic wait for its partition count in the producer's task
    /// while later ones are sent; once the count is known, sends join their batches on the
    /// sending thread, but only after the queued ones: offsets follow send order across
    /// the change, on a runtime where the task runs beside the sender.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_keep_their_order_when_the_topic_lookup_ends() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        let config = ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(&broker.addr, config).await.unwrap();
        // A new topic each round: each starts with a lookup.
        for round in 0..8 {
            let topic = format!("o{round}");
            admin.create_topic(&topic, 1, &[]).await.unwrap();
            let mut sends = Vec::new();
            for i in 0..5_000 {
                let key = (i % 3 == 0).then(|| Bytes::from(format!("k{i}")));
                sends.push(producer.send(&topic, key, value(&format!("{i}")), vec![]));
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for (i, send) in sends.into_iter().enumerate() {
                let meta = send.await.unwrap();
                assert_eq!(
                    (meta.partition, meta.offset),
                    (0, i as i64),
                    "{topic}: send {i}"
                );
            }
        }
    }

    /// A producer's task that ends while a handle lives on (here with its runtime): the
    /// records waiting in its batches fail with ProducerClosed instead of waiting for the
    /// last handle to go, and a later send fails too.
    #[test]
    fn records_in_batches_fail_when_the_producers_task_ends() {
        let broker = Broker::start();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let config = ProducerConfig {
            acks: Acks::Leader,
            linger_ms: 600_000,
            ..ProducerConfig::default()
        };
        let (producer, waiting) = runtime.block_on(async {
            let admin = Admin::connect(&broker.addr).await.unwrap();
            admin.create_topic("gone", 1, &[]).await.unwrap();
            let producer = Producer::connect(&broker.addr, config).await.unwrap();
            // The topic's lookup done and the first record sent: the next one joins an
            // open batch, which waits out its linger.
            let first = producer.send("gone", None, value("first"), vec![]);
            producer.flush().await.unwrap();
            assert_eq!(first.await.unwrap().offset, 0);
            let waiting = producer.send("gone", None, value("second"), vec![]);
            (producer, waiting)
        });
        drop(runtime);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let outcome = tokio::time::timeout(DEADLINE, waiting).await;
            assert!(
                matches!(outcome, Ok(Err(ClientError::ProducerClosed))),
                "{outcome:?}"
            );
            let later = producer.send("gone", None, value("third"), vec![]).await;
            assert!(
                matches!(later, Err(ClientError::ProducerClosed)),
                "{later:?}"
            );
        });
    }

    #[tokio::test]
    async fn keyed_records_go_to_the_murmur2_partition_and_keyless_ones_stick() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("k", 5, &[]).await.unwrap();
        let producer = Producer::connect(&broker.addr, ProducerConfig::default())
            .await
            .unwrap();
        for i in 0..50 {
            let key = format!("key-{i}");
            let meta = producer
                .send("k", Some(Bytes::from(key.clone())), value("v"), vec![])
                .await
                .unwrap();
            assert_eq!(
                meta.partition,
                partition_for_key(key.as_bytes(), 5),
                "{key}"
            );
        }
        // Keyless records queued together share one batch, so one partition.
        let sends: Vec<_> = (0..20)
            .map(|_| producer.send("k", None, value("x"), vec![]))
            .collect();
        producer.flush().await.unwrap();
        let mut partitions = Vec::new();
        for send in sends {
            partitions.push(send.await.unwrap().partition);
        }
        assert!(
            partitions.iter().all(|&p| p == partitions[0]),
            "{partitions:?}"
        );
        // An explicit partition.
        let meta = producer
            .send_to_partition("k", 3, None, value("y"), vec![])
            .await
            .unwrap();
        assert_eq!(meta.partition, 3);
    }

    #[tokio::test]
    async fn consumer_seeks_polls_and_streams() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("c", 2, &[]).await.unwrap();
        let producer = Producer::connect(&broker.addr, ProducerConfig::default())
            .await
            .unwrap();
        let mut sends = Vec::new();
        for i in 0..10i64 {
            sends.push(producer.send_record(ProducerRecord {
                topic: "c".into(),
                partition: Some(0),
                key: value(&format!("k{i}")),
                value: value(&format!("v{i}")),
                headers: vec![("h".into(), value("hv")), ("none".into(), None)],
                timestamp_ms: Some(10_000 + i * 1000),
            }));
        }
        producer.flush().await.unwrap();
        for send in sends {
            send.await.unwrap();
        }
        // All ten went as one batch: a seek into its middle must skip the first records.
        assert_eq!(batch_count(&broker.addr, "c", 0).await, 1);

        let mut consumer = Consumer::connect(&broker.addr, ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign("c", &[]).await.unwrap();
        assert_eq!(
            consumer.assignment(),
            vec![TopicPartition::new("c", 0), TopicPartition::new("c", 1)]
        );
        consumer.seek("c", 0, Seek::Offset(5)).await.unwrap();
        consumer.seek("c", 1, Seek::Beginning).await.unwrap();
        let records = poll_n(&mut consumer, 5).await;
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![5, 6, 7, 8, 9]);
        let r = &records[0];
        assert_eq!(
            (r.topic.as_str(), r.partition, r.timestamp_ms),
            ("c", 0, 15_000)
        );
        assert_eq!(r.key.as_deref(), Some(&b"k5"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"v5"[..]));
        assert_eq!(
            r.headers,
            vec![("h".into(), value("hv")), ("none".into(), None)]
        );
        assert_eq!(consumer.position("c", 0), Some(10));
        assert_eq!(consumer.position("c", 1), Some(0));
        let ends = consumer.end_offsets().await.unwrap();
        assert_eq!(ends[&TopicPartition::new("c", 0)], 10);
        assert_eq!(ends[&TopicPartition::new("c", 1)], 0);

        consumer
            .seek("c", 0, Seek::Timestamp(12_500))
            .await
            .unwrap();
        assert_eq!(consumer.position("c", 0), Some(3));
        consumer
            .seek("c", 0, Seek::Timestamp(99_999))
            .await
            .unwrap();
        assert_eq!(
            consumer.position("c", 0),
            Some(10),
            "no record after: the end"
        );
        consumer.seek("c", 0, Seek::End).await.unwrap();
        assert_eq!(consumer.position("c", 0), Some(10));
        let e = consumer.seek("c", 9, Seek::Beginning).await.unwrap_err();
        assert!(matches!(e, ClientError::NotAssigned { .. }), "{e:?}");

        consumer.seek("c", 0, Seek::Beginning).await.unwrap();
        let stream = consumer.into_stream();
        let values: Vec<String> = stream
            .take(3)
            .map(|r| String::from_utf8(r.unwrap().value.unwrap().to_vec()).unwrap())
            .collect()
            .await;
        assert_eq!(values, ["v0", "v1", "v2"]);
    }

    #[tokio::test]
    async fn every_compression_round_trips() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("z", 1, &[]).await.unwrap();
        let mut expected = Vec::new();
        for compression in Compression::ALL {
            let config = ProducerConfig {
                compression,
                acks: Acks::Leader,
                ..ProducerConfig::default()
            };
            let producer = Producer::connect(&broker.addr, config).await.unwrap();
            let sends: Vec<_> = (0..50)
                .map(|i| {
                    let v = format!("{compression:?} {i} {}", "x".repeat(i));
                    expected.push(v.clone());
                    producer.send("z", None, value(&v), vec![])
                })
                .collect();
            producer.close().await.unwrap();
            for send in sends {
                send.await.unwrap();
            }
        }
        let mut consumer = Consumer::connect(&broker.addr, ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign("z", &[0]).await.unwrap();
        consumer.seek("z", 0, Seek::Beginning).await.unwrap();
        let records = poll_n(&mut consumer, expected.len()).await;
        let got: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn acks_none_gives_no_offset_and_flush_waits_for_everything() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("n", 3, &[]).await.unwrap();
        let config = ProducerConfig {
            acks: Acks::None,
            linger_ms: 60_000,
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(&broker.addr, config).await.unwrap();
        let sends: Vec<_> = (0..30)
            .map(|i| producer.send("n", value(&i.to_string()), value("v"), vec![]))
            .collect();
        // Linger is a minute: only the flush sends them.
        producer.flush().await.unwrap();
        let total: i64 = admin
            .list_offsets("n", OffsetSpec::Latest)
            .await
            .unwrap()
            .iter()
            .map(|o| o.high_watermark)
            .sum();
        assert_eq!(total, 30);
        for send in sends {
            assert_eq!(send.await.unwrap().offset, -1);
        }
    }

    #[tokio::test]
    async fn errors_map_to_typed_variants() {
        let broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin
            .create_topic("e", 1, &[("max.message.bytes", "2000")])
            .await
            .unwrap();
        let e = admin.create_topic("e", 1, &[]).await.unwrap_err();
        assert!(matches!(e, ClientError::TopicAlreadyExists(_)), "{e:?}");
        let e = admin.describe_topic("missing").await.unwrap_err();
        assert_eq!(e, ClientError::UnknownTopic("unknown topic missing".into()));
        let e = admin
            .create_topic("bad", 1, &[("no.such", "1")])
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::InvalidArgument(m) if m.contains("no.such")),
            "{e:?}"
        );
        let e = admin.delete_records("e", 4, 0).await.unwrap_err();
        assert!(matches!(e, ClientError::UnknownPartition(_)), "{e:?}");

        let producer = Producer::connect(&broker.addr, ProducerConfig::default())
            .await
            .unwrap();
        let e = producer
            .send("missing", None, value("v"), vec![])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::UnknownTopic(_)), "{e:?}");
        let e = producer
            .send_to_partition("e", 1, None, value("v"), vec![])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::UnknownPartition(_)), "{e:?}");
        let big = Bytes::from(vec![b'x'; 5000]);
        let e = producer
            .send("e", None, Some(big), vec![])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::RecordTooLarge(_)), "{e:?}");
        assert!(!e.is_retriable());
        for i in 0..3 {
            let meta = producer.send("e", None, value("ok"), vec![]).await.unwrap();
            assert_eq!(meta.offset, i);
        }

        let mut consumer = Consumer::connect(&broker.addr, ConsumerConfig::default())
            .await
            .unwrap();
        let e = consumer.assign("e", &[1]).await.unwrap_err();
        assert!(matches!(e, ClientError::UnknownPartition(_)), "{e:?}");
        consumer.assign("e", &[0]).await.unwrap();
        consumer.seek("e", 0, Seek::Offset(100)).await.unwrap();
        match consumer.poll().await.unwrap_err() {
            ClientError::OffsetOutOfRange {
                offset,
                log_start_offset,
                log_end_offset,
                ..
            } => assert_eq!((offset, log_start_offset, log_end_offset), (100, 0, 3)),
            other => panic!("{other:?}"),
        }

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let e = Admin::connect(&addr).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Connect { addr: a, .. } if *a == addr),
            "{e:?}"
        );
        assert!(e.to_string().contains(&addr));
        assert!(e.is_retriable());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_buffer_makes_sends_wait_then_fail_instead_of_growing() {
        let mut broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("b", 1, &[]).await.unwrap();
        let config = ProducerConfig {
            // Room for two 300-byte records; a third waits 50 ms, then fails.
            buffer_memory: 800,
            max_block_ms: 50,
            retries: 1_000,
            retry_backoff_ms: 100,
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(&broker.addr, config).await.unwrap();
        let big = || Some(Bytes::from(vec![b'x'; 300]));
        producer.send("b", None, big(), vec![]).await.unwrap();
        broker.kill();
        // The broker is gone: these two stay in the buffer, retried.
        let first = tokio::spawn(producer.send("b", None, big(), vec![]));
        let second = tokio::spawn(producer.send("b", None, big(), vec![]));
        let e = producer.send("b", None, big(), vec![]).await.unwrap_err();
        assert!(
            matches!(e, ClientError::BufferFull { waited_ms: 50 }),
            "{e:?}"
        );
        // Once the broker is back, the buffered records go through in order.
        broker.start_again();
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert_eq!((first.offset, second.offset), (1, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retriable_errors_are_retried_across_a_broker_restart() {
        let mut broker = Broker::start();
        let admin = Admin::connect(&broker.addr).await.unwrap();
        admin.create_topic("r", 1, &[]).await.unwrap();
        let config = ProducerConfig {
            // Room for a slow restart: 300 tries, 100 ms apart.
            retries: 300,
            ..ProducerConfig::default()
        };
        let producer = Producer::connect(&broker.addr, config).await.unwrap();
        let no_retries = ProducerConfig {
            retries: 0,
            ..ProducerConfig::default()
        };
        let impatient = Producer::connect(&broker.addr, no_retries).await.unwrap();
        for p in [&producer, &impatient] {
            p.send("r", None, value("before"), vec![]).await.unwrap();
        }
        let mut consumer = Consumer::connect(&broker.addr, ConsumerConfig::default())
            .await
            .unwrap();
        consumer.assign("r", &[0]).await.unwrap();
        consumer.seek("r", 0, Seek::Beginning).await.unwrap();
        assert_eq!(poll_n(&mut consumer, 2).await.len(), 2);

        broker.kill();
        // A dead connection is a retriable error, for the producer and the consumer.
        let e = impatient
            .send("r", None, value("lost"), vec![])
            .await
            .unwrap_err();
        assert!(e.is_retriable(), "{e:?}");
        let e = loop {
            match consumer.poll().await {
                Ok(records) => assert!(records.is_empty()),
                Err(e) => break e,
            }
        };
        assert!(e.is_retriable(), "{e:?}");
        // A send started while the broker is down goes through once it is back.
        let send = tokio::spawn(producer.send("r", None, value("after"), vec![]));
        broker.start_again();
        assert_eq!(send.await.unwrap().unwrap().offset, 2);
        let deadline = Instant::now() + DEADLINE;
        let record = loop {
            assert!(Instant::now() < deadline, "no record after the restart");
            match consumer.poll().await {
                Ok(records) if !records.is_empty() => break records[0].clone(),
                Ok(_) => {}
                Err(e) => assert!(e.is_retriable(), "{e:?}"),
            }
        };
        assert_eq!((record.offset, record.value), (2, value("after")));
    }
}
