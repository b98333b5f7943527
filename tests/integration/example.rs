//! The materialized-view example (`examples/materialized_view.rs`) against a real broker:
//! built incrementally, resumed after more orders and after a crash between writing the
//! store and committing, rebuilt from offset zero and switched in. Every view must equal
//! the totals computed here from the topic itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fjord::client::{Admin, TopicPartition};

use crate::support::{BrokerProcess, eventually, example, read_all};

/// Short group timings, so that the group settles quickly.
const GROUP_ARGS: &[&str] = &[
    "--group-consumer-session-timeout-ms",
    "3000",
    "--group-consumer-heartbeat-interval-ms",
    "100",
];
const PARTITIONS: u32 = 4;
const WAIT: Duration = Duration::from_secs(60);

/// Runs `materialized_view ARGS` against `broker` (killed after `WAIT`); it must succeed.
/// Returns (stdout, stderr).
fn view(broker: &BrokerProcess, args: &[&str]) -> (String, String) {
    let mut child = Command::new(example("materialized_view"))
        .arg("--brokers")
        .arg(broker.grpc_addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start materialized_view");
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).expect("utf-8 output");
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "materialized_view {args:?} did not finish:\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        status.success(),
        "materialized_view {args:?} failed:\n{stderr}"
    );
    (stdout, stderr)
}

/// The totals of every order in the topic, in the example's output format, read with a
/// plain fetch (no group), and the number of orders.
async fn totals_of_topic(broker: &BrokerProcess) -> (String, usize) {
    let mut client = broker.client().await;
    let mut totals: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let mut orders = 0;
    for partition in 0..PARTITIONS {
        for (_, key, value) in read_all(&mut client, "orders", partition, 0).await {
            let entry = totals.entry(key.expect("orders are keyed")).or_default();
            entry.0 += 1;
            entry.1 += value.parse::<i64>().expect("an amount in cents");
            orders += 1;
        }
    }
    let text = totals
        .iter()
        .map(|(customer, (n, cents))| format!("{customer} orders={n} total_cents={cents}\n"))
        .collect();
    (text, orders)
}

/// The group's committed offset in each partition (`None`: nothing committed).
async fn committed(admin: &Admin, group: &str) -> Vec<Option<i64>> {
    let partitions: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("orders", p))
        .collect();
    let offsets = admin.group_offsets(group, &partitions).await.unwrap();
    partitions
        .iter()
        .map(|tp| offsets.get(tp).map(|c| c.offset))
        .collect()
}

async fn high_watermarks(admin: &Admin) -> Vec<Option<i64>> {
    let offsets = admin
        .list_offsets("orders", fjord::client::OffsetSpec::Latest)
        .await
        .unwrap();
    offsets.iter().map(|o| Some(o.high_watermark)).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_resumes_from_its_store_and_rebuilds_from_offset_zero() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), GROUP_ARGS);
    let admin = Admin::connect(&broker.grpc_addr.to_string()).await.unwrap();
    let store = dir.path().join("totals.view");
    let store_arg = store.to_str().unwrap();
    let run = ["run", "--group", "totals", "--store", store_arg];
    let produce = ["produce", "--customers", "50", "--count"];

    // The incremental build: every order once, and the group commits what the store holds.
    view(&broker, &[&produce[..], &["2000", "--seed", "1"]].concat());
    let (first, stderr) = view(&broker, &run);
    assert!(stderr.contains("applied 2000 records"), "{stderr}");
    let (expected, orders) = totals_of_topic(&broker).await;
    assert_eq!(orders, 2000);
    assert_eq!(first.lines().count(), 50, "{first}");
    assert_eq!(first, expected);
    assert_eq!(
        committed(&admin, "totals").await,
        high_watermarks(&admin).await
    );

    // More orders: the next run applies only those.
    view(&broker, &[&produce[..], &["500", "--seed", "2"]].concat());
    let (second, stderr) = view(&broker, &run);
    assert!(stderr.contains("applied 500 records"), "{stderr}");
    let (expected, orders) = totals_of_topic(&broker).await;
    assert_eq!(orders, 2500);
    assert_eq!(second, expected);
    assert_ne!(second, first);

    // A crash after writing the store and before committing leaves the group's offsets
    // behind the store (here: all the way back to zero). Nothing is counted twice.
    let zero: Vec<(TopicPartition, i64)> = (0..PARTITIONS)
        .map(|p| (TopicPartition::new("orders", p), 0))
        .collect();
    admin.reset_group_offsets("totals", &zero).await.unwrap();
    let (resumed, stderr) = view(&broker, &run);
    assert!(stderr.contains("applied 0 records"), "{stderr}");
    assert_eq!(resumed, expected);
    assert_eq!(
        committed(&admin, "totals").await,
        high_watermarks(&admin).await
    );

    // The rebuild replays from offset zero under a group of its own, with progress, and
    // switches the rebuilt store in.
    let (rebuilt, stderr) = view(
        &broker,
        &["rebuild", "--group", "totals", "--store", store_arg],
    );
    assert!(
        stderr.contains("rebuild: 2500/2500 records (100%)"),
        "{stderr}"
    );
    assert!(stderr.contains("switched"), "{stderr}");
    assert_eq!(rebuilt, expected);
    assert!(!with_suffix(&store, ".rebuild").exists());
    assert_eq!(
        admin.list_groups().await.unwrap(),
        vec!["totals".to_string()]
    );
    // The live group resumes from the offsets the rebuilt store holds.
    let (after, stderr) = view(&broker, &run);
    assert!(stderr.contains("applied 0 records"), "{stderr}");
    assert_eq!(after, expected);
}

/// A `run --follow` process, killed on drop.
struct Follower(Child);

impl Follower {
    /// Ctrl-C: the view leaves its group and exits 0.
    fn interrupt(&mut self) {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "run --follow did not stop on Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "run --follow after Ctrl-C: {status:?}");
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_view_rebuild_waits_for_a_running_view_to_stop_before_switching() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), GROUP_ARGS);
    let store = dir.path().join("totals.view");
    let store_arg = store.to_str().unwrap();
    view(&broker, &["produce", "--count", "300", "--customers", "7"]);

    let mut follower = Follower(
        Command::new(example("materialized_view"))
            .arg("--brokers")
            .arg(broker.grpc_addr.to_string())
            .args(["run", "--group", "totals", "--store", store_arg, "--follow"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start materialized_view run --follow"),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = follower.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("run --follow catches up");
        if line.contains("caught up; following") {
            break;
        }
    }

    // The rebuild completes, but leaves the switch to the operator.
    let args = ["rebuild", "--group", "totals", "--store", store_arg];
    let (rebuilt, stderr) = view(&broker, &args);
    assert!(stderr.contains("is in use: stop its `run`"), "{stderr}");
    let rebuilt_store = with_suffix(&store, ".rebuild");
    assert!(rebuilt_store.exists());
    let (expected, orders) = totals_of_topic(&broker).await;
    assert_eq!(orders, 300);
    assert_eq!(rebuilt, expected);

    // The running view goes on: with these orders in it, the group's committed offsets
    // are ahead of the rebuilt store.
    view(
        &broker,
        &[
            "produce",
            "--count",
            "100",
            "--customers",
            "7",
            "--seed",
            "3",
        ],
    );
    let admin = Admin::connect(&broker.grpc_addr.to_string()).await.unwrap();
    eventually(WAIT, "the running view commits the new orders", || async {
        committed(&admin, "totals").await == high_watermarks(&admin).await
    })
    .await;

    // Once the running view is stopped, the switch is a rename. The view resumes from the
    // rebuilt store's offsets, not the group's, so the new orders are not lost.
    follower.interrupt();
    std::fs::rename(&rebuilt_store, &store).unwrap();
    let (after, stderr) = view(&broker, &["run", "--group", "totals", "--store", store_arg]);
    assert!(stderr.contains("applied 100 records"), "{stderr}");
    let (expected, orders) = totals_of_topic(&broker).await;
    assert_eq!(orders, 400);
    assert_eq!(after, expected);
}
