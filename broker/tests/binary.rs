//! The `fjord-broker` binary: `--help` lists every setting with its default. (Also makes
//! `cargo test --workspace` build the binary the root integration tests start.)

use std::process::Command;

#[test]
fn help_lists_the_settings_with_their_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_fjord-broker"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--grpc-addr",
        "--http-addr",
        "--kafka-addr",
        "--advertised-kafka-addr",
        "--socket-request-max-bytes",
        "--node-id",
        "--config",
        "--log-retention-check-interval-ms",
        "--log-cleaner-backoff-ms",
        "--num-partitions",
        "--message-max-bytes",
        "FJORD_DATA_DIR",
        "[default: ./fjord-data]",
        "[default: 127.0.0.1:9192]",
        "[default: 127.0.0.1:9644]",
        "[default: 127.0.0.1:9092]",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_bad_setting_is_refused_with_its_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_fjord-broker"))
        .args(["--num-partitions", "many"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--num-partitions"), "{err}");
}
