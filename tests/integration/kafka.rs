//! The Kafka listener against a real Kafka client (librdkafka, through `rdkafka`) and
//! raw frames: metadata, produce with lz4 and zstd, fetch, list offsets, records crossing
//! between the Kafka and the gRPC API, and malformed input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::{BrokerProcess, fjord_ok};

const TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(broker: &BrokerProcess, name: &str, partitions: u32) {
    let partitions = partitions.to_string();
    fjord_ok(
        broker,
        &["topic", "create", name, "--partitions", &partitions],
        b"",
    );
}

fn producer(broker: &BrokerProcess, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .set("acks", "all")
        // Idempotent (Java clients' default; librdkafka's is off): InitProducerId, and
        // every batch carries its producer id and sequence.
        .set("enable.idempotence", "true")
        // Kafka's Java partitioner (librdkafka's default is CRC-32 based).
        .set("partitioner", "murmur2_random")
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("create producer")
}

fn consumer(broker: &BrokerProcess) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        // assign() only: no group is joined and nothing is committed.
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("create consumer")
}

/// A record as a client sees it: (key, value, headers).
type Seen = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Reads `count` records from the beginning of every partition of `topic`; per partition,
/// the records in offset order.
fn consume(
    broker: &BrokerProcess,
    topic: &str,
    partitions: u32,
    count: usize,
) -> BTreeMap<i32, Vec<(i64, Seen)>> {
    let consumer = consumer(broker);
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out: BTreeMap<i32, Vec<(i64, Seen)>> = BTreeMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + TIMEOUT;
    while seen < count {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {count} records of {topic}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("consume");
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        out.entry(message.partition()).or_default().push((
            message.offset(),
            (
                message.key().map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
                headers,
            ),
        ));
        seen += 1;
    }
    out
}

#[test]
fn rdkafka_metadata_lists_the_topics_and_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "orders", 4);
    create_topic(&broker, "payments", 1);
    let consumer = consumer(&broker);
    let metadata = consumer.fetch_metadata(None, TIMEOUT).expect("metadata");
    assert_eq!(metadata.brokers().len(), 1);
    assert_eq!(metadata.brokers()[0].id(), 0);
    assert_eq!(
        metadata.brokers()[0].port() as u16,
        broker.kafka_addr.port()
    );
    let topics: BTreeMap<&str, Vec<i32>> = metadata
        .topics()
        .iter()
        .map(|t| {
            assert!(t.error().is_none(), "{}: {:?}", t.name(), t.error());
            let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            for p in t.partitions() {
                assert_eq!(p.leader(), 0);
                assert_eq!(p.replicas(), &[0]);
                assert_eq!(p.isr(), &[0]);
            }
            partitions.sort();
            (t.name(), partitions)
        })
        .collect();
    assert_eq!(topics.get("orders"), Some(&vec![0, 1, 2, 3]));
    assert_eq!(topics.get("payments"), Some(&vec![0]));

    // One topic by name, and one that does not exist (and is not created by the lookup).
    let one = consumer
        .fetch_metadata(Some("orders"), TIMEOUT)
        .expect("metadata");
    assert_eq!(one.topics().len(), 1);
    assert_eq!(one.topics()[0].partitions().len(), 4);
    let missing = consumer
        .fetch_metadata(Some("nope"), TIMEOUT)
        .expect("metadata");
    assert!(missing.topics()[0].error().is_some());
    let listed = fjord_ok(&broker, &["topic", "list"], b"");
    assert!(!listed.contains("nope"), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rdkafka_produces_lz4_and_zstd_and_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    for compression in ["lz4", "zstd"] {
        let topic = format!("events-{compression}");
        create_topic(&broker, &topic, 4);
        let producer = producer(&broker, compression);
        let records: Vec<(String, String, OwnedHeaders)> = (0..2_000)
            .map(|i| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "seq",
                        value: Some(&i.to_string()),
                    })
                    .insert(Header {
                        key: "empty",
                        value: None::<&[u8]>,
                    });
                (format!("key-{}", i % 97), format!("value-{i}"), headers)
            })
            .collect();
        let deliveries: Vec<_> = records
            .iter()
            .map(|(key, value, headers)| {
                let record = FutureRecord::to(&topic)
                    .key(key)
                    .payload(value)
                    .headers(headers.clone());
                match producer.send_result(record) {
                    Ok(delivery) => delivery,
                    Err((e, _)) => panic!("queue record: {e}"),
                }
            })
            .collect();
        let mut placed = BTreeMap::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let delivered = delivery.await.expect("delivery").expect("produce");
            placed.insert(i, (delivered.partition, delivered.offset));
        }

        let read = consume(&broker, &topic, 4, records.len());
        let mut total = 0;
        for (partition, messages) in &read {
            let offsets: Vec<i64> = messages.iter().map(|(o, _)| *o).collect();
            let expected: Vec<i64> = (0..messages.len() as i64).collect();
            assert_eq!(offsets, expected, "{compression}: partition {partition}");
            total += messages.len();
        }
        assert_eq!(total, records.len());
        for (i, (key, value, _)) in records.iter().enumerate() {
            let (partition, offset) = placed[&i];
            let (_, (k, v, h)) = &read[&partition][offset as usize];
            assert_eq!(k.as_deref(), Some(key.as_bytes()));
            assert_eq!(v.as_deref(), Some(value.as_bytes()));
            let seq = i.to_string().into_bytes();
            assert_eq!(
                h,
                &vec![("seq".to_owned(), Some(seq)), ("empty".to_owned(), None)]
            );
            let murmur2 = fjord::client::partition_for_key(key.as_bytes(), 4);
            assert_eq!(partition, murmur2 as i32, "{key} on murmur2's partition");
        }
    }
}

#[test]
fn records_cross_between_the_fjord_cli_and_rdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "from-fjord", 2);
    let lines: String = (0..200).map(|i| format!("k{i}=v {i} ünïcode\n")).collect();
    fjord_ok(
        &broker,
        &["produce", "from-fjord", "--key-separator", "="],
        lines.as_bytes(),
    );
    let read = consume(&broker, "from-fjord", 2, 200);
    let mut got = BTreeMap::new();
    for (partition, messages) in &read {
        for (_, (key, value, headers)) in messages {
            let key = String::from_utf8(key.clone().unwrap()).unwrap();
            let murmur2 = fjord::client::partition_for_key(key.as_bytes(), 2);
            assert_eq!(*partition, murmur2 as i32, "{key}");
            assert!(headers.is_empty());
            got.insert(key, String::from_utf8(value.clone().unwrap()).unwrap());
        }
    }
    for i in 0..200 {
        assert_eq!(got[&format!("k{i}")], format!("v {i} ünïcode"));
    }

    create_topic(&broker, "from-kafka", 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let producer = producer(&broker, "none");
        for i in 0..100 {
            let key = format!("k{i}");
            let value = format!("v {i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "trace",
                value: Some(&[i as u8, 0xff][..]),
            });
            producer
                .send(
                    FutureRecord::to("from-kafka")
                        .key(&key)
                        .payload(&value)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
        // The batches as the gRPC API serves them: the same records and headers.
        let mut client = broker.client().await;
        let (decoded, _) = crate::support::fetch_decoded(&mut client, "from-kafka", 0, 0).await;
        assert_eq!(decoded.len(), 100, "one fetch of 1 MiB holds them all");
        for (i, record) in decoded.iter().enumerate() {
            assert_eq!(record.offset, i as i64);
            assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
            assert_eq!(record.value.as_deref(), Some(format!("v {i}").as_bytes()));
            let trace = record.headers[0].1.as_deref();
            assert_eq!(record.headers.len(), 1);
            assert_eq!(record.headers[0].0, "trace");
            assert_eq!(trace, Some(&[i as u8, 0xff][..]));
        }
    });
    let out = fjord_ok(
        &broker,
        &[
            "consume",
            "from-kafka",
            "--from-beginning",
            "--print-offset",
            "--print-key",
        ],
        b"",
    );
    let expected: String = (0..100).map(|i| format!("{i}\tk{i}\tv {i}\n")).collect();
    assert_eq!(out, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_agree_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "clock", 1);
    let producer = producer(&broker, "none");
    let base = 1_700_000_000_000i64;
    for i in 0..10i64 {
        producer
            .send(
                FutureRecord::to("clock")
                    .key("k")
                    .payload("v")
                    .timestamp(base + i * 1000),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let consumer = consumer(&broker);
    let (low, high) = consumer.fetch_watermarks("clock", 0, TIMEOUT).unwrap();
    assert_eq!((low, high), (0, 10));
    let (low, high) = consumer
        .fetch_watermarks("nope", 0, TIMEOUT)
        .map_or((-1, -1), |w| w);
    assert_eq!((low, high), (-1, -1), "an unknown topic has no watermarks");

    let lookups = [
        (base - 1, Offset::Offset(0)),
        (base + 3_500, Offset::Offset(4)),
        (base + 9_000, Offset::Offset(9)),
        (base + 60_000, Offset::End),
    ];
    for (ts, expected) in lookups {
        let mut times = TopicPartitionList::new();
        times
            .add_partition_offset("clock", 0, Offset::Offset(ts))
            .unwrap();
        let found = consumer.offsets_for_times(times, TIMEOUT).unwrap();
        let offset = found.find_partition("clock", 0).unwrap().offset();
        assert_eq!(offset, expected, "timestamp {ts}");
    }
}

/// A raw Kafka connection to the broker.
fn connect(broker: &BrokerProcess) -> TcpStream {
    let stream = TcpStream::connect(broker.kafka_addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// ApiVersions v`version` (0-2, whose body is empty, or one from the future) with
/// correlation id 7, as a size-prefixed frame.
fn api_versions_frame(version: i16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes()); // client id: null
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Reads one response frame: (correlation id, the rest).
fn read_response(stream: &mut TcpStream) -> (i32, Vec<u8>) {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).unwrap();
    let correlation_id = i32::from_be_bytes(body[..4].try_into().unwrap());
    (correlation_id, body[4..].to_vec())
}

/// Whether the broker closed the connection (instead of answering).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn malformed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "still-works", 1);

    // A connection that stays open across the bad ones, and keeps being answered.
    let mut good = connect(&broker);
    let mut check_good = || {
        good.write_all(&api_versions_frame(2)).unwrap();
        let (correlation_id, body) = read_response(&mut good);
        assert_eq!(correlation_id, 7);
        assert_eq!(&body[..2], &0i16.to_be_bytes(), "ApiVersions error code");
    };
    check_good();

    let mut unknown_key = 9_999i16.to_be_bytes().to_vec();
    unknown_key.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0xff, 0xff]);
    let mut truncated_header = 3i16.to_be_bytes().to_vec();
    truncated_header.extend_from_slice(&[0, 9, 0]);
    // Metadata v9 (flexible) whose topic array claims more bytes than follow.
    let mut truncated_body = 3i16.to_be_bytes().to_vec();
    truncated_body.extend_from_slice(&9i16.to_be_bytes());
    truncated_body.extend_from_slice(&1i32.to_be_bytes());
    truncated_body.extend_from_slice(&[0xff, 0xff, 0, 3, 5, b'a']);
    let sized = |body: &[u8]| {
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    };
    let bad_frames: Vec<(&str, Vec<u8>)> = vec![
        ("a negative length", (-5i32).to_be_bytes().to_vec()),
        ("an oversized length", (200i32 << 20).to_be_bytes().to_vec()),
        (
            "garbage",
            sized(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05]),
        ),
        (
            "a Produce with a garbage body",
            sized(&{
                let mut v = vec![0, 0, 0, 3, 0, 0, 0, 7, 0xff, 0xff];
                v.extend(std::iter::repeat_n(0x7f, 64));
                v
            }),
        ),
        ("a short header", sized(&truncated_header)),
        ("a truncated body", sized(&truncated_body)),
        ("an unknown API key", sized(&unknown_key)),
        (
            "a Metadata version never advertised",
            sized(&{
                let mut v = 3i16.to_be_bytes().to_vec();
                v.extend_from_slice(&99i16.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 7]);
                v
            }),
        ),
    ];
    for (what, frame) in bad_frames {
        let mut bad = connect(&broker);
        bad.write_all(&frame).unwrap();
        assert!(
            closed(&mut bad),
            "the broker closes the connection after {what}"
        );
        check_good();
    }

    // A frame cut off by the client closing its side.
    let mut cut = connect(&broker);
    cut.write_all(&100i32.to_be_bytes()).unwrap();
    cut.write_all(&[0, 18, 0, 3]).unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed(&mut cut));

    // ApiVersions at a version from the future: UNSUPPORTED_VERSION (35) with the list,
    // at version 0, as Kafka answers.
    let mut future = connect(&broker);
    future.write_all(&api_versions_frame(42)).unwrap();
    let (correlation_id, body) = read_response(&mut future);
    assert_eq!(correlation_id, 7);
    assert_eq!(&body[..2], &35i16.to_be_bytes());
    let count = i32::from_be_bytes(body[2..6].try_into().unwrap());
    assert!(count >= 5, "the supported APIs are listed");

    check_good();
    // The other APIs still work too.
    let (_, stdout, _) = crate::support::fjord(&broker, &["topic", "list"], b"");
    assert!(stdout.contains("still-works"), "{stdout}");
    let consumer = consumer(&broker);
    let (low, high) = consumer
        .fetch_watermarks("still-works", 0, TIMEOUT)
        .unwrap();
    assert_eq!((low, high), (0, 0));
}

#[test]
fn a_long_poll_is_woken_by_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "tail", 2);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        // Far longer than the test waits: only an append can answer the fetch in time.
        .set("fetch.wait.max.ms", "20000")
        .set("socket.timeout.ms", "60000")
        .create()
        .unwrap();
    // Offset 0, not Offset::Beginning: "beginning" sends librdkafka to ListOffsets for
    // each partition, and whichever answers first could start the long poll alone; the
    // other would then wait out the 20 s behind it, whatever the append.
    let mut assignment = TopicPartitionList::new();
    for p in 0..2 {
        assignment
            .add_partition_offset("tail", p, Offset::Offset(0))
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    // Let the first (empty) fetch start waiting.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    let start = Instant::now();
    fjord_ok(
        &broker,
        &["produce", "tail", "--partition", "1"],
        b"hello\n",
    );
    let message = loop {
        if start.elapsed() >= TIMEOUT {
            let log: Vec<String> = broker.stderr.try_iter().collect();
            panic!(
                "no record {:?} after the append; the broker's log:\n{}",
                start.elapsed(),
                log.join("\n")
            );
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            break message.unwrap().detach();
        }
    };
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(message.partition(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the long poll was answered by the append, not its 20 s wait ({:?})",
        start.elapsed()
    );
}

#[test]
fn metadata_advertises_the_configured_address() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &["--advertised-kafka-addr", "kafka.example.com:19092"],
    );
    let mut stream = connect(&broker);
    // Metadata v0, no topics (= all).
    let mut body = 3i16.to_be_bytes().to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&0i32.to_be_bytes());
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
    let (correlation_id, body) = read_response(&mut stream);
    assert_eq!(correlation_id, 7);
    let brokers = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let node_id = i32::from_be_bytes(body[4..8].try_into().unwrap());
    let host_len = i16::from_be_bytes(body[8..10].try_into().unwrap()) as usize;
    let host = std::str::from_utf8(&body[10..10 + host_len]).unwrap();
    let at = 10 + host_len;
    let port = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
    assert_eq!(
        (brokers, node_id, host, port),
        (1, 0, "kafka.example.com", 19092)
    );
}

#[test]
fn a_frame_declaring_billions_of_elements_does_not_abort_the_broker() {
    // A 22-byte Produce v3 whose topic array claims 2^31 - 1 entries: kafka-protocol
    // 0.18 reserved that many up front and the failed allocation aborted the process
    // (vendor/kafka-protocol/FJORD-PATCH.md). Now the decode fails on the missing bytes.
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    for version in [3i16, 9] {
        let mut body = 0i16.to_be_bytes().to_vec(); // Produce
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
        body.extend_from_slice(&(-1i16).to_be_bytes()); // client id: null
        if version >= 9 {
            body.push(0); // header tagged fields
            body.push(0); // transactional id: null (compact)
        } else {
            body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id: null
        }
        body.extend_from_slice(&1i16.to_be_bytes()); // acks
        body.extend_from_slice(&30_000i32.to_be_bytes()); // timeout
        if version >= 9 {
            body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]); // 2^31 - 1 + 1, varint
        } else {
            body.extend_from_slice(&i32::MAX.to_be_bytes());
        }
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut bad = connect(&broker);
        bad.write_all(&frame).unwrap();
        assert!(closed(&mut bad), "v{version}: closed, not answered");
    }
    // Still serving, on both listeners.
    let mut good = connect(&broker);
    good.write_all(&api_versions_frame(2)).unwrap();
    assert_eq!(read_response(&mut good).0, 7);
    let (ok, _, stderr) = crate::support::fjord(&broker, &["topic", "list"], b"");
    assert!(ok, "{stderr}");
}

/// Runs the W5 benchmark example against `broker`'s Kafka listener on topic `w5`.
fn w5_example(broker: &BrokerProcess, args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::support::example("kafka_perf_produce"))
        .args([
            "--bootstrap",
            &broker.kafka_addr.to_string(),
            "--topic",
            "w5",
        ])
        .args(args)
        .output()
        .expect("run kafka_perf_produce")
}

/// The example's stdout, after checking that it succeeded.
fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_w5_benchmark_example_produces_through_the_kafka_listener() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "w5", 1);
    let args = [
        "--num-records",
        "2000",
        "--record-size",
        "100",
        "--acks",
        "all",
    ];
    let stdout = succeeded(&w5_example(&broker, &args));
    assert!(
        stdout.starts_with("2000 records sent, ") && stdout.contains(" ms 99.9th"),
        "{stdout}"
    );
    let offsets = fjord_ok(&broker, &["offsets", "w5"], b"");
    assert_eq!(offsets.trim(), "0 0 2000", "every record is in the log");
}

/// `--partition` sends every record to the partition it names, not where librdkafka's
/// partitioner would put it; a negative one is refused before anything is sent.
#[test]
fn the_w5_benchmark_example_writes_the_partition_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "w5", 3);
    // Three runs, so that a partitioner that ignored the flag would not pass by luck.
    for (partition, records) in [("1", "1500"), ("2", "700"), ("0", "300")] {
        let args = ["--num-records", records, "--partition", partition];
        let stdout = succeeded(&w5_example(&broker, &args));
        assert!(
            stdout.starts_with(&format!("{records} records sent, ")),
            "{stdout}"
        );
    }
    let expected = "0 0 300\n1 0 1500\n2 0 700";
    let offsets = fjord_ok(&broker, &["offsets", "w5"], b"");
    assert_eq!(offsets.trim(), expected, "each run in its partition");
    let out = w5_example(&broker, &["--num-records", "10", "--partition=-1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--partition"), "{stderr}");
    let offsets = fjord_ok(&broker, &["offsets", "w5"], b"");
    assert_eq!(offsets.trim(), expected, "nothing more sent");
}

/// With librdkafka's queue held to 50 records, nearly every send finds it full and waits
/// for a delivery to make room: none may be lost or left waiting. `-X` passes the setting.
#[test]
fn the_w5_benchmark_example_waits_for_room_when_librdkafkas_queue_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "w5", 1);
    let args = [
        "--num-records",
        "3000",
        "--record-size",
        "100",
        "--batch-bytes",
        "2000",
    ];
    let args = [&args[..], &["--linger-ms", "0"]].concat();
    let full = [&args[..], &["-X", "queue.buffering.max.messages=50"]].concat();
    let stdout = succeeded(&w5_example(&broker, &full));
    assert!(stdout.starts_with("3000 records sent, "), "{stdout}");
    let offsets = fjord_ok(&broker, &["offsets", "w5"], b"");
    assert_eq!(offsets.trim(), "0 0 3000", "every record is in the log");
    // A setting without a value is refused before anything is sent.
    let out = w5_example(&broker, &[&args[..], &["-X", "linger.ms"]].concat());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected KEY=VALUE"), "{stderr}");
}

/// A member of a librdkafka consumer group, run on its own thread: reads, commits every
/// 250 records and whenever it is idle, and records every (partition, offset) it sees.
struct GroupMember {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<BTreeSet<(String, i32)>>,
}

type SeenOffsets = std::sync::Arc<std::sync::Mutex<BTreeSet<(i32, i64)>>>;

fn group_member(
    broker: &BrokerProcess,
    group: &str,
    name: &str,
    extra: &[(&str, &str)],
    seen: SeenOffsets,
    assigned: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    commit_barrier: std::sync::Arc<std::sync::Barrier>,
) -> GroupMember {
    use rdkafka::consumer::CommitMode;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.kafka_addr.to_string())
        .set("group.id", group)
        .set("client.id", name)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "200");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("create group consumer");
    consumer.subscribe(&["events"]).expect("subscribe");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut uncommitted = 0;
        let mut counted = false;
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            if !counted && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                counted = true;
                assigned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    seen.lock()
                        .unwrap()
                        .insert((message.partition(), message.offset()));
                    uncommitted += 1;
                    if uncommitted >= 250
                        && consumer.commit_consumer_state(CommitMode::Sync).is_ok()
                    {
                        uncommitted = 0;
                    }
                }
                // Errors while the broker restarts: librdkafka reconnects on its own.
                Some(Err(_)) => {}
                None => {
                    if uncommitted > 0 && consumer.commit_consumer_state(CommitMode::Sync).is_ok() {
                        uncommitted = 0;
                    }
                }
            }
        }
        // Everything is read: commit the final positions (retrying through a late
        // rebalance), let every member do so before anyone leaves, then close.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let _ = consumer.poll(Duration::from_millis(50));
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => break,
                // Nothing to commit: the positions are already committed.
                Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => break,
                Err(e) => assert!(Instant::now() < deadline, "final commit: {e}"),
            }
        }
        let owned: BTreeSet<(String, i32)> = consumer
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default();
        commit_barrier.wait();
        drop(consumer);
        owned
    });
    GroupMember { stop, thread }
}

/// `fjord group describe GROUP`'s partition rows: (partition, committed, log end).
fn described_offsets(broker: &BrokerProcess, group: &str) -> BTreeMap<i32, (String, i64)> {
    let out = fjord_ok(broker, &["group", "describe", group], b"");
    out.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 5 && cols[0] == "events").then(|| {
                (
                    cols[1].parse().unwrap(),
                    (cols[2].to_owned(), cols[3].parse().unwrap()),
                )
            })
        })
        .collect()
}

/// Produces `count` keyed records to `events` through librdkafka.
async fn produce_events(broker: &BrokerProcess, compression: &str, from: usize, count: usize) {
    let producer = producer(broker, compression);
    let deliveries: Vec<_> = (from..from + count)
        .map(|i| {
            let key = format!("entity-{}", i % 500);
            let value = format!("event-{i}");
            let record = FutureRecord::to("events").key(&key).payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => delivery,
                Err((e, _)) => panic!("queue record: {e}"),
            }
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("delivery").expect("produce");
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_librdkafka_group_of_three_reads_everything_and_its_commits_survive_a_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        BrokerProcess::start(dir.path(), &["--group-initial-rebalance-delay-ms", "500"]);
    create_topic(&broker, "events", 6);
    let seen: SeenOffsets = Arc::new(Mutex::new(BTreeSet::new()));
    let assigned = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(3));
    let members: Vec<GroupMember> = (0..3)
        .map(|i| {
            group_member(
                &broker,
                "views",
                &format!("view-{i}"),
                &[("partition.assignment.strategy", "range,roundrobin")],
                seen.clone(),
                assigned.clone(),
                barrier.clone(),
            )
        })
        .collect();
    wait_until("every member to get partitions", || {
        assigned.load(Ordering::SeqCst) == 3
    });

    // The first half, lz4: read and committed before the broker is killed.
    produce_events(&broker, "lz4", 0, 10_000).await;
    wait_until("10,000 records read", || {
        seen.lock().unwrap().len() == 10_000
    });
    wait_until("the first half committed", || {
        let rows = described_offsets(&broker, "views");
        rows.len() == 6
            && rows
                .values()
                .all(|(c, end)| c.parse::<i64>().ok() == Some(*end))
    });
    let before = described_offsets(&broker, "views");
    broker.kill();
    let broker = broker.restart_on_same_kafka_port();
    // Committed offsets are where the consumers left them, after kill -9.
    assert_eq!(described_offsets(&broker, "views"), before);

    // The second half, zstd: the members rejoin and go on from their commits.
    produce_events(&broker, "zstd", 10_000, 10_000).await;
    wait_until("20,000 records read", || {
        seen.lock().unwrap().len() == 20_000
    });
    for member in &members {
        member.stop.store(true, Ordering::SeqCst);
    }
    let mut owners: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for member in members {
        for tp in member.thread.join().expect("member thread") {
            *owners.entry(tp).or_default() += 1;
        }
    }
    assert_eq!(
        owners.len(),
        6,
        "every partition owned at the end: {owners:?}"
    );
    assert!(
        owners.values().all(|&n| n == 1),
        "one owner each: {owners:?}"
    );
    let seen = seen.lock().unwrap();
    let rows = described_offsets(&broker, "views");
    assert_eq!(rows.len(), 6);
    let mut total = 0;
    for (partition, (committed, end)) in &rows {
        assert_eq!(
            committed.parse::<i64>().ok(),
            Some(*end),
            "partition {partition}"
        );
        let read = seen.iter().filter(|(p, _)| p == partition).count() as i64;
        assert_eq!(read, *end, "every offset of partition {partition} read");
        total += end;
    }
    assert_eq!(total, 20_000);
    let describe = fjord_ok(&broker, &["group", "describe", "views"], b"");
    assert!(describe.contains("State: EMPTY"), "{describe}");
}

/// One Produce v9 of `batch` to partition 0 of `topic`: (error code, base offset).
fn produce_raw(stream: &mut TcpStream, topic: &str, batch: bytes::Bytes) -> (i16, i64) {
    let response = crate::kafka_admin::call(stream, 9, &produce_request(topic, -1, batch));
    let answer = &response.responses[0].partition_responses[0];
    (answer.error_code, answer.base_offset)
}

/// A Produce v9 of `batch` to partition 0 of `topic` with `acks`.
fn produce_request(
    topic: &str,
    acks: i16,
    batch: bytes::Bytes,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::ProduceRequest;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let mut partition = PartitionProduceData::default();
    partition.index = 0;
    partition.records = Some(batch);
    let mut data = TopicProduceData::default();
    data.name = crate::kafka_admin::topic_name(topic);
    data.partition_data = vec![partition];
    let mut request = ProduceRequest::default();
    request.acks = acks;
    request.timeout_ms = 30_000;
    request.topic_data = vec![data];
    request
}

#[test]
fn pipelined_produces_are_appended_and_answered_in_request_order() {
    use fjord::protocol::codec::{Compression, RecordInput, encode_batch};
    use kafka_protocol::messages::{ApiVersionsRequest, ProduceRequest};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "pipe", 1);
    let mut stream = connect(&broker);
    // 24 requests written before any answer is read, as librdkafka pipelines them:
    // acks=all produces (whose answers wait for an fsync) and acks=1 ones, an
    // ApiVersions (answered at once) every sixth, a corrupt batch as the 14th, and an
    // acks=0 produce (no answer at all) as the 20th.
    let batch = |i: i32| {
        let records: Vec<RecordInput> = (0..3)
            .map(|r| RecordInput::new(None, Some(format!("{i}-{r}").into()), 0))
            .collect();
        encode_batch(&records, Compression::None).unwrap()
    };
    let kinds: Vec<&str> = (0..24)
        .map(|i| match i {
            13 => "corrupt",
            19 => "acks0",
            i if i % 6 == 5 => "versions",
            i if i % 3 == 0 => "acks1",
            _ => "acksall",
        })
        .collect();
    let mut frames = bytes::BytesMut::new();
    for (i, kind) in kinds.iter().enumerate() {
        let i = i as i32;
        let frame = match *kind {
            "versions" => crate::kafka_admin::request_frame(i, 3, &ApiVersionsRequest::default()),
            "corrupt" => {
                let mut bad = batch(i).to_vec();
                let last = bad.len() - 1;
                bad[last] ^= 0xff; // fails the CRC
                let request = produce_request("pipe", -1, bad.into());
                crate::kafka_admin::request_frame(i, 9, &request)
            }
            produce => {
                let acks = match produce {
                    "acks0" => 0,
                    "acks1" => 1,
                    _ => -1,
                };
                crate::kafka_admin::request_frame(i, 9, &produce_request("pipe", acks, batch(i)))
            }
        };
        frames.extend_from_slice(&frame);
    }
    stream.write_all(&frames).unwrap();
    // Nothing more to send: the answers to what was sent still come, every one.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut next_offset = 0;
    for (i, kind) in kinds.iter().enumerate() {
        if *kind == "versions" {
            let (id, answer) =
                crate::kafka_admin::read_answer::<ApiVersionsRequest>(&mut stream, 3);
            assert_eq!((id, answer.error_code), (i as i32, 0));
            continue;
        }
        if *kind == "acks0" {
            next_offset += 3; // appended, not answered
            continue;
        }
        let (id, answer) = crate::kafka_admin::read_answer::<ProduceRequest>(&mut stream, 9);
        assert_eq!(id, i as i32, "answers come in request order");
        let answer = &answer.responses[0].partition_responses[0];
        if *kind == "corrupt" {
            assert_eq!((answer.error_code, answer.base_offset), (2, -1)); // CORRUPT_MESSAGE
        } else {
            assert_eq!(
                (answer.error_code, answer.base_offset),
                (0, next_offset),
                "request {i}"
            );
            next_offset += 3;
        }
    }
    // The log holds the records in request order, each once.
    let read = consume(&broker, "pipe", 1, next_offset as usize);
    let values: Vec<String> = read[&0]
        .iter()
        .map(|(_, (_, value, _))| String::from_utf8(value.clone().unwrap()).unwrap())
        .collect();
    let expected: Vec<String> = kinds
        .iter()
        .enumerate()
        .filter(|(_, kind)| matches!(**kind, "acks0" | "acks1" | "acksall"))
        .flat_map(|(i, _)| (0..3).map(move |r| format!("{i}-{r}")))
        .collect();
    assert_eq!(values, expected);
    // Every record written is counted, the unanswered acks=0 ones too.
    let metrics = broker.http_get("/metrics");
    let counted = format!("fjord_produce_records_total{{topic=\"pipe\"}} {next_offset}");
    assert!(metrics.contains(&counted), "{counted} in {metrics}");
}

fn init_producer_id(stream: &mut TcpStream) -> (i64, i16) {
    use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
    let mut request = InitProducerIdRequest::default();
    request.transactional_id = None;
    request.transaction_timeout_ms = 60_000;
    request.producer_id = ProducerId(-1);
    request.producer_epoch = -1;
    let response = crate::kafka_admin::call(stream, 4, &request);
    assert_eq!(response.error_code, 0);
    (response.producer_id.0, response.producer_epoch)
}

fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, n: usize) -> bytes::Bytes {
    use fjord::protocol::codec::{Compression, ProducerFields, RecordInput, encode_batch_with};
    let records: Vec<RecordInput> = (0..n)
        .map(|i| RecordInput::new(Some(b"order-1".to_vec()), Some(format!("v{i}").into()), 0))
        .collect();
    let producer = ProducerFields {
        producer_id,
        producer_epoch: epoch,
        base_sequence: sequence,
    };
    encode_batch_with(&records, Compression::Lz4, producer).unwrap()
}

#[test]
fn an_idempotent_retry_is_written_once_even_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    create_topic(&broker, "idem", 1);
    let mut stream = connect(&broker);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (id, epoch) = init_producer_id(&mut stream);
    let (other, _) = init_producer_id(&mut stream);
    assert_ne!(id, other);
    assert_eq!(epoch, 0);

    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 0, 3)),
        (0, 0)
    );
    // The retry of a batch whose answer was lost: the same offsets, nothing written.
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 0, 3)),
        (0, 0)
    );
    // A gap is OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 5, 1)).0,
        45
    );
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 3, 2)),
        (0, 3)
    );

    // kill -9: the sequence state comes back with the log.
    broker.kill();
    let broker = broker.restart();
    let mut stream = connect(&broker);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 3, 2)),
        (0, 3)
    );
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 5, 1)),
        (0, 5)
    );
    // An older epoch after a newer one: INVALID_PRODUCER_EPOCH (47).
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 1, 0, 1)),
        (0, 6)
    );
    assert_eq!(
        produce_raw(&mut stream, "idem", idempotent_batch(id, 0, 6, 1)).0,
        47
    );
    // Ids handed out before the crash are never handed out again.
    let (after, _) = init_producer_id(&mut stream);
    assert!(after > id.max(other), "{after} after {id} and {other}");
    let read = consume(&broker, "idem", 1, 7);
    assert_eq!(read[&0].len(), 7, "each record once");
}

#[test]
fn requests_for_apis_not_served_get_unsupported_version_and_the_connection_goes_on() {
    use kafka_protocol::messages::{
        ApiVersionsRequest, EndTxnRequest, ListTransactionsRequest, SaslHandshakeRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut stream = connect(&broker);
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sasl = SaslHandshakeRequest::default();
    sasl.mechanism = crate::kafka_admin::str_bytes("PLAIN");
    assert_eq!(
        crate::kafka_admin::call(&mut stream, 1, &sasl).error_code,
        35
    );
    let end = EndTxnRequest::default();
    assert_eq!(
        crate::kafka_admin::call(&mut stream, 3, &end).error_code,
        35
    );
    let list = ListTransactionsRequest::default();
    assert_eq!(
        crate::kafka_admin::call(&mut stream, 0, &list).error_code,
        35
    );
    // The same connection still serves what is advertised.
    let versions = crate::kafka_admin::call(&mut stream, 3, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    let listed: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    for key in [
        0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 19, 20, 21, 22, 23, 32, 33, 37, 42, 44, 60,
    ] {
        assert!(listed.contains(&key), "API {key} advertised: {listed:?}");
    }
    assert!(!listed.contains(&26), "EndTxn is not advertised");
}

/// `fjord group describe GROUP`'s "Group epoch" and "Members" lines.
fn epoch_and_members(broker: &BrokerProcess, group: &str) -> (i32, usize) {
    let out = fjord_ok(broker, &["group", "describe", group], b"");
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .trim()
            .to_owned()
    };
    (
        field("Group epoch:").parse().unwrap(),
        field("Members:").parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_static_member_takes_its_place_back_without_a_rebalance() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &["--group-initial-rebalance-delay-ms", "0"]);
    create_topic(&broker, "events", 4);
    let seen: SeenOffsets = Arc::new(Mutex::new(BTreeSet::new()));
    let assigned = Arc::new(AtomicUsize::new(0));
    let member = |instance: &str| {
        group_member(
            &broker,
            "statics",
            instance,
            &[
                ("group.instance.id", instance),
                ("partition.assignment.strategy", "cooperative-sticky"),
            ],
            seen.clone(),
            assigned.clone(),
            Arc::new(Barrier::new(1)),
        )
    };
    // The first member leads (a leader that restarts would rebalance the group).
    let leader = member("static-0");
    wait_until("the leader's partitions", || {
        assigned.load(Ordering::SeqCst) == 1
    });
    let follower = member("static-1");
    wait_until("both members' partitions", || {
        assigned.load(Ordering::SeqCst) == 2
    });
    produce_events(&broker, "lz4", 0, 1_000).await;
    wait_until("1,000 records read", || seen.lock().unwrap().len() == 1_000);
    wait_until("a stable group of two", || {
        fjord_ok(&broker, &["group", "describe", "statics"], b"").contains("State: STABLE")
    });
    let (epoch, members) = epoch_and_members(&broker, "statics");
    assert_eq!(members, 2);
    // Kafka clients assign partitions themselves: a live group is not reset (as Kafka).
    let reset = [
        "group",
        "reset-offsets",
        "statics",
        "--topic",
        "events",
        "--to-earliest",
    ];
    let (ok, _, stderr) =
        crate::support::fjord(&broker, &[&reset[..], &["--execute"]].concat(), b"");
    assert!(!ok && stderr.contains("active members"), "{stderr}");

    // The follower restarts: a static member leaves no LeaveGroup behind, and its
    // successor under the same group.instance.id takes the place back at once.
    follower.stop.store(true, Ordering::SeqCst);
    let held = follower.thread.join().unwrap();
    assert!(!held.is_empty());
    let successor = member("static-1");
    wait_until("the successor's partitions", || {
        assigned.load(Ordering::SeqCst) == 3
    });
    assert_eq!(
        epoch_and_members(&broker, "statics"),
        (epoch, 2),
        "same generation, no rebalance"
    );
    produce_events(&broker, "zstd", 1_000, 1_000).await;
    wait_until("2,000 records read", || seen.lock().unwrap().len() == 2_000);
    for m in [&leader, &successor] {
        m.stop.store(true, Ordering::SeqCst);
    }
    let successor_held = successor.thread.join().unwrap();
    leader.thread.join().unwrap();
    assert_eq!(
        successor_held, held,
        "the successor got its predecessor's partitions"
    );
}
