//! Shared by the tools' integration tests: a real broker process on port 0 in a temp
//! dir (killed on drop) and helpers to run the `fjord` binary against it.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a broker may take to start.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A broker process, killed (SIGKILL) and reaped on drop.
pub struct Broker {
    pub child: Child,
    pub addr: String,
    pub _dir: tempfile::TempDir,
}

pub fn broker_exe() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/cli-<hash> -> target/<profile>/fjord-broker
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps");
    let exe = profile_dir.join(format!("fjord-broker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        exe.exists(),
        "{} is missing: run `cargo build -p fjord-broker` (or `cargo test --workspace`) first",
        exe.display()
    );
    exe
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let (child, addr) = Broker::spawn(&dir, "127.0.0.1:0");
        Broker {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Kills the broker (SIGKILL), keeping its data and address.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a broker again on the same address and data.
    pub fn start_again(&mut self) {
        let (child, addr) = Broker::spawn(&self._dir, &self.addr);
        assert_eq!(addr, self.addr);
        self.child = child;
    }

    pub fn spawn(dir: &tempfile::TempDir, grpc_addr: &str) -> (Child, String) {
        let mut child = Command::new(broker_exe())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--grpc-addr", grpc_addr, "--http-addr", "127.0.0.1:0"])
            .args(["--kafka-addr", "127.0.0.1:0"])
            .env("FJORD_LOG", "info")
            .env_remove("FJORD_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fjord-broker");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads the listening line, then keeps draining stderr so the broker never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent
                    && line.contains("listening")
                    && let Some(addr) = field(&line, "grpc_addr=")
                {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fjord-broker printed no listening line");
            }
        };
        (child, addr)
    }
}

pub fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(name)? + name.len();
    Some(line[at..].split_whitespace().next()?.to_string())
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn fjord_command(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fjord"));
    command.args(args).env("FJORD_BROKERS", addr);
    command
}

/// Runs `fjord ARGS` against `addr` with `stdin` as its input.
pub fn fjord_at(addr: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = fjord_command(addr, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fjord");
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().expect("fjord output");
    writer.join().expect("stdin writer");
    output
}

pub fn fjord(broker: &Broker, args: &[&str]) -> Output {
    fjord_at(&broker.addr, args, b"")
}

/// Asserts success and returns stdout.
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "fjord failed: {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// Asserts exit status 1 with exactly one line `fjord: ...` on stderr; returns that line.
pub fn fails(output: Output) -> String {
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr:?}");
    assert!(lines[0].starts_with("fjord: "), "{stderr:?}");
    lines[0].to_string()
}
