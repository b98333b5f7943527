//! Test support: a real `fjord-broker` process on ephemeral ports and a temp dir, killed
//! when dropped; a gRPC client for it; record helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fjord::protocol::codec::{Compression, RecordInput, decode_records, encode_batch};
use fjord::protocol::v1::{self, fjord_client::FjordClient};
use tonic::transport::Channel;

/// A binary built by `cargo test --workspace` (the broker's and the tools' own test
/// targets make cargo build them), next to this test's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --bins`)",
        path.display()
    );
    path
}

/// An example program of the root crate (`examples/NAME.rs`), which `cargo test
/// --workspace` builds into `target/<profile>/examples/`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --examples`)",
        path.display()
    );
    path
}

/// A broker process. Killed (SIGKILL) on drop unless stopped.
pub struct BrokerProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub kafka_addr: SocketAddr,
    /// The broker's log lines after the listening line.
    pub stderr: mpsc::Receiver<String>,
    extra_args: Vec<String>,
    /// Variables added to the broker's environment.
    env: Vec<(String, String)>,
}

impl BrokerProcess {
    /// A field of the broker's `/proc/<pid>/status`, in KiB (`VmRSS`, `RssFile`, ...).
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    pub fn start(data_dir: &Path, extra_args: &[&str]) -> BrokerProcess {
        Self::start_with_env(data_dir, extra_args, &[])
    }

    /// [`start`](Self::start) with variables added to the broker's environment.
    pub fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> BrokerProcess {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::spawn(data_dir.to_path_buf(), extra_args, env, None, None)
    }

    fn spawn(
        data_dir: PathBuf,
        extra_args: Vec<String>,
        env: Vec<(String, String)>,
        kafka_addr: Option<SocketAddr>,
        grpc_addr: Option<SocketAddr>,
    ) -> BrokerProcess {
        let any = || "127.0.0.1:0".to_string();
        let kafka_addr = kafka_addr.map_or_else(any, |a| a.to_string());
        let grpc_addr = grpc_addr.map_or_else(any, |a| a.to_string());
        let mut child = Command::new(binary("fjord-broker"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--grpc-addr", &grpc_addr, "--http-addr", "127.0.0.1:0"])
            .args(["--kafka-addr", &kafka_addr])
            .args(&extra_args)
            .env("FJORD_LOG", "info")
            // The broker's malloc settings are tested as they are by default.
            .env_remove("GLIBC_TUNABLES")
            .env_remove("FJORD_MALLOC_SETTINGS")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fjord-broker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let listening = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("fjord-broker listening") => break line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("the broker did not start:\n{}", seen.join("\n"));
                }
            }
        };
        let addr = |key: &str| -> SocketAddr {
            let at = listening.find(key).expect(key) + key.len();
            listening[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        BrokerProcess {
            grpc_addr: addr("grpc_addr="),
            http_addr: addr("http_addr="),
            kafka_addr: addr("kafka_addr="),
            child: Some(child),
            data_dir,
            stderr: rx,
            extra_args,
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the broker did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts again on the same data directory and settings (new ports).
    pub fn restart(self) -> BrokerProcess {
        assert!(self.child.is_none(), "stop or kill it first");
        Self::spawn(
            self.data_dir.clone(),
            self.extra_args.clone(),
            self.env.clone(),
            None,
            None,
        )
    }

    /// Starts again on the same data directory, settings and Kafka port (Kafka clients
    /// reconnect to the address they bootstrapped from).
    pub fn restart_on_same_kafka_port(self) -> BrokerProcess {
        assert!(self.child.is_none(), "stop or kill it first");
        Self::spawn(
            self.data_dir.clone(),
            self.extra_args.clone(),
            self.env.clone(),
            Some(self.kafka_addr),
            None,
        )
    }

    /// Starts again on the same data directory, settings and Kafka and gRPC ports (a
    /// client's connection finds it again).
    pub fn restart_on_same_ports(self) -> BrokerProcess {
        assert!(self.child.is_none(), "stop or kill it first");
        Self::spawn(
            self.data_dir.clone(),
            self.extra_args.clone(),
            self.env.clone(),
            Some(self.kafka_addr),
            Some(self.grpc_addr),
        )
    }

    pub async fn client(&self) -> FjordClient<Channel> {
        FjordClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect")
    }

    /// GET `path` on the HTTP listener; the body.
    pub fn http_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http_addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One batch of `(key, value)` records, timestamped now (older ones would fall to the
/// default 7-day `retention.ms` at once).
pub fn batch(records: &[(Option<&str>, &str)]) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let inputs: Vec<RecordInput> = records
        .iter()
        .map(|(k, v)| {
            RecordInput::new(
                k.map(|k| k.as_bytes().to_vec()),
                Some(v.as_bytes().to_vec()),
                now,
            )
        })
        .collect();
    encode_batch(&inputs, Compression::None).unwrap().to_vec()
}

pub async fn create_topic(
    client: &mut FjordClient<Channel>,
    name: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) {
    client
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            configs: configs
                .iter()
                .map(|(k, v)| v1::ConfigEntry {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        })
        .await
        .expect("create topic");
}

pub async fn produce(
    client: &mut FjordClient<Channel>,
    topic: &str,
    partition: u32,
    records: Vec<u8>,
    acks: v1::Acks,
) -> v1::ProduceResponse {
    client
        .produce(v1::ProduceRequest {
            topic: topic.into(),
            partition,
            acks: acks as i32,
            records: records.into(),
        })
        .await
        .expect("produce")
        .into_inner()
}

/// One fetch (up to 1 MiB, no wait) from `offset`, decoded: the records of the batches
/// served (a batch may start below `offset`), and the next offset to fetch.
pub async fn fetch_decoded(
    client: &mut FjordClient<Channel>,
    topic: &str,
    partition: u32,
    offset: i64,
) -> (Vec<fjord::protocol::DecodedRecord>, i64) {
    let r = client
        .fetch(v1::FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            min_bytes: 0,
        })
        .await
        .expect("fetch")
        .into_inner();
    let mut records = Vec::new();
    let mut rest = &r.records[..];
    while !rest.is_empty() {
        let header = fjord::protocol::BatchHeader::validate(rest).unwrap();
        records.extend(decode_records(header.as_bytes()).unwrap());
        rest = &rest[header.size()..];
    }
    (records, r.next_offset)
}

/// Every record of a partition from `from`, as (offset, key, value).
pub async fn read_all(
    client: &mut FjordClient<Channel>,
    topic: &str,
    partition: u32,
    from: i64,
) -> Vec<(i64, Option<String>, String)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let (records, next_offset) = fetch_decoded(client, topic, partition, offset).await;
        if records.is_empty() {
            return out;
        }
        for rec in records {
            if rec.offset >= offset {
                let text = |b: bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
                out.push((
                    rec.offset,
                    rec.key.map(text),
                    rec.value.map(text).unwrap_or_default(),
                ));
            }
        }
        offset = next_offset;
    }
}

/// Bytes of `path` in the page cache, as util-linux's `fincore` counts them.
pub fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "fincore: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `fjord ARGS` against `broker` with `stdin`; (exit success, stdout, stderr).
pub fn fjord(broker: &BrokerProcess, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary("fjord"))
        .arg("--brokers")
        .arg(broker.grpc_addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fjord");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().expect("fjord output");
    writer.join().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

/// `fjord ARGS`, which must succeed; its stdout.
pub fn fjord_ok(broker: &BrokerProcess, args: &[&str], stdin: &[u8]) -> String {
    let (ok, stdout, stderr) = fjord(broker, args, stdin);
    assert!(ok, "fjord {args:?} failed: {stderr}");
    stdout
}
