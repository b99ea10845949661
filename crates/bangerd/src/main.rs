//! bangerd: the owner daemon.
//!
//! Runs as the owner user (never root in a system install), owns the SQLite
//! state and the VM lifecycle, and asks the root helper for the few
//! privileged steps (bridge, tap, VMM launch and signals).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

mod backend;
mod daemon;
mod dns;
mod doctor;
mod firecracker;
mod handles;
mod health;
mod images;
mod install_hint;
mod kernels;
mod logs;
mod logstore;
mod ops;
mod ports;
mod routes;
mod server;
mod ssh;
mod stats;
mod tappool;
#[cfg(test)]
mod testutil;
mod vm;
mod vmset;
mod warm;
mod workdisk;
mod workspace;

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `<bin> <version> (commit <sha>, built <time>)`.
pub fn version_line(bin: &str) -> String {
    banger_buildinfo::version_line(bin)
}

#[derive(Parser, Debug)]
#[command(
    name = "bangerd",
    about = "banger's owner daemon",
    disable_version_flag = true
)]
struct Args {
    /// Classify the state database against this binary's migrations, print
    /// one line and exit 0 (compatible), 1 (will migrate) or 2 (incompatible).
    #[arg(long)]
    check_migrations: bool,
    /// Print the version and exit.
    #[arg(long, short = 'V')]
    version: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.version {
        println!("{}", version_line("bangerd"));
        return Ok(());
    }
    let layout = banger_paths::Layout::from_env();
    if args.check_migrations {
        match banger_store::inspect_schema(&layout.db_path()) {
            Ok(state) => {
                println!("{}", state.describe());
                std::process::exit(state.exit_code());
            }
            Err(e) => {
                eprintln!("bangerd: {e}");
                std::process::exit(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let rt = tokio::runtime::Runtime::new().context("start tokio")?;
    rt.block_on(run(layout))
}

async fn run(layout: banger_paths::Layout) -> anyhow::Result<()> {
    let cfg = daemon::Config::from_env(layout).context("load settings")?;
    let store = banger_store::Store::open(&cfg.layout.db_path())?;
    let d: daemon::Shared = Arc::new(daemon::Daemon::new(cfg, store));
    vm::reconcile(&d).await;
    warm::reconcile(&d).await;
    tappool::adopt(&d).await;
    ssh::refresh_config(&d);
    dns::start(&d).await;
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let app = routes::router(d.clone(), shutdown.clone());
    let sock = d.cfg.layout.daemon_socket();
    tracing::info!(socket = %sock.display(), version = %version_line("bangerd"), "bangerd listening");
    let dd = d.clone();
    let stop = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = shutdown.notified() => {},
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        tracing::info!("bangerd stopping; running VMs keep running");
        tappool::drain(&dd).await;
    };
    server::serve(&sock, d.cfg.owner_uid, app, stop).await
}
