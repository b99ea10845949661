//! banger-agent: runs inside every banger guest (systemd starts it as root),
//! or is the guest's init (see `init`) in images without one.
//!
//! At startup it applies the VM identity (hostname, address, gateway, DNS):
//! the one a warm start gave this guest (`/run/banger/identity.json`, see
//! `identity` and `reidentify`), or else the one passed on the kernel
//! command line. Then it serves the host over the agent channel: the
//! virtio-serial port named `banger.agent` (QEMU), or vsock port 10700
//! (Firecracker), one session per connection. Newline-delimited JSON frames
//! as defined by `banger-agent-proto`. Each request runs on its own thread;
//! every frame goes out through one mutex-guarded writer. Uploads (tar
//! archives in raw chunks) are unpacked by a thread each, fed through a
//! bounded queue.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Logs one line to stderr (the journal under systemd; the console as init).
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("banger-agent: {}", format_args!($($arg)*))
    };
}

mod channel;
mod exec;
mod identity;
mod init;
mod listen;
mod ports;
mod reidentify;
mod serve;
mod stats;
mod sys;
mod untar;
mod upload;

const USAGE: &str = "\
usage: banger-agent [--channel PATH | --listen PATH] [--no-identity] [--dry-poweroff]

  --channel PATH   serve on PATH (a character device, or a Unix socket to
                   connect to) instead of the virtio-serial port named
                   banger.agent or vsock port 10700
  --listen PATH    listen on the Unix socket PATH, one session per
                   connection (as on vsock)
  --no-identity    leave this machine's identity alone: apply neither the
                   banger.* keys of /proc/cmdline nor a recorded warm-start
                   identity, and refuse Reidentify requests (after checking
                   them)
  --dry-poweroff   answer Poweroff requests but do not power off
  --version        print the version
  --help           print this help
";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub channel: Option<PathBuf>,
    pub listen: Option<PathBuf>,
    pub no_identity: bool,
    pub dry_poweroff: bool,
    /// Started by the agent as init (`init::CHILD_ENV`, never the command
    /// line): no systemd to power off with.
    pub under_init: bool,
}

enum Cli {
    Run(Options),
    Print(String),
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Cli> {
    let mut opts = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--channel") => {
                let path = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--channel needs a path\n{USAGE}"))?;
                opts.channel = Some(path.into());
            }
            Some("--listen") => {
                let path = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs a path\n{USAGE}"))?;
                opts.listen = Some(path.into());
            }
            Some("--no-identity") => opts.no_identity = true,
            Some("--dry-poweroff") => opts.dry_poweroff = true,
            Some("--version") => {
                return Ok(Cli::Print(format!(
                    "banger-agent {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            Some("--help" | "-h") => return Ok(Cli::Print(USAGE.to_owned())),
            _ => anyhow::bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    if opts.channel.is_some() && opts.listen.is_some() {
        anyhow::bail!("--channel and --listen exclude each other\n{USAGE}");
    }
    Ok(Cli::Run(opts))
}

fn main() -> ExitCode {
    if init::is_pid1() {
        init::run(std::env::args_os().skip(1).collect());
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut opts = match parse_args(std::env::args_os().skip(1))? {
        Cli::Run(opts) => opts,
        Cli::Print(text) => {
            print!("{text}");
            return Ok(());
        }
    };
    opts.under_init = init::is_child();
    log!(
        "version {} starting{}",
        env!("CARGO_PKG_VERSION"),
        if opts.under_init { " under init" } else { "" }
    );
    if !opts.no_identity {
        identity::apply_at_startup();
    }
    let source = match &opts.listen {
        Some(path) => channel::Source::Listen(listen::Listener::unix(path)?),
        None => channel::open(opts.channel.as_deref()),
    };
    match source {
        channel::Source::Stream(chan) => serve::serve(chan, &opts),
        channel::Source::Listen(listener) => serve::serve_sessions(&listener, opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Cli> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn flags_parse() {
        let Cli::Run(o) =
            parse(&["--channel", "/tmp/s", "--no-identity", "--dry-poweroff"]).unwrap()
        else {
            panic!("expected Run");
        };
        assert_eq!(
            o,
            Options {
                channel: Some("/tmp/s".into()),
                listen: None,
                no_identity: true,
                dry_poweroff: true,
                under_init: false,
            }
        );
        let Cli::Run(o) = parse(&[]).unwrap() else {
            panic!("expected Run");
        };
        assert_eq!(o, Options::default());
        assert!(matches!(parse(&["--version"]).unwrap(), Cli::Print(_)));
        assert!(parse(&["--channel"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--channel", "/a", "--listen", "/b"]).is_err());
        let Cli::Run(o) = parse(&["--listen", "/tmp/l"]).unwrap() else {
            panic!("expected Run");
        };
        assert_eq!(o.listen, Some("/tmp/l".into()));
    }
}
