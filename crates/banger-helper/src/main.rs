//! `banger-helper`: the root helper process. See the library docs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use banger_helper::firecracker::{checks, FirecrackerConfig};
use banger_helper::ops::{Helper, HelperConfig, DEFAULT_LAUNCH_TIMEOUT};
use banger_helper::validate::Roots;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(
    name = "banger-helper",
    version = banger_buildinfo::VERSION,
    long_version = banger_buildinfo::version_detail(),
    about = "banger's root helper: privileged ops for bangerd over a Unix socket"
)]
struct Args {
    /// Unix socket to listen on (created 0600, owned by the owner).
    #[arg(long)]
    socket: PathBuf,
    /// banger's state directory (disks, images, console logs).
    #[arg(long)]
    state_dir: PathBuf,
    /// banger's runtime directory (VMM sockets and pidfiles).
    #[arg(long)]
    runtime_dir: PathBuf,
    /// The user bangerd runs as: owns the taps and the socket, runs QEMU.
    #[arg(long)]
    owner_uid: u32,
    #[arg(long)]
    owner_gid: u32,
    /// QEMU binary to launch.
    #[arg(long, default_value = banger_vmm::qemu::DEFAULT_QEMU_BIN)]
    qemu_bin: PathBuf,
    /// Firecracker binary (named `firecracker`, root-owned, not writable by
    /// others, no symlink in its path; checked before every launch).
    #[arg(long, default_value = banger_vmm::jailer::DEFAULT_FIRECRACKER_BIN)]
    firecracker_bin: PathBuf,
    /// Firecracker's jailer binary (same rules), for jailed launches.
    #[arg(long, default_value = banger_vmm::jailer::DEFAULT_JAILER_BIN)]
    jailer_bin: PathBuf,
    /// Append JSON logs here instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Start even when not root (tests); network ops are then refused.
    #[arg(long)]
    allow_non_root: bool,
    /// Seconds a QEMU launch may take.
    #[arg(long, default_value_t = DEFAULT_LAUNCH_TIMEOUT.as_secs())]
    launch_timeout_secs: u64,
}

fn init_logging(log_file: Option<&PathBuf>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter);
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn check_root_dir(what: &str, p: &PathBuf) -> anyhow::Result<()> {
    let normal: PathBuf = p.components().collect();
    if !p.is_absolute() || normal != *p || p.to_str().is_none() {
        bail!(
            "--{what} must be an absolute, normalized UTF-8 path (got {})",
            p.display()
        );
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("--{what} must not contain '..'");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_file.as_ref())?;

    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && !args.allow_non_root {
        bail!("banger-helper must run as root (use --allow-non-root only for tests)");
    }
    check_root_dir("state-dir", &args.state_dir)?;
    check_root_dir("runtime-dir", &args.runtime_dir)?;

    let config = HelperConfig {
        socket: args.socket,
        roots: Roots {
            state_dir: args.state_dir,
            runtime_dir: args.runtime_dir,
        },
        owner_uid: args.owner_uid,
        owner_gid: args.owner_gid,
        qemu_bin: args.qemu_bin,
        firecracker: FirecrackerConfig {
            firecracker_bin: args.firecracker_bin,
            jailer_bin: args.jailer_bin,
        },
        privileged: root,
        launch_timeout: Duration::from_secs(args.launch_timeout_secs),
    };
    // Hosts without Firecracker still serve QEMU: only warn here; every
    // launch checks the binaries again and refuses bad ones.
    let fc = &config.firecracker;
    for (bin, name) in [
        (
            &fc.firecracker_bin,
            Some(banger_vmm::jailer::FIRECRACKER_NAME),
        ),
        (&fc.jailer_bin, None),
    ] {
        if let Err(e) = checks::root_executable(bin, name) {
            tracing::warn!(error = %e, "firecracker launches will be refused");
        }
    }
    let listener = banger_helper::server::bind(&config)?;
    tracing::info!(
        socket = %config.socket.display(),
        owner_uid = config.owner_uid,
        owner_gid = config.owner_gid,
        privileged = config.privileged,
        version = banger_helper::proto::VERSION,
        "banger-helper listening"
    );

    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "TERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "INT", "shutting down"),
        }
    };
    // VMMs are daemonized and outlive us; shutdown only stops serving.
    banger_helper::server::serve(listener, Helper::new(config), shutdown).await;
    tracing::info!("banger-helper stopped");
    Ok(())
}
