//! `fjord-broker`: runs a broker until SIGTERM or Ctrl-C, then shuts down cleanly.

use fjord_broker::{Broker, BrokerConfig};

fn main() -> std::process::ExitCode {
    start_with_malloc_settings();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .init();
    let config = match BrokerConfig::load(std::env::args_os()) {
        Ok(config) => config,
        Err(fjord_broker::config::ConfigError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("fjord-broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fjord-broker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let broker = match Broker::start(config).await {
            Ok(broker) => broker,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return std::process::ExitCode::FAILURE;
            }
        };
        let variable = fjord_broker::malloc::VARIABLE;
        if let Some(value) = std::env::var_os(variable) {
            tracing::info!(glibc_tunables = %value.to_string_lossy(), "malloc settings");
        }
        wait_for_signal().await;
        tracing::info!("shutting down (a second signal exits at once)");
        tokio::spawn(async {
            wait_for_signal().await;
            eprintln!("fjord-broker: second signal, exiting without a clean shutdown");
            std::process::exit(130);
        });
        match broker.shutdown().await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "unclean shutdown");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Starts this binary again with the broker's glibc malloc settings in `GLIBC_TUNABLES`
/// unless it has them ([`fjord_broker::malloc`]); returns only if it has them, or if the
/// new start failed (the broker then runs with glibc's defaults, slower).
fn start_with_malloc_settings() {
    use std::os::unix::process::CommandExt;
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let Some(value) = fjord_broker::malloc::tunables(|name| std::env::var_os(name)) else {
        return;
    };
    // The running file itself, even if its path was replaced meanwhile (an upgrade).
    let exe = std::path::Path::new("/proc/self/exe");
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "fjord-broker".into());
    // Replaces this process (same pid, descriptors and arguments); returns on failure.
    let e = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(fjord_broker::malloc::VARIABLE, value)
        .env(fjord_broker::malloc::MARKER, "1")
        .exec();
    eprintln!("fjord-broker: cannot start again with malloc settings ({e}); glibc defaults");
}
