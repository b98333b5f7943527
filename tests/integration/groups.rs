//! Consumer groups through the real binaries: `fjord consume --group` member processes
//! sharing partitions, surviving a kill -9 of one member and restarts of the broker,
//! `group describe` / `/metrics` lag, and live offset resets.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fjord::client::{
    Admin, AutoOffsetReset, ClientError, Consumer, ConsumerConfig, ConsumerRecord,
    GroupDescription, RebalanceListener, TopicPartition, partition_for_key,
};

use crate::support::{BrokerProcess, binary, eventually, fjord, fjord_ok};

/// Short group timings so that moves happen quickly in tests.
const SESSION_TIMEOUT_MS: u64 = 3_000;
const GROUP_ARGS: &[&str] = &[
    "--group-consumer-session-timeout-ms",
    "3000",
    "--group-consumer-heartbeat-interval-ms",
    "100",
];
const WAIT: Duration = Duration::from_secs(60);

/// A `fjord consume --group ... --follow` process whose stdout lines are collected.
struct Member {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(broker: &BrokerProcess, args: &[&str]) -> Member {
        let mut child = Command::new(binary("fjord"))
            .arg("--brokers")
            .arg(broker.grpc_addr.to_string())
            .arg("consume")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fjord consume");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Member {
            child: Some(child),
            lines,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM; the member commits and leaves, and must exit 0.
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "member exit after SIGTERM: {exit:?}");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn describe(admin: &Admin, group: &str) -> Option<GroupDescription> {
    admin.describe_group(group).await.ok()
}

/// The committed offset of every partition of `group`.
async fn committed(admin: &Admin, group: &str) -> BTreeMap<u32, Option<i64>> {
    let d = admin.describe_group(group).await.expect("describe");
    d.partitions
        .iter()
        .map(|p| (p.partition, p.committed_offset))
        .collect()
}

/// `key-N\tvalue-N` lines for N in `range`.
fn keyed_lines(range: std::ops::Range<u32>) -> Vec<u8> {
    range
        .map(|i| format!("key-{i}\tvalue-{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Values in `--print-offset --print-key` lines (`OFFSET\tKEY\tVALUE`), with the
/// partition of their key and their offset.
fn parse(lines: &[String], partitions: u32) -> Vec<(u32, i64, String)> {
    lines
        .iter()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let offset: i64 = parts.next().unwrap().parse().unwrap();
            let key = parts.next().unwrap();
            let value = parts.next().unwrap().to_string();
            (partition_for_key(key.as_bytes(), partitions), offset, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_take_over_from_a_killed_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), GROUP_ARGS);
    let admin = Admin::connect(&broker.grpc_addr.to_string()).await.unwrap();
    fjord_ok(
        &broker,
        &["topic", "create", "orders", "--partitions", "6"],
        b"",
    );
    let sep = ["--key-separator", "\t"];
    let produce: Vec<&str> = ["produce", "orders"].into_iter().chain(sep).collect();
    fjord_ok(&broker, &produce, &keyed_lines(0..600));

    let args = [
        "orders",
        "--group",
        "views",
        "--from-beginning",
        "--follow",
        "--print-offset",
        "--print-key",
    ];
    let mut members: Vec<Member> = (0..3).map(|_| Member::start(&broker, &args)).collect();
    // Settled: three members, each partition owned by exactly one of them.
    eventually(WAIT, "three members owning two partitions each", || async {
        let Some(d) = describe(&admin, "views").await else {
            return false;
        };
        let owned: Vec<&TopicPartition> =
            d.members.iter().flat_map(|m| m.assignment.iter()).collect();
        let distinct: BTreeSet<&TopicPartition> = owned.iter().copied().collect();
        d.state == "STABLE" && d.members.len() == 3 && owned.len() == 6 && distinct.len() == 6
    })
    .await;
    let all_values = |members: &[Member]| -> BTreeSet<String> {
        members
            .iter()
            .flat_map(|m| parse(&m.lines(), 6))
            .map(|(_, _, v)| v)
            .collect()
    };
    eventually(WAIT, "every record seen by the group", || async {
        all_values(&members).len() == 600
    })
    .await;
    eventually(WAIT, "every partition committed to its end", || async {
        let c = committed(&admin, "views").await;
        let d = admin.describe_group("views").await.unwrap();
        c.len() == 6 && d.partitions.iter().all(|p| p.lag == 0)
    })
    .await;

    // kill -9 one member (it can neither commit nor leave); the member id that vanishes
    // from the group is the killed one.
    let before = admin.describe_group("views").await.unwrap();
    let committed_at_kill = committed(&admin, "views").await;
    let victim = 0;
    members[victim].kill_9();
    let killed_at = Instant::now();
    let before_kill = members[victim].lines().len();
    fjord_ok(&broker, &produce, &keyed_lines(600..1200));

    eventually(WAIT, "the killed member's partitions moved", || async {
        let Some(d) = describe(&admin, "views").await else {
            return false;
        };
        let owned: BTreeSet<&TopicPartition> =
            d.members.iter().flat_map(|m| m.assignment.iter()).collect();
        d.members.len() == 2 && owned.len() == 6 && d.state == "STABLE"
    })
    .await;
    let moved_after = killed_at.elapsed();
    let after = admin.describe_group("views").await.unwrap();
    let victim_partitions: BTreeSet<u32> = before
        .members
        .iter()
        .filter(|m| after.members.iter().all(|a| a.member_id != m.member_id))
        .flat_map(|m| m.assignment.iter().map(|tp| tp.partition))
        .collect();
    assert_eq!(victim_partitions.len(), 2, "{before:?}\n{after:?}");
    eprintln!("partitions moved {moved_after:?} after the kill -9");
    assert!(
        moved_after < Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(20),
        "moved after {moved_after:?}"
    );
    let survivors: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, m)| m)
        .collect();
    eventually(WAIT, "every record of both rounds seen", || async {
        let mut seen: BTreeSet<String> = survivors
            .iter()
            .flat_map(|m| parse(&m.lines(), 6))
            .map(|(_, _, v)| v)
            .collect();
        seen.extend(
            parse(&members[victim].lines()[..before_kill], 6)
                .into_iter()
                .map(|r| r.2),
        );
        seen.len() == 1200
    })
    .await;
    // No record skipped: whoever took over a partition started at or before the offset
    // committed when its owner was killed (records after it may be seen twice).
    for p in &victim_partitions {
        let from = committed_at_kill[p].expect("committed before the kill");
        for m in &survivors {
            let lines = m.lines();
            let records = parse(&lines, 6);
            // The records of the victim's partitions a survivor printed after the kill.
            let mut offsets: Vec<i64> = records
                .iter()
                .filter(|r| r.0 == *p && r.1 >= 0)
                .map(|r| r.1)
                .collect();
            offsets.sort_unstable();
            if let Some(first_new) = offsets.iter().find(|&&o| o >= from) {
                assert_eq!(*first_new, from, "partition {p} resumed at its commit");
            }
        }
    }

    // SIGTERM: the survivors commit and leave; the group is empty with no lag.
    for (i, m) in members.iter_mut().enumerate() {
        if i != victim {
            m.terminate();
        }
    }
    let d = admin.describe_group("views").await.unwrap();
    assert_eq!(d.state, "EMPTY", "{d:?}");
    assert!(d.partitions.iter().all(|p| p.lag == 0), "{d:?}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_restarts_and_lag_is_described_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), GROUP_ARGS);
    fjord_ok(&broker, &["topic", "create", "t", "--partitions", "1"], b"");
    let values: String = (0..10).map(|i| format!("v{i}\n")).collect();
    fjord_ok(&broker, &["produce", "t"], values.as_bytes());
    let (ok, _, stderr) = fjord(&broker, &["group", "describe", "g"], b"");
    assert!(!ok && stderr.contains('g'), "unknown group: {stderr}");

    let consume = |broker: &BrokerProcess, extra: &[&str]| -> String {
        let mut args = vec!["consume", "t", "--group", "g"];
        args.extend_from_slice(extra);
        fjord_ok(broker, &args, b"")
    };
    let first = consume(&broker, &["--from-beginning", "--max-messages", "4"]);
    assert_eq!(first, "v0\nv1\nv2\nv3\n");
    let lag_of = |broker: &BrokerProcess| {
        let broker_addr = broker.grpc_addr.to_string();
        async move {
            let admin = Admin::connect(&broker_addr).await.unwrap();
            let d = admin.describe_group("g").await.unwrap();
            assert_eq!(d.state, "EMPTY", "the consumer left: {d:?}");
            assert_eq!(d.partitions.len(), 1);
            (d.partitions[0].committed_offset, d.partitions[0].lag)
        }
    };
    assert_eq!(lag_of(&broker).await, (Some(4), 6));
    let describe = fjord_ok(&broker, &["group", "describe", "g"], b"");
    assert!(
        describe.contains('6') && describe.contains('4'),
        "{describe}"
    );
    let metrics = broker.http_get("/metrics");
    let series = r#"fjord_consumer_group_lag_records{group="g",topic="t",partition="0"}"#;
    assert!(metrics.contains(&format!("{series} 6")), "{metrics}");
    assert!(
        metrics.contains(r#"fjord_consumer_group_lag_seconds{group="g",topic="t",partition="0"}"#),
        "{metrics}"
    );

    // A clean restart keeps the commit; the group resumes where it left off.
    assert!(broker.stop());
    let mut broker = broker.restart();
    assert_eq!(lag_of(&broker).await, (Some(4), 6));
    let rest = consume(&broker, &[]);
    assert_eq!(rest, "v4\nv5\nv6\nv7\nv8\nv9\n");
    assert_eq!(lag_of(&broker).await, (Some(10), 0));
    let metrics = broker.http_get("/metrics");
    assert!(metrics.contains(&format!("{series} 0")), "{metrics}");

    // kill -9: the commit was durable before it was acknowledged.
    broker.kill();
    let broker = broker.restart();
    assert_eq!(lag_of(&broker).await, (Some(10), 0));
    assert_eq!(consume(&broker, &[]), "", "nothing left to read");
}

/// RFC 3339 (UTC, milliseconds) of a Unix time in ms.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reset_mode_applies_to_a_live_group_without_stopping_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), GROUP_ARGS);
    let addr = broker.grpc_addr.to_string();
    let admin = Admin::connect(&addr).await.unwrap();
    fjord_ok(&broker, &["topic", "create", "t", "--partitions", "1"], b"");
    let lines =
        |range: std::ops::Range<i32>| -> String { range.map(|i| format!("v{i}\n")).collect() };
    fjord_ok(&broker, &["produce", "t"], lines(0..10).as_bytes());
    // The second half is produced strictly later, so a time names offset 10 exactly.
    let mut consumer = fjord::client::Consumer::connect(&addr, Default::default())
        .await
        .unwrap();
    consumer.assign("t", &[0]).await.unwrap();
    consumer
        .seek("t", 0, fjord::client::Seek::Offset(9))
        .await
        .unwrap();
    let ninth = consumer.poll().await.unwrap()[0].timestamp_ms;
    eventually(WAIT, "the clock to pass the 10th record's time", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        now > ninth
    })
    .await;
    fjord_ok(&broker, &["produce", "t"], lines(10..20).as_bytes());
    consumer
        .seek("t", 0, fjord::client::Seek::Offset(10))
        .await
        .unwrap();
    let tenth = consumer.poll().await.unwrap()[0].timestamp_ms;
    assert!(tenth > ninth);

    let member = Member::start(
        &broker,
        &[
            "t",
            "--group",
            "live",
            "--from-beginning",
            "--follow",
            "--print-offset",
        ],
    );
    let offsets_after = |mark: usize| -> Vec<i64> {
        member.lines()[mark..]
            .iter()
            .map(|l| l.split('\t').next().unwrap().parse().unwrap())
            .collect()
    };
    let caught_up = |mark: usize, to: i64| {
        let admin = admin.clone();
        let offsets_after = &offsets_after;
        async move {
            eventually(WAIT, &format!("the member to print up to {to}"), || async {
                offsets_after(mark).last() == Some(&(to - 1))
            })
            .await;
            eventually(WAIT, "the member to commit its position", || async {
                committed(&admin, "live").await.get(&0) == Some(&Some(to))
            })
            .await;
        }
    };
    caught_up(0, 20).await;

    let datetime = rfc3339(tenth);
    let modes: [(&[&str], i64); 4] = [
        (&["--to-earliest"], 0),
        (&["--to-offset", "5"], 5),
        (&["--shift-by", "-3"], 17),
        (&["--to-datetime", &datetime], 10),
    ];
    for (mode, expected) in modes {
        let mark = member.lines().len();
        let mut args = vec!["group", "reset-offsets", "live", "--topic", "t"];
        args.extend_from_slice(mode);
        // A dry run changes nothing, even on a live group.
        let plan = fjord_ok(&broker, &args, b"");
        assert!(
            plan.contains(&format!("20 -> {expected}")),
            "{mode:?}: {plan}"
        );
        assert_eq!(committed(&admin, "live").await[&0], Some(20));
        args.push("--execute");
        let (ok, stdout, stderr) = fjord(&broker, &args, b"");
        assert!(ok, "{mode:?}: {stderr}");
        assert!(stdout.contains(&format!("20 -> {expected}")), "{stdout}");
        // The member gave the partition up, got it back, and resumed from the new offset.
        caught_up(mark, 20).await;
        let replayed = offsets_after(mark);
        assert_eq!(
            replayed,
            (expected..20).collect::<Vec<_>>(),
            "{mode:?}: the live member resumed at {expected}"
        );
    }
    // To the latest: the member resumes with the next new record, replaying nothing.
    let mark = member.lines().len();
    let args = [
        "group",
        "reset-offsets",
        "live",
        "--topic",
        "t",
        "--to-latest",
        "--execute",
    ];
    let plan = fjord_ok(&broker, &args, b"");
    assert!(plan.contains("20 -> 20"), "{plan}");
    fjord_ok(&broker, &["produce", "t"], b"v20\n");
    caught_up(mark, 21).await;
    assert_eq!(offsets_after(mark), vec![20]);
}

/// Records the rebalance callbacks as `assigned:0,1` / `revoked:2`.
struct Callbacks(Arc<Mutex<Vec<String>>>);

impl Callbacks {
    fn note(&self, what: &str, partitions: &[TopicPartition]) {
        let list: Vec<String> = partitions
            .iter()
            .map(|tp| tp.partition.to_string())
            .collect();
        self.0
            .lock()
            .unwrap()
            .push(format!("{what}:{}", list.join(",")));
    }
}

impl RebalanceListener for Callbacks {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.note("assigned", partitions);
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.note("revoked", partitions);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_calls_back_on_rebalance_and_commits_what_it_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), GROUP_ARGS);
    let addr = broker.grpc_addr.to_string();
    let admin = Admin::connect(&addr).await.unwrap();
    fjord_ok(&broker, &["topic", "create", "e", "--partitions", "4"], b"");
    let produce = ["produce", "e", "--key-separator", "\t"];
    fjord_ok(&broker, &produce, &keyed_lines(0..40));
    let config = ConsumerConfig {
        group_id: Some("cb".into()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        enable_auto_commit: false,
        max_wait_ms: 100,
        ..ConsumerConfig::default()
    };
    let join = |events: Arc<Mutex<Vec<String>>>| {
        let (addr, config) = (addr.clone(), config.clone());
        async move {
            let mut c = Consumer::connect(&addr, config).await.unwrap();
            c.set_rebalance_listener(Box::new(Callbacks(events)));
            c.subscribe(&["e"]).await.unwrap();
            c
        }
    };
    let key = |r: &ConsumerRecord| (r.partition, r.offset);

    let events_a = Arc::new(Mutex::new(Vec::new()));
    let mut a = join(events_a.clone()).await;
    let deadline = Instant::now() + WAIT;
    let mut first = BTreeSet::new();
    while first.len() < 40 || a.assignment_pending() {
        assert!(Instant::now() < deadline, "a alone reads everything");
        first.extend(a.poll().await.unwrap().iter().map(key));
    }
    assert_eq!(*events_a.lock().unwrap(), ["assigned:0,1,2,3"]);
    a.commit().await.unwrap();
    assert!(
        admin
            .describe_group("cb")
            .await
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.lag == 0)
    );

    // b joins while new records wait: a is called back and commits before it gives two
    // partitions up, and b starts exactly there: every new record is read once.
    fjord_ok(&broker, &produce, &keyed_lines(40..80));
    let events_b = Arc::new(Mutex::new(Vec::new()));
    let mut b = join(events_b.clone()).await;
    let mut second: Vec<(u32, i64)> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while second.len() < 40
        || a.assignment_pending()
        || b.assignment_pending()
        || b.assignment().len() != 2
    {
        assert!(Instant::now() < deadline, "a and b share the partitions");
        second.extend(a.poll().await.unwrap().iter().map(key));
        second.extend(b.poll().await.unwrap().iter().map(key));
        a.commit().await.unwrap();
        b.commit().await.unwrap();
    }
    let distinct: BTreeSet<(u32, i64)> = second.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        second.len(),
        "no record read twice: {second:?}"
    );
    assert!(distinct.is_disjoint(&first));
    let moved: Vec<String> = b
        .assignment()
        .iter()
        .map(|tp| tp.partition.to_string())
        .collect();
    let moved = moved.join(",");
    assert_eq!(*events_b.lock().unwrap(), [format!("assigned:{moved}")]);
    assert_eq!(
        events_a.lock().unwrap()[1..],
        [format!("revoked:{moved}")],
        "a was told before giving them up"
    );

    // A commit for a partition a gave up is refused.
    let gone = b.assignment()[0].clone();
    let refused = a.commit_offsets(&[(gone, 0)]).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::FencedMember(_)),
        "{refused:?}"
    );

    let kept: Vec<String> = a
        .assignment()
        .iter()
        .map(|tp| tp.partition.to_string())
        .collect();
    a.close().await.unwrap();
    assert_eq!(
        events_a.lock().unwrap().last(),
        Some(&format!("revoked:{}", kept.join(","))),
        "close calls back before it commits and leaves"
    );
    b.close().await.unwrap();
    let d = admin.describe_group("cb").await.unwrap();
    assert_eq!(d.state, "EMPTY");
    assert!(d.partitions.iter().all(|p| p.lag == 0), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_commit_commits_what_earlier_polls_returned_and_metadata_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), GROUP_ARGS);
    let addr = broker.grpc_addr.to_string();
    let admin = Admin::connect(&addr).await.unwrap();
    fjord_ok(&broker, &["topic", "create", "a", "--partitions", "2"], b"");
    let produce = ["produce", "a", "--key-separator", "\t"];
    fjord_ok(&broker, &produce, &keyed_lines(0..30));
    let config = ConsumerConfig {
        group_id: Some("auto".into()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        auto_commit_interval_ms: 0,
        max_wait_ms: 100,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::connect(&addr, config).await.unwrap();
    c.subscribe(&["a"]).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut read = 0;
    while read < 30 {
        assert!(Instant::now() < deadline, "reads everything");
        read += c.poll().await.unwrap().len();
    }
    // The next poll commits what the earlier ones returned.
    c.poll().await.unwrap();
    let d = admin.describe_group("auto").await.unwrap();
    assert_eq!(d.partitions.len(), 2);
    assert!(d.partitions.iter().all(|p| p.lag == 0), "{d:?}");

    let tp = TopicPartition::new("a", 0);
    let position = c.position("a", 0).unwrap();
    c.commit_offsets_with_metadata(&[(tp.clone(), position, "view v3".into())])
        .await
        .unwrap();
    let committed = admin
        .group_offsets("auto", std::slice::from_ref(&tp))
        .await
        .unwrap();
    assert_eq!(committed[&tp].offset, position);
    assert_eq!(committed[&tp].metadata, "view v3");
    c.close().await.unwrap();
}
