//! The acceptance scenarios driven through the `fjord` CLI against the real
//! broker: 100,000 keyed records on 4 partitions, a restart, and retention and compaction
//! changed with `fjord topic alter` and seen with `fjord consume`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::{BrokerProcess, fjord_ok};

const RECORDS: usize = 100_000;
const KEYS: usize = 1_000;

/// `fjord consume TOPIC --partition P --from-beginning --print-offset --print-key`.
fn consume_partition(broker: &BrokerProcess, topic: &str, p: u32) -> Vec<(i64, String, String)> {
    let partition = p.to_string();
    let args = [
        "consume",
        topic,
        "--partition",
        &partition,
        "--from-beginning",
        "--print-offset",
        "--print-key",
    ];
    fjord_ok(broker, &args, b"")
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let offset = fields.next().unwrap().parse().unwrap();
            let key = fields.next().unwrap().to_owned();
            (offset, key, fields.next().unwrap_or("").to_owned())
        })
        .collect()
}

fn check_keyed_topic(broker: &BrokerProcess) -> usize {
    let mut total = 0;
    for p in 0..4u32 {
        let records = consume_partition(broker, "orders", p);
        let mut last_seq: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (offset, key, value)) in records.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "partition {p}: offsets from 0 without gaps"
            );
            let expected = fjord::client::partition_for_key(key.as_bytes(), 4);
            assert_eq!(expected, p, "key {key} is on the partition murmur2 gives");
            let seq: usize = value.strip_prefix("order-").unwrap().parse().unwrap();
            if let Some(prev) = last_seq.insert(key, seq) {
                assert!(
                    prev < seq,
                    "partition {p}: {key} out of order ({prev} then {seq})"
                );
            }
        }
        total += records.len();
    }
    total
}

#[test]
fn a_hundred_thousand_keyed_records_through_the_cli_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    fjord_ok(
        &broker,
        &["topic", "create", "orders", "--partitions", "4"],
        b"",
    );
    let mut input = String::with_capacity(RECORDS * 24);
    for i in 0..RECORDS {
        input.push_str(&format!("customer-{}:order-{i}\n", i % KEYS));
    }
    fjord_ok(
        &broker,
        &["produce", "orders", "--key-separator", ":", "--acks", "all"],
        input.as_bytes(),
    );
    assert_eq!(check_keyed_topic(&broker), RECORDS);
    let offsets = fjord_ok(&broker, &["offsets", "orders"], b"");
    let latest: i64 = offsets
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(latest, RECORDS as i64);
    assert!(broker.stop(), "SIGTERM exits 0");
    let broker = broker.restart();
    assert_eq!(
        check_keyed_topic(&broker),
        RECORDS,
        "everything again after a restart"
    );
}

fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn retention_and_compaction_change_with_topic_alter_and_show_in_consume() {
    let dir = tempfile::tempdir().unwrap();
    let fast = [
        "--log-retention-check-interval-ms",
        "100",
        "--log-cleaner-backoff-ms",
        "100",
    ];
    let broker = BrokerProcess::start(dir.path(), &fast);
    // Created as a plain topic, turned into a compacted one by `topic alter`.
    fjord_ok(
        &broker,
        &[
            "topic",
            "create",
            "profiles",
            "--config",
            "segment.bytes=1024",
        ],
        b"",
    );
    // One `fjord produce` per round: each is at least one batch, so segments fill and
    // roll (compaction only ever touches sealed segments).
    for round in 0..20 {
        let input: String = (0..5)
            .map(|user| format!("user{user}:v{round:02}-{}\n", "x".repeat(20)))
            .collect();
        let args = ["produce", "profiles", "--key-separator", ":"];
        fjord_ok(&broker, &args, input.as_bytes());
    }
    let all = || {
        fjord_ok(
            &broker,
            &["consume", "profiles", "--from-beginning", "--print-key"],
            b"",
        )
    };
    assert_eq!(all().lines().count(), 100);
    let alter = [
        "topic",
        "alter",
        "profiles",
        "--config",
        "cleanup.policy=compact",
        "--config",
    ];
    fjord_ok(
        &broker,
        &[&alter[..], &["min.cleanable.dirty.ratio=0.01"]].concat(),
        b"",
    );
    eventually(Duration::from_secs(30), "compaction", || {
        all().lines().count() < 40
    });
    let mut latest = BTreeMap::new();
    for line in all().lines() {
        let (key, value) = line.split_once('\t').unwrap();
        latest.insert(key.to_owned(), value.to_owned());
    }
    assert_eq!(latest.len(), 5);
    assert!(latest.values().all(|v| v.starts_with("v19-")), "{latest:?}");

    // Retention by size, switched on without a restart.
    fjord_ok(
        &broker,
        &["topic", "create", "logs", "--config", "segment.bytes=1024"],
        b"",
    );
    for chunk in 0..12 {
        let lines: String = (chunk * 5..chunk * 5 + 5)
            .map(|i| format!("line {i:04} {}\n", "y".repeat(40)))
            .collect();
        fjord_ok(&broker, &["produce", "logs"], lines.as_bytes());
    }
    let earliest = || -> i64 {
        let out = fjord_ok(&broker, &["offsets", "logs"], b"");
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert_eq!(earliest(), 0);
    fjord_ok(
        &broker,
        &["topic", "alter", "logs", "--config", "retention.bytes=2048"],
        b"",
    );
    eventually(Duration::from_secs(30), "retention", || earliest() > 0);
    let rest = fjord_ok(&broker, &["consume", "logs", "--from-beginning"], b"");
    let first = rest.lines().next().unwrap();
    assert_eq!(first, format!("line {:04} {}", earliest(), "y".repeat(40)));
    assert!(rest.lines().last().unwrap().starts_with("line 0059"));
}
