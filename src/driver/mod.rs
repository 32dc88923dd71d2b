//! The process entry point and the mio drivers.
//!
//! A driver owns the `Poll`, the sockets and the clock, and only moves bytes and events between
//! them and the sans-IO state machines.

pub mod connect;
pub mod connections;
pub mod gateway;
pub mod ice_probe;
pub mod signal;
pub mod status;
pub mod table;

use std::io::Write;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use clap::Parser;

use crate::config::{Cli, Command, GatewayConfig, EXIT_CONFIG};
use crate::identity::{self, Identity};

/// Parse the command line and run the chosen command; returns the process exit code.
pub fn main_entry() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match crate::logging::Format::parse(&cli.gateway.log_format) {
        Ok(format) => crate::logging::init(format),
        Err(e) => return e.report(),
    }
    let gateway = match GatewayConfig::from_args(&cli.gateway) {
        Ok(c) => c,
        Err(e) => return e.report(),
    };
    match cli.command {
        None | Some(Command::Run) => run_gateway(gateway),
        Some(Command::Id(args)) => print_id(&gateway, args.qr),
        Some(Command::Doctor(args)) => crate::doctor::run(&gateway, &args),
        Some(Command::Health) => status::health_command(&gateway),
        Some(Command::Signal(args)) => signal::run(&args),
        Some(Command::Connect(args)) => connect::run(&gateway, &args),
    }
}

/// Lock the data folder, load the identity, run the gateway. A folder in use or an identity
/// that cannot be read stops start-up with one line and [`EXIT_CONFIG`]: replacing an identity
/// we merely failed to read would change the Remote ID for good.
fn run_gateway(config: GatewayConfig) -> i32 {
    let _lock = match identity::lock_data_dir(&config.data_dir) {
        Ok(lock) => lock,
        Err(e) => return fail_start(&e.to_string()),
    };
    match load_identity(&config) {
        Ok((identity, remote_id)) => gateway::run(config, identity, remote_id),
        Err(e) => fail_start(&e),
    }
}

fn fail_start(why: &str) -> i32 {
    eprintln!("ma-webrtc-gateway: {why}");
    EXIT_CONFIG
}

/// Load (or create) the identity, applying the `MA_REMOTE_ID` override.
pub fn load_identity(config: &GatewayConfig) -> Result<(Identity, String), String> {
    let (id, loaded) = Identity::load_or_create(&config.data_dir).map_err(|e| {
        format!(
            "cannot load or create the identity in {}: {e}",
            config.data_dir.display()
        )
    })?;
    if let identity::Loaded::Created { reason } = &loaded {
        log::info!(
            "created a new identity in {} ({reason})",
            config.data_dir.display()
        );
    }
    let remote_id = match &config.remote_id {
        Some(over) if *over != id.remote_id => {
            log::warn!(
                "MA_REMOTE_ID={over} overrides the certificate's Remote ID {}: clients that pin the \
                 certificate (the current web and mobile apps) will refuse this gateway",
                id.remote_id
            );
            over.clone()
        }
        _ => id.remote_id.clone(),
    };
    Ok((id, remote_id))
}

fn print_id(config: &GatewayConfig, qr: bool) -> i32 {
    let (id, remote_id) = match load_identity(config) {
        Ok(x) => x,
        Err(e) => return fail_start(&e),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "Remote ID:   {remote_id}");
    let _ = writeln!(
        out,
        "Display:     {}",
        identity::display_remote_id(&remote_id)
    );
    let _ = writeln!(out, "Link:        {}", identity::app_link(&remote_id));
    let _ = writeln!(out, "Fingerprint: sha-256 {}", id.fingerprint_colon_hex());
    let _ = writeln!(out, "Data folder: {}", config.data_dir.display());
    // What sessions would get, asking the ICE server provider once (docs/design.md#ice-server-source).
    let mode = match ice_probe::probe(config) {
        Ok((mode, None)) => mode.to_string(),
        Ok((mode, Some(note))) => format!("{mode} ({note})"),
        Err(e) => format!("unknown ({e})"),
    };
    let _ = writeln!(out, "ICE servers: {mode}");
    if qr {
        match crate::qr::terminal_qr(&identity::app_link(&remote_id)) {
            Ok(code) => {
                let _ = write!(out, "\n{code}");
            }
            Err(e) => {
                eprintln!("ma-webrtc-gateway: {e}");
                return 1;
            }
        }
    }
    0
}

/// SIGINT and SIGTERM as a mio source registered under `token` (async-signal-safe).
pub(crate) fn shutdown_signals(poll: &mio::Poll, token: mio::Token) -> Result<Signals, String> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    poll.registry()
        .register(&mut signals, token, mio::Interest::READABLE)
        .map_err(|e| e.to_string())?;
    Ok(signals)
}

/// How long `poll` may sleep for `deadline` (`None`: no timer at all). Rounded up to whole
/// milliseconds, the resolution of epoll, so a loop never wakes just before its deadline.
pub(crate) fn wait_until(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_micros(999))
}

/// Machine-readable events for a supervising process: one JSON object per line on stdout
/// (docs/protocol.md#supervisor-events).
pub(crate) fn emit_event(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}
