//! banger: disposable microVMs for developers.
//!
//! The CLI talks only to bangerd, over its Unix socket. Every command that
//! people script offers `--json`; progress goes to stderr so stdout stays
//! clean for the command's own output.

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

mod complete;
mod daemonctl;
mod errors;
mod healthcmd;
mod imgcmd;
mod logcmd;
mod man;
mod style;
mod system;
mod table;
mod update;
mod vmcmd;
mod vmset;
mod vmstats;
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
    #[command(after_help = "Examples:\n  banger version\n  banger version --json")]
    Version(JsonFlag),
    /// Print banger's ssh_config include, or add it to ~/.ssh/config so
    /// `ssh <name>.vm` works.
    #[command(
        after_help = "Examples:\n  banger ssh-config --install     # then: ssh box.vm\n  banger ssh-config --uninstall"
    )]
    SshConfig(wscmd::SshConfigArgs),
    /// Print the shell completion script (VM, image and kernel names
    /// complete from the running daemon).
    #[command(
        after_help = "Add one line to your shell's startup file:\n  bash (~/.bashrc):  source <(banger completion bash)\n  zsh  (~/.zshrc):   source <(banger completion zsh)     # after compinit\n  fish:              echo 'banger completion fish | source' > ~/.config/fish/completions/banger.fish\n\nThe script calls back into banger on every TAB, so it never goes stale;\nopen a new shell after upgrading banger.\n\nExamples:\n  source <(banger completion bash)   # this shell only\n  banger vm exec <TAB>               # then: your VMs' names"
    )]
    Completion(complete::CompletionArgs),
    /// Print banger's man page, or write one page per command with --out.
    #[command(
        after_help = "Examples:\n  banger man | man -l -\n  banger man vm create | man -l -\n  sudo banger man --out /usr/local/share/man/man1 && sudo mandb -q"
    )]
    Man(man::ManArgs),
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
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Show every check, not only warnings and failures.
    #[arg(short, long)]
    verbose: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `banger vm list | head -1`: when the reader goes away, stop quietly
/// with the shell's usual status for it (128 + SIGPIPE) instead of a panic
/// and a backtrace. Only stdout printing is affected: SIGPIPE itself stays
/// ignored, so a daemon closing its socket is still an error we report.
fn quiet_on_broken_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_stdout();
    // `COMPLETE=<shell> banger -- <words>`: the shell asking for completions
    // (see `banger completion`). Answers and exits; a no-op otherwise.
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(complete::COMPLETE_VAR)
        .complete();
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
        Cmd::Version(j) => {
            if j.json {
                vmcmd::print_json(&serde_json::json!({
                    "version": banger_buildinfo::VERSION,
                    "commit": banger_buildinfo::COMMIT,
                    "built_at": banger_buildinfo::BUILT_AT,
                }))?;
            } else {
                print!("{}", banger_buildinfo::version_block());
            }
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
        Cmd::Completion(a) => complete::print_script(&a),
        Cmd::Man(a) => man::run(Cli::command(), &a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap_complete::engine::ArgValueCompleter;

    /// Every `(command path, argument id)` in the CLI, with whether it has a
    /// dynamic completer.
    fn args_of(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, bool)>) {
        for a in cmd.get_arguments() {
            out.push((
                path.to_string(),
                a.get_id().to_string(),
                a.get::<ArgValueCompleter>().is_some(),
            ));
        }
        for s in cmd.get_subcommands() {
            args_of(s, &format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_vm_image_and_kernel_name_completes() {
        let mut all = Vec::new();
        args_of(&Cli::command(), "banger", &mut all);
        let has = |path: &str, id: &str| {
            all.iter()
                .find(|(p, i, _)| p == path && i == id)
                .unwrap_or_else(|| panic!("no argument {id} in `{path}`"))
                .2
        };
        for vm in [
            "start",
            "stop",
            "restart",
            "kill",
            "delete",
            "show",
            "exec",
            "ssh",
            "ports",
            "workspace prepare",
            "workspace export",
        ] {
            assert!(has(&format!("banger vm {vm}"), "name"), "vm {vm}");
        }
        for path in ["banger vm create", "banger vm run"] {
            assert!(has(path, "image"), "{path} --image");
            assert!(!has(path, "name"), "{path} --name is a new name");
        }
        for img in ["show", "delete", "promote"] {
            assert!(has(&format!("banger image {img}"), "name"), "image {img}");
        }
        for k in ["show", "delete", "pull"] {
            assert!(has(&format!("banger kernel {k}"), "name"), "kernel {k}");
        }
        assert!(has("banger image pull", "kernel"));
        assert!(has("banger image import", "kernel"));
        assert!(has("banger image register", "kernel_name"));
        // A positional VM name anywhere under `vm` (a new command, say)
        // must complete too.
        for (path, id, completes) in &all {
            let positional_name = id == "name"
                && path.starts_with("banger vm ")
                && !path.ends_with(" create")
                && !path.ends_with(" run");
            assert!(!positional_name || *completes, "`{path}` {id}");
        }
    }
}
