//! banger: disposable microVMs for developers.
//!
//! The CLI talks only to bangerd, over its Unix socket. Every command that
//! people script offers `--json`; progress goes to stderr so stdout stays
//! clean for the command's own output.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod daemonctl;
mod errors;
mod healthcmd;
mod imgcmd;
mod logcmd;
mod style;
mod system;
mod table;
mod update;
mod vmcmd;
mod wscmd;

#[derive(Parser, Debug)]
#[command(
    name = "banger",
    about = "Disposable microVMs for developers",
    version = banger_buildinfo::VERSION,
    long_version = banger_buildinfo::version_detail(),
    after_help = "Examples:\n  banger vm run -- uname -a\n  banger vm run --rm ./my-repo -- make test\n  banger vm run --rm --vcpu 4 --memory 2G -- make test\n  banger vm create --name box && banger vm exec box -- ls\n  banger doctor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create, run and manage VMs.
    #[command(subcommand)]
    Vm(vmcmd::VmCmd),
    /// Golden images: build, pull from a registry or the catalog, import, list, delete.
    #[command(subcommand)]
    Image(imgcmd::ImageCmd),
    /// Kernels for images that carry none (OCI images): catalog, pull, import.
    #[command(subcommand)]
    Kernel(imgcmd::KernelCmd),
    /// Start, stop and inspect the daemon (bangerd and the root helper).
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// List VMs (same as `banger vm list`).
    Ps(JsonFlag),
    /// Operations in flight or recently finished (vm create, image build).
    #[command(alias = "ops")]
    Operations(JsonFlag),
    /// Check that this host can run banger VMs (and, on a system install,
    /// that the install keeps its promises).
    Doctor(DoctorArgs),
    /// Install or remove banger as two systemd services (owner daemon, root helper).
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Update a system install to a signed release; rolls back on failure.
    Update(update::UpdateArgs),
    /// Print the version, commit and build time.
    Version,
    /// Print banger's ssh_config include, or add it to ~/.ssh/config so
    /// `ssh <name>.vm` works.
    #[command(
        after_help = "Examples:\n  banger ssh-config --install     # then: ssh box.vm\n  banger ssh-config --uninstall"
    )]
    SshConfig(wscmd::SshConfigArgs),
}

#[derive(Subcommand, Debug)]
enum DaemonCmd {
    /// Start bangerd and the root helper in the background.
    Start,
    /// Stop them; running VMs keep running and are re-adopted on next start.
    Stop,
    /// Is bangerd running?
    Status(JsonFlag),
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Show every check, not only warnings and failures.
    #[arg(short, long)]
    verbose: bool,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            errors::print(&e);
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<u8> {
    let layout = banger_paths::Layout::from_env();
    match cli.cmd {
        Cmd::Version => {
            print!("{}", banger_buildinfo::version_block());
            Ok(0)
        }
        Cmd::Daemon(DaemonCmd::Start) => daemonctl::start(&layout, false).await.map(|_| 0),
        Cmd::Daemon(DaemonCmd::Stop) => daemonctl::stop(&layout).await.map(|_| 0),
        Cmd::Daemon(DaemonCmd::Status(j)) => Ok(if daemonctl::status(&layout, j.json).await? {
            0
        } else {
            1
        }),
        Cmd::Doctor(a) => vmcmd::doctor(&layout, a.verbose, a.json).await,
        Cmd::Operations(j) => vmcmd::operations(&layout, j.json).await,
        Cmd::Ps(j) => vmcmd::vm(&layout, vmcmd::VmCmd::List(j)).await,
        Cmd::Vm(c) => vmcmd::vm(&layout, c).await,
        Cmd::Image(c) => imgcmd::image(&layout, c).await,
        Cmd::Kernel(c) => imgcmd::kernel(&layout, c).await,
        Cmd::SshConfig(a) => wscmd::ssh_config(&layout, a).await,
        Cmd::System(system::SystemCmd::Install(a)) => system::install(a).await,
        Cmd::System(system::SystemCmd::Status(j)) => system::status(j.json).await,
        Cmd::System(system::SystemCmd::Restart) => system::restart().await,
        Cmd::System(system::SystemCmd::Uninstall(a)) => system::uninstall(a).await,
        Cmd::Update(a) => update::run(a).await,
    }
}
