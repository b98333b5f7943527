//! Tests of `fjord perf` against the real broker binary (`target/<profile>/fjord-broker`,
//! built by `cargo build -p fjord-broker` or `cargo test --workspace`). Each test starts
//! its own broker on port 0 in a temp dir, runs small loads, and checks the shape and the
//! sanity of the figures, never the speed. No sleeps as synchronisation: waits poll a
//! condition against a deadline.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

use serde_json::{Map, Value};

/// The keys of every produce and e2e report.
const RATE_KEYS: [&str; 3] = ["records", "records_per_sec", "mb_per_sec"];
const LATENCY_KEYS: [&str; 5] = [
    "latency_ms_avg",
    "latency_ms_p50",
    "latency_ms_p99",
    "latency_ms_p999",
    "latency_ms_max",
];

/// Parses stdout as exactly one JSON object on one line.
fn json(stdout: &str) -> Map<String, Value> {
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    match serde_json::from_str::<Value>(stdout) {
        Ok(Value::Object(map)) => map,
        other => panic!("not a JSON object: {other:?} from {stdout:?}"),
    }
}

/// The keys of a report, sorted (serde_json's map sorts them).
fn keys(report: &Map<String, Value>) -> Vec<&str> {
    report.keys().map(String::as_str).collect()
}

/// `keys` sorted.
fn sorted<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys
}

fn number(report: &Map<String, Value>, key: &str) -> f64 {
    report
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} is not a number in {report:?}"))
}

/// `records` is `n` and the rates are positive.
fn check_rates(report: &Map<String, Value>, n: u64) {
    assert_eq!(report["records"].as_u64(), Some(n), "{report:?}");
    for key in &RATE_KEYS[1..] {
        assert!(number(report, key) > 0.0, "{key} in {report:?}");
    }
}

/// The latency keys are there, positive and ordered.
fn check_latencies(report: &Map<String, Value>) {
    let [avg, p50, p99, p999, max] = LATENCY_KEYS.map(|k| number(report, k));
    assert!(avg > 0.0 && p50 > 0.0, "{report:?}");
    assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{report:?}");
    assert!(avg <= max, "{report:?}");
}

/// What `ask` gets from the broker through an admin client.
fn with_admin<F, T>(broker: &Broker, ask: impl FnOnce(fjord_client::Admin) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let admin = fjord_client::Admin::connect(&broker.addr).await.unwrap();
        ask(admin).await
    })
}

/// The high watermark of every partition of `topic`.
fn high_watermarks(broker: &Broker, topic: &str) -> Vec<i64> {
    with_admin(broker, |admin| async move {
        let described = admin.describe_topic(topic).await.unwrap();
        described
            .partitions
            .iter()
            .map(|p| p.high_watermark)
            .collect()
    })
}

/// Per partition of `topic`, the first offset with a timestamp at or after `ms`.
fn offsets_at(broker: &Broker, topic: &str, ms: i64) -> Vec<Option<i64>> {
    with_admin(broker, |admin| async move {
        let offsets = admin.list_offsets(topic, fjord_client::OffsetSpec::Timestamp(ms));
        offsets.await.unwrap().iter().map(|o| o.offset).collect()
    })
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("after 1970").as_millis() as i64
}

#[test]
fn produce_reports_every_record_as_json() {
    let broker = Broker::start();
    let args = [
        "perf",
        "produce",
        "--topic",
        "load",
        "--num-records",
        "2000",
        "--record-size",
        "100",
        "--json",
    ];
    let before = now_ms();
    let report = json(&ok(fjord(&broker, &args)));
    let after = now_ms();
    assert_eq!(
        keys(&report),
        sorted(&[&RATE_KEYS[..], &LATENCY_KEYS[..]].concat())
    );
    check_rates(&report, 2000);
    // Each record carries the time it was sent as its creation time: none before the run
    // began, none after it ended.
    assert_eq!(offsets_at(&broker, "load", before), [Some(0)]);
    assert_eq!(offsets_at(&broker, "load", after + 1), [None]);
    check_latencies(&report);
    // MB/s is records/s x 100 bytes / 1,000,000 (up to the rounding to 3 decimals).
    let mb = number(&report, "records_per_sec") * 100.0 / 1e6;
    assert!(
        (number(&report, "mb_per_sec") - mb).abs() < 0.002,
        "{report:?}"
    );
    // The topic was created with one partition, which holds every record.
    assert_eq!(high_watermarks(&broker, "load"), [2000]);
}

#[test]
fn produce_with_several_producers_partitions_and_a_cap() {
    let broker = Broker::start();
    let args = [
        "perf",
        "produce",
        "--topic",
        "spread",
        "--num-records",
        "2001",
        "--record-size",
        "100",
        "--producers",
        "2",
        "--partitions",
        "3",
        "--acks",
        "1",
        "--throughput",
        "20000",
        "--batch-bytes",
        "4096",
        "--linger-ms",
        "1",
        "--json",
    ];
    let report = json(&ok(fjord(&broker, &args)));
    check_rates(&report, 2001);
    check_latencies(&report);
    let hws = high_watermarks(&broker, "spread");
    assert_eq!(hws.len(), 3);
    assert_eq!(hws.iter().sum::<i64>(), 2001);
    // 2001 records at 20,000/s at most take 100 ms at least.
    assert!(number(&report, "records_per_sec") <= 20_100.0, "{report:?}");

    // The human summary, on the existing topic; -1 is unlimited.
    let args = [
        "perf",
        "produce",
        "--topic",
        "spread",
        "--num-records",
        "500",
        "--record-size",
        "10",
        "--throughput",
        "-1",
        "--compression",
        "lz4",
    ];
    let text = ok(fjord(&broker, &args));
    let line = text.strip_suffix('\n').expect("one line");
    assert!(!line.contains('\n'), "{text:?}");
    let words: Vec<&str> = line.split(' ').collect();
    let shape: Vec<&str> = words
        .iter()
        .map(|w| {
            let w = w.trim_start_matches('(');
            if w.parse::<f64>().is_ok() { "#" } else { w }
        })
        .collect();
    assert_eq!(
        shape.join(" "),
        "# records sent, # records/sec # MB/sec), # ms avg latency, # ms 50th, # ms 99th, \
         # ms 99.9th, # ms max latency.",
        "{line}"
    );
    assert_eq!(words[0], "500");
    assert_eq!(high_watermarks(&broker, "spread").iter().sum::<i64>(), 2501);
}

#[test]
fn consume_reads_to_the_end_or_a_count() {
    let broker = Broker::start();
    let produce = [
        "perf",
        "produce",
        "--topic",
        "read",
        "--num-records",
        "2000",
        "--record-size",
        "100",
        "--partitions",
        "2",
        "--json",
    ];
    json(&ok(fjord(&broker, &produce)));

    let args = ["perf", "consume", "--topic", "read", "--from-beginning"];
    let report = json(&ok(fjord(&broker, &[&args[..], &["--json"]].concat())));
    assert_eq!(keys(&report), sorted(&RATE_KEYS));
    check_rates(&report, 2000);
    // Values only (keys are null): 100 bytes a record.
    let mb = number(&report, "records_per_sec") * 100.0 / 1e6;
    assert!(
        (number(&report, "mb_per_sec") - mb).abs() < 0.002,
        "{report:?}"
    );

    let some = [&args[..], &["--num-records", "500", "--json"]].concat();
    check_rates(&json(&ok(fjord(&broker, &some))), 500);

    let text = ok(fjord(&broker, &args));
    assert!(
        text.starts_with("2000 records consumed in ") && text.ends_with(" MB/sec).\n"),
        "{text:?}"
    );

    // As a group member: the group reads from the start, then only what came after its
    // commit.
    let group = [&args[..], &["--group", "readers"]].concat();
    let first = [&group[..], &["--num-records", "2000", "--json"]].concat();
    check_rates(&json(&ok(fjord(&broker, &first))), 2000);
    let mut more = produce.to_vec();
    more[5] = "300";
    json(&ok(fjord(&broker, &more)));
    let rest = [&group[..], &["--num-records", "300", "--json"]].concat();
    check_rates(&json(&ok(fjord(&broker, &rest))), 300);
    let described = ok(fjord(&broker, &["group", "describe", "readers"]));
    assert!(
        described.contains("State: EMPTY"),
        "left the group: {described}"
    );
    // Without a count a group member has no end to stop at: a usage error.
    let no_count = fjord(&broker, &group);
    assert_eq!(no_count.status.code(), Some(2), "{no_count:?}");
}

#[test]
fn consume_from_the_end_waits_for_new_records() {
    let broker = Broker::start();
    let produce = [
        "perf",
        "produce",
        "--topic",
        "tail",
        "--num-records",
        "100",
        "--record-size",
        "50",
        "--json",
    ];
    json(&ok(fjord(&broker, &produce)));
    let consume = [
        "perf",
        "consume",
        "--topic",
        "tail",
        "--num-records",
        "300",
        "--json",
    ];
    let mut consumer = fjord_command(&broker.addr, &consume)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fjord");
    // The consumer starts at the end: the 100 records before are not counted. Produce
    // until it has seen 300 new ones, however long it takes to get there.
    let start = Instant::now();
    while consumer.try_wait().expect("try_wait").is_none() {
        assert!(start.elapsed() < DEADLINE, "the consumer never finished");
        json(&ok(fjord(&broker, &produce)));
    }
    let report = json(&ok(consumer.wait_with_output().expect("output")));
    check_rates(&report, 300);
}

#[test]
fn e2e_delivers_every_record_at_the_rate() {
    let broker = Broker::start();
    let args = [
        "perf",
        "e2e",
        "--topic",
        "e2e",
        "--rate",
        "200",
        "--duration",
        "1",
        "--json",
    ];
    let report = json(&ok(fjord(&broker, &args)));
    assert_eq!(
        keys(&report),
        sorted(&[&RATE_KEYS[..], &LATENCY_KEYS[..]].concat())
    );
    check_rates(&report, 200);
    check_latencies(&report);
    // 200 records at 200/s: the last one is sent 995 ms after the first at the earliest.
    assert!(number(&report, "records_per_sec") <= 202.0, "{report:?}");
    assert_eq!(high_watermarks(&broker, "e2e"), [200]);

    // Records already in the topic are not delivered again; acks=1, small records.
    let args = [
        "perf",
        "e2e",
        "--topic",
        "e2e",
        "--rate",
        "500",
        "--duration",
        "0.2",
        "--acks",
        "1",
        "--record-size",
        "16",
    ];
    let text = ok(fjord(&broker, &args));
    assert!(
        text.starts_with("100 records delivered, ") && text.contains(" ms 99.9th, "),
        "{text:?}"
    );
}

#[test]
fn disk_measures_and_cleans_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().expect("utf-8 path");
    let output = Command::new(env!("CARGO_BIN_EXE_fjord"))
        .args([
            "perf",
            "disk",
            "--dir",
            path,
            "--size-mb",
            "8",
            "--fsyncs",
            "20",
        ])
        .arg("--json")
        .output()
        .expect("run fjord");
    let report = json(&ok(output));
    let expected = [
        "write_mb_per_sec",
        "page_cache_write_mb_per_sec",
        "fdatasync_ms_p50",
        "fdatasync_ms_p99",
        "read_mb_per_sec",
    ];
    assert_eq!(keys(&report), sorted(&expected));
    assert!(number(&report, "write_mb_per_sec") > 0.0, "{report:?}");
    assert!(
        number(&report, "page_cache_write_mb_per_sec") > 0.0,
        "{report:?}"
    );
    assert!(number(&report, "read_mb_per_sec") > 0.0, "{report:?}");
    let (p50, p99) = (
        number(&report, "fdatasync_ms_p50"),
        number(&report, "fdatasync_ms_p99"),
    );
    assert!(p50 >= 0.0 && p50 <= p99, "{report:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let broker = Broker::start();
    let unknown = fails(fjord(
        &broker,
        &["perf", "consume", "--topic", "nope", "--from-beginning"],
    ));
    assert!(unknown.contains("nope"), "{unknown}");

    let line = fails(fjord(&broker, &["perf", "consume", "--topic", "nope"]));
    assert!(line.contains("--num-records"), "{line}");

    let base = ["perf", "produce", "--topic", "t", "--num-records", "10"];
    let line = fails(fjord(
        &broker,
        &[&base[..], &["--record-size", "10", "--throughput", "0"]].concat(),
    ));
    assert!(line.contains("--throughput"), "{line}");
    ok(fjord(
        &broker,
        &[&base[..], &["--record-size", "10"]].concat(),
    ));
    let line = fails(fjord(
        &broker,
        &[&base[..], &["--record-size", "10", "--partitions", "2"]].concat(),
    ));
    assert!(line.contains("1 partitions"), "{line}");
    // Over the topic's max.message.bytes: the broker refuses the batch.
    let line = fails(fjord(
        &broker,
        &[&base[..], &["--record-size", "2000000"]].concat(),
    ));
    assert!(line.contains("records failed"), "{line}");

    let line = fails(fjord(
        &broker,
        &[
            "perf",
            "e2e",
            "--topic",
            "t",
            "--rate",
            "10",
            "--duration",
            "1",
        ]
        .into_iter()
        .chain(["--record-size", "8"])
        .collect::<Vec<_>>(),
    ));
    assert!(line.contains("--record-size"), "{line}");

    let line = fails(fjord(
        &broker,
        &["perf", "disk", "--dir", "/nonexistent/fjord-perf"],
    ));
    assert!(line.contains("/nonexistent/fjord-perf"), "{line}");

    // No broker at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let output = fjord_command(&addr, &[&base[..], &["--record-size", "10"]].concat())
        .output()
        .expect("run fjord");
    let line = fails(output);
    assert!(line.contains(&addr), "{line}");
}
