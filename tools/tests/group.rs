//! Tests of `fjord group` against the real broker binary (`target/<profile>/fjord-broker`,
//! built by `cargo build -p fjord-broker` or `cargo test --workspace`). Each test starts
//! its own broker on port 0 in a temp dir. Offsets are set through `fjord group
//! reset-offsets --execute` or `Admin::reset_group_offsets` on idle groups; a live member
//! is a raw `GroupHeartbeat` (no heartbeats follow, and none is waited for). No sleeps.

mod common;

use std::collections::BTreeMap;

use common::*;
use fjord_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicPartition};
use fjord_protocol::v1::{GroupHeartbeatRequest, fjord_client::FjordClient};

/// Produces `n` records to one partition through `fjord produce`.
fn produce(broker: &Broker, topic: &str, partition: u32, n: usize) {
    let input: String = (0..n).map(|i| format!("record {i}\n")).collect();
    let partition = partition.to_string();
    ok(fjord_at(
        &broker.addr,
        &["produce", topic, "--partition", &partition],
        input.as_bytes(),
    ));
}

/// Runs `fjord group reset-offsets GROUP ARGS`, asserts success and returns its stdout
/// and its one line of stderr.
fn reset(broker: &Broker, group: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["group", "reset-offsets", group];
    all.extend_from_slice(args);
    let output = fjord(broker, &all);
    let stderr = String::from_utf8(output.stderr.clone()).expect("utf-8 stderr");
    let stdout = ok(output);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    (stdout, stderr.trim_end().to_string())
}

/// The lines `lines` joined as a command prints them.
fn text(lines: &[&str]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The rows of the partition table of `fjord group describe` (its last table), split at
/// whitespace.
fn partition_rows(describe: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = describe.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("TOPIC "))
        .unwrap_or_else(|| panic!("no partition table in {describe:?}"));
    assert_eq!(
        lines[header].split_whitespace().collect::<Vec<_>>(),
        [
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID"
        ]
    );
    lines[header + 1..]
        .iter()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// A group's committed offsets: (topic, partition) -> offset.
async fn committed(admin: &Admin, group: &str) -> BTreeMap<(String, u32), i64> {
    admin
        .group_offsets(group, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|(tp, c)| ((tp.topic, tp.partition), c.offset))
        .collect()
}

/// Sets committed offsets of an idle group through the client.
async fn set_offsets(admin: &Admin, group: &str, offsets: &[(&str, u32, i64)]) {
    let offsets: Vec<(TopicPartition, i64)> = offsets
        .iter()
        .map(|&(topic, partition, offset)| (TopicPartition::new(topic, partition), offset))
        .collect();
    let revoked = admin.reset_group_offsets(group, &offsets).await.unwrap();
    assert!(!revoked, "the group is idle");
}

/// One reset mode, run from `baseline`: the dry run prints `plan` and changes nothing;
/// `--execute` prints the same plan and sets exactly the planned partitions.
struct Case<'a> {
    broker: &'a Broker,
    admin: &'a Admin,
    group: &'a str,
    baseline: &'a [(&'a str, u32, i64)],
}

impl Case<'_> {
    async fn check(&self, args: &[&str], plan: &[&str]) {
        set_offsets(self.admin, self.group, self.baseline).await;
        let before = committed(self.admin, self.group).await;

        let (stdout, stderr) = reset(self.broker, self.group, args);
        assert_eq!(stdout, text(plan), "dry run of {args:?}");
        assert!(
            stderr.contains("dry run") && stderr.contains("--execute"),
            "{stderr}"
        );
        assert_eq!(
            committed(self.admin, self.group).await,
            before,
            "a dry run changes nothing: {args:?}"
        );

        let mut execute = args.to_vec();
        execute.push("--execute");
        let (stdout, stderr) = reset(self.broker, self.group, &execute);
        assert_eq!(stdout, text(plan), "{execute:?}");
        assert!(
            stderr.starts_with(&format!("reset the offsets of group {}", self.group)),
            "{stderr}"
        );
        assert!(
            !stderr.contains("gave them up"),
            "the group is idle: {stderr}"
        );
        let mut expected = before;
        for line in plan {
            let fields: Vec<&str> = line.split(' ').collect();
            let [topic, partition, _, "->", new] = fields[..] else {
                panic!("not a plan line: {line:?}");
            };
            expected.insert(
                (topic.to_string(), partition.parse().unwrap()),
                new.parse().unwrap(),
            );
        }
        assert_eq!(
            committed(self.admin, self.group).await,
            expected,
            "{execute:?}"
        );
    }
}

#[tokio::test]
async fn list_describe_and_delete() {
    // (Blocking calls in this async test are fine: nothing else runs meanwhile.)
    let broker = Broker::start();
    ok(fjord(
        &broker,
        &["topic", "create", "orders", "--partitions", "2"],
    ));
    produce(&broker, "orders", 0, 10);
    produce(&broker, "orders", 1, 3);
    assert_eq!(ok(fjord(&broker, &["group", "list"])), "");

    // Resetting the offsets of a group that does not exist yet creates it.
    let (stdout, _) = reset(
        &broker,
        "billing",
        &[
            "--topic",
            "orders",
            "--partition",
            "0",
            "--to-offset",
            "4",
            "--execute",
        ],
    );
    assert_eq!(stdout, "orders 0 - -> 4\n");
    reset(
        &broker,
        "audit",
        &["--topic", "orders", "--to-earliest", "--execute"],
    );
    assert_eq!(ok(fjord(&broker, &["group", "list"])), "audit\nbilling\n");

    let described = ok(fjord(&broker, &["group", "describe", "billing"]));
    let lines: Vec<&str> = described.lines().collect();
    assert_eq!(
        lines[..2],
        ["Group: billing", "State: EMPTY"],
        "{described}"
    );
    assert!(lines[2].starts_with("Group epoch: "), "{described}");
    assert_eq!(lines[3], "Members: 0", "{described}");
    assert_eq!(lines[4], "Partitions: 1", "{described}");
    assert_eq!(
        partition_rows(&described),
        [row(&["orders", "0", "4", "10", "6", "-"])],
        "10 records, 4 committed: a lag of 6"
    );

    // A member joins: it owns both partitions, and partition 1 has nothing committed.
    let mut client = FjordClient::connect(format!("http://{}", broker.addr))
        .await
        .unwrap();
    let joined = client
        .group_heartbeat(GroupHeartbeatRequest {
            group_id: "billing".into(),
            subscriptions: vec!["orders".into()],
            subscriptions_changed: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.assignment.len(), 2, "{joined:?}");
    let member = joined.member_id.as_str();
    let described = ok(fjord(&broker, &["group", "describe", "billing"]));
    let lines: Vec<&str> = described.lines().collect();
    assert_eq!(lines[3], "Members: 1", "{described}");
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["CONSUMER-ID", "EPOCH", "ASSIGNMENT"]
    );
    assert_eq!(
        lines[5].split_whitespace().collect::<Vec<_>>(),
        [member, &joined.member_epoch.to_string(), "orders(0,1)"],
        "{described}"
    );
    assert_eq!(lines[6], "Partitions: 2", "{described}");
    assert_eq!(
        partition_rows(&described),
        [
            row(&["orders", "0", "4", "10", "6", member]),
            row(&["orders", "1", "-", "3", "3", member]),
        ],
        "nothing committed: '-', lagging by the whole log"
    );

    // A group with a member cannot be deleted.
    let e = fails(fjord(&broker, &["group", "delete", "billing"]));
    assert!(e.contains("billing") && e.contains("active members"), "{e}");
    assert_eq!(ok(fjord(&broker, &["group", "list"])), "audit\nbilling\n");

    // Once it left, it can.
    client
        .group_heartbeat(GroupHeartbeatRequest {
            group_id: "billing".into(),
            member_id: member.to_string(),
            member_epoch: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok(fjord(&broker, &["group", "delete", "billing"])), "");
    assert_eq!(ok(fjord(&broker, &["group", "list"])), "audit\n");
    let e = fails(fjord(&broker, &["group", "describe", "billing"]));
    assert!(e.contains("unknown group billing"), "{e}");
    let admin = Admin::connect(&broker.addr).await.unwrap();
    assert!(committed(&admin, "billing").await.is_empty());

    let e = fails(fjord(&broker, &["group", "delete", "nope"]));
    assert!(e.contains("unknown group nope"), "{e}");
}

#[tokio::test]
async fn reset_offsets_by_offset_position_and_shift() {
    let broker = Broker::start();
    ok(fjord(
        &broker,
        &["topic", "create", "t", "--partitions", "3"],
    ));
    ok(fjord(&broker, &["topic", "create", "other"]));
    produce(&broker, "t", 0, 10);
    produce(&broker, "t", 1, 10);
    produce(&broker, "t", 2, 5);
    produce(&broker, "other", 0, 3);
    // Partition 1 starts at 2: t is [0, 10), [2, 10) and [0, 5).
    ok(fjord(
        &broker,
        &["delete-records", "t", "--partition", "1", "--before", "2"],
    ));
    let admin = Admin::connect(&broker.addr).await.unwrap();
    let case = Case {
        broker: &broker,
        admin: &admin,
        group: "g",
        baseline: &[("t", 0, 4), ("t", 1, 6), ("t", 2, 1), ("other", 0, 2)],
    };
    let t = ["--topic", "t"];
    let with = |args: &[&'static str]| -> Vec<&'static str> { [&t[..], args].concat() };

    case.check(
        &with(&["--to-earliest"]),
        &["t 0 4 -> 0", "t 1 6 -> 2", "t 2 1 -> 0"],
    )
    .await;
    case.check(
        &with(&["--to-latest"]),
        &["t 0 4 -> 10", "t 1 6 -> 10", "t 2 1 -> 5"],
    )
    .await;
    // --to-offset is kept within [log start, high watermark].
    case.check(
        &with(&["--to-offset", "7"]),
        &["t 0 4 -> 7", "t 1 6 -> 7", "t 2 1 -> 5"],
    )
    .await;
    case.check(
        &with(&["--to-offset", "0", "--partition", "1"]),
        &["t 1 6 -> 2"],
    )
    .await;
    // --to-datetime: every record here was written now.
    case.check(
        &with(&["--to-datetime", "1970-01-01T00:00:00Z"]),
        &["t 0 4 -> 0", "t 1 6 -> 2", "t 2 1 -> 0"],
    )
    .await;
    case.check(
        &with(&["--to-datetime", "2100-01-01T00:00:00Z"]),
        &["t 0 4 -> 10", "t 1 6 -> 10", "t 2 1 -> 5"],
    )
    .await;
    // --shift-by, forwards and back, clamped at both ends.
    case.check(
        &with(&["--shift-by", "3"]),
        &["t 0 4 -> 7", "t 1 6 -> 9", "t 2 1 -> 4"],
    )
    .await;
    case.check(
        &with(&["--shift-by", "-5"]),
        &["t 0 4 -> 0", "t 1 6 -> 2", "t 2 1 -> 0"],
    )
    .await;
    case.check(
        &with(&["--shift-by", "8"]),
        &["t 0 4 -> 10", "t 1 6 -> 10", "t 2 1 -> 5"],
    )
    .await;
    // --partition limits any mode to one partition.
    case.check(&with(&["--partition", "2", "--to-latest"]), &["t 2 1 -> 5"])
        .await;
    case.check(
        &with(&["--partition", "0", "--shift-by=-1"]),
        &["t 0 4 -> 3"],
    )
    .await;

    // The plan and the lag agree: after --to-offset 7, describe shows it.
    let (_, stderr) = reset(&broker, "g", &with(&["--to-offset", "7", "--execute"]));
    assert!(stderr.contains("on 3 partitions"), "{stderr}");
    let described = ok(fjord(&broker, &["group", "describe", "g"]));
    assert_eq!(
        partition_rows(&described),
        [
            row(&["other", "0", "2", "3", "1", "-"]),
            row(&["t", "0", "7", "10", "3", "-"]),
            row(&["t", "1", "7", "10", "3", "-"]),
            row(&["t", "2", "5", "5", "0", "-"]),
        ],
        "{described}"
    );
}

#[tokio::test]
async fn reset_offsets_to_datetime_picks_the_first_record_at_or_after_it() {
    let broker = Broker::start();
    ok(fjord(
        &broker,
        &["topic", "create", "timed", "--partitions", "2"],
    ));
    let producer = Producer::connect(&broker.addr, ProducerConfig::default())
        .await
        .unwrap();
    // Partition 0: offsets 0..4 at 1 s, 2 s, 3 s, 4 s; partition 1: offsets 0, 1 at 1 s, 5 s.
    for (partition, times) in [(0, &[1000, 2000, 3000, 4000][..]), (1, &[1000, 5000][..])] {
        for (i, &ts) in times.iter().enumerate() {
            let sent = producer
                .send_record(ProducerRecord {
                    topic: "timed".into(),
                    partition: Some(partition),
                    value: Some(format!("at {ts}").into()),
                    timestamp_ms: Some(ts),
                    ..ProducerRecord::default()
                })
                .await
                .unwrap();
            assert_eq!(sent.offset, i as i64);
        }
    }
    let admin = Admin::connect(&broker.addr).await.unwrap();
    let case = Case {
        broker: &broker,
        admin: &admin,
        group: "g",
        baseline: &[("timed", 0, 0), ("timed", 1, 1)],
    };
    let at = |time: &'static str| ["--topic", "timed", "--to-datetime", time];
    case.check(
        &at("1970-01-01T00:00:02.500Z"),
        &["timed 0 0 -> 2", "timed 1 1 -> 1"],
    )
    .await;
    // Exactly at a record's time: that record.
    case.check(
        &at("1970-01-01T01:00:02+01:00"),
        &["timed 0 0 -> 1", "timed 1 1 -> 1"],
    )
    .await;
    // After partition 0's last record: its high watermark.
    case.check(
        &at("1970-01-01T00:00:04.500Z"),
        &["timed 0 0 -> 4", "timed 1 1 -> 1"],
    )
    .await;
    case.check(
        &[
            "--topic",
            "timed",
            "--partition",
            "1",
            "--to-datetime",
            "1970-01-01T00:00:00Z",
        ],
        &["timed 1 1 -> 0"],
    )
    .await;
}

#[tokio::test]
async fn reset_offsets_errors() {
    let broker = Broker::start();
    ok(fjord(
        &broker,
        &["topic", "create", "t", "--partitions", "2"],
    ));
    produce(&broker, "t", 0, 3);
    let admin = Admin::connect(&broker.addr).await.unwrap();

    // Usage errors: no mode, two modes, bad values, no topic.
    for args in [
        vec!["--topic", "t"],
        vec!["--topic", "t", "--to-earliest", "--to-latest"],
        vec!["--topic", "t", "--to-offset", "1", "--shift-by", "1"],
        vec!["--topic", "t", "--to-datetime", "yesterday"],
        vec!["--topic", "t", "--to-offset", "-1"],
        vec!["--topic", "t", "--shift-by", "one"],
        vec!["--to-earliest"],
    ] {
        let mut all = vec!["group", "reset-offsets", "g"];
        all.extend(&args);
        let out = fjord(&broker, &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }

    // Unknown topic and partition.
    let e = fails(fjord(
        &broker,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "nope",
            "--to-latest",
        ],
    ));
    assert!(e.contains("unknown topic nope"), "{e}");
    let e = fails(fjord(
        &broker,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--partition",
            "7",
            "--to-latest",
            "--execute",
        ],
    ));
    assert!(e.contains("no partition 7"), "{e}");

    // A dry run on a new group plans from nothing and does not create it.
    let (stdout, _) = reset(&broker, "g", &["--topic", "t", "--to-latest"]);
    assert_eq!(stdout, "t 0 - -> 3\nt 1 - -> 0\n");
    assert_eq!(ok(fjord(&broker, &["group", "list"])), "");

    // --shift-by needs a committed offset on every partition it moves.
    set_offsets(&admin, "g", &[("t", 0, 1)]).await;
    let e = fails(fjord(
        &broker,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--shift-by",
            "1",
            "--execute",
        ],
    ));
    assert!(e.contains("no committed offset for t-1"), "{e}");
    let only_t0 = BTreeMap::from([(("t".to_string(), 0), 1)]);
    assert_eq!(committed(&admin, "g").await, only_t0, "nothing changed");
    let (stdout, _) = reset(
        &broker,
        "g",
        &["--topic", "t", "--partition", "0", "--shift-by", "1"],
    );
    assert_eq!(stdout, "t 0 1 -> 2\n");
}
