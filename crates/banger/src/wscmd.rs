//! Workspaces and SSH from the CLI: `vm workspace prepare|export`,
//! `vm run ./repo`, `vm exec` in the workspace, `vm ssh`, `ssh-config`.
//!
//! Git on the host runs here, as the user, for what only the user's own
//! checkout can answer (dry runs, staleness, applying a patch to a branch);
//! the copy itself is the daemon's job (it streams a tar to the agent).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use banger_api::{
    format_size, validate_guest_path, validate_vm_name, ExecEvent, ExecRequest,
    ExportWorkspaceRequest, ExportWorkspaceResult, PrepareWorkspaceRequest, PrepareWorkspaceResult,
    SshConfigInfo, SshInfo, VmInfo, VmState, WorkspaceInfo, WorkspaceMode, DEFAULT_GUEST_PATH,
};
use banger_client::Client;
use banger_paths::Layout;
use base64::Engine as _;
use clap::{Args, Subcommand};

use crate::style;
use crate::vmcmd::{client, create_request, create_vm, exit_byte, print_json, ShapeArgs};

#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Copy a git checkout into the VM: git's tracked files plus `.git`.
    #[command(
        after_help = "Examples:\n  banger vm workspace prepare box .\n  banger vm workspace prepare box ~/src/app --include-untracked\n  banger vm workspace prepare box . --dry-run          # list what would ship; no VM needed\n  banger vm workspace prepare box . --mode full_copy   # empty the guest path first"
    )]
    Prepare(PrepareArgs),
    /// A patch of the guest's changes to the workspace (stdout, a file, or a new host branch).
    #[command(
        after_help = "Examples:\n  banger vm workspace export box > changes.patch\n  banger vm workspace export box -o changes.patch\n  banger vm workspace export box --base-commit 1a2b3c4   # include commits made in the guest\n  banger vm workspace export box --apply-branch from-box   # commit onto a new branch of the host repo"
    )]
    Export(ExportArgs),
}

/// Where and how the workspace lands in the guest.
#[derive(Args, Debug, Clone, Default)]
pub struct WsOpts {
    /// Guest directory for the checkout [default: /root/repo].
    #[arg(long, value_name = "PATH")]
    pub guest_path: Option<String>,
    /// overlay: extract over what is there (guest-only files stay);
    /// full_copy: empty the guest path first.
    #[arg(long, value_name = "MODE", default_value = "overlay")]
    pub mode: WorkspaceMode,
    /// Also ship untracked files that are not ignored (default: git's index only).
    #[arg(long)]
    pub include_untracked: bool,
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// The git checkout (or any directory inside it).
    #[arg(value_hint = clap::ValueHint::DirPath)]
    repo: PathBuf,
    #[command(flatten)]
    opts: WsOpts,
    /// List what would ship and stop; does not need the VM.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// Diff against this commit, so commits made in the guest are included
    /// (default: the guest's HEAD, i.e. uncommitted changes only).
    #[arg(long, value_name = "SHA")]
    base_commit: Option<String>,
    /// Write the patch to this file instead of stdout.
    #[arg(short, long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    output: Option<PathBuf>,
    /// Commit the patch onto a new branch of the host repo (your checkout,
    /// index and HEAD are not touched).
    #[arg(long, value_name = "BRANCH")]
    apply_branch: Option<String>,
    /// Export this guest directory instead of the recorded workspace.
    #[arg(long, value_name = "PATH")]
    guest_path: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// A git checkout to copy into the VM; the command runs in it.
    #[arg(value_name = "REPO", value_hint = clap::ValueHint::DirPath)]
    pub repo: Option<PathBuf>,
    /// Delete the VM when the command (or the ssh session) ends.
    #[arg(long)]
    pub rm: bool,
    /// Create, copy the repo, install its tools, and return; the VM keeps
    /// running (`banger vm ssh <name>` later).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Skip installing the repo's mise tools in the guest.
    #[arg(long)]
    pub no_bootstrap: bool,
    #[command(flatten)]
    pub ws: WsOpts,
    /// The command to run in the guest; without one, an ssh session opens.
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// Working directory in the guest [default: the workspace if one was
    /// prepared, else /root].
    #[arg(long, alias = "cwd", value_name = "PATH")]
    guest_path: Option<String>,
    /// Re-copy the workspace first when the host repo's HEAD moved since
    /// it was prepared.
    #[arg(long)]
    auto_prepare: bool,
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SshArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// A command to run instead of a login shell (quoted for you).
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[derive(Args, Debug)]
#[group(multiple = false)]
pub struct SshConfigArgs {
    /// Add one Include line to ~/.ssh/config so `ssh <name>.vm` works.
    #[arg(long)]
    install: bool,
    /// Remove what --install added, nothing else.
    #[arg(long)]
    uninstall: bool,
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("repo path {}", p.display()))
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

async fn prepare(
    c: &Client,
    vm: &str,
    repo: &Path,
    opts: &WsOpts,
) -> anyhow::Result<PrepareWorkspaceResult> {
    let req = PrepareWorkspaceRequest {
        source_path: absolute(repo)?.display().to_string(),
        guest_path: opts.guest_path.clone(),
        mode: opts.mode,
        include_untracked: opts.include_untracked,
    };
    let spinner = progress(&format!("copying {} into {vm}", repo.display()));
    let r = c.post(&format!("/vms/{vm}/workspace"), &req).await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(r?)
}

fn progress(msg: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b.set_message(msg.to_string());
    Some(b)
}

fn describe(r: &PrepareWorkspaceResult) -> String {
    let mut s = format!(
        "{} files ({} untracked) + .git, {} -> {} in {:.1}s",
        r.files,
        r.untracked,
        format_size(r.bytes),
        r.workspace.guest_path,
        r.elapsed_ms as f64 / 1000.0
    );
    if !r.skipped.is_empty() {
        s.push_str(&format!("; skipped: {}", r.skipped.join(", ")));
    }
    s
}

pub async fn workspace(layout: &Layout, cmd: WorkspaceCmd) -> anyhow::Result<u8> {
    match cmd {
        WorkspaceCmd::Prepare(a) => {
            validate_vm_name(&a.name)?;
            if let Some(p) = &a.opts.guest_path {
                validate_guest_path(p).map_err(anyhow::Error::msg)?;
            }
            if a.dry_run {
                return dry_run(&a.repo, &a.opts, a.json);
            }
            let c = client(layout).await?;
            let r = prepare(&c, &a.name, &a.repo, &a.opts).await?;
            if a.json {
                print_json(&r)?;
            } else {
                println!("prepared {}: {}", a.name, describe(&r));
            }
            Ok(0)
        }
        WorkspaceCmd::Export(a) => export(layout, a).await,
    }
}

fn dry_run(repo: &Path, opts: &WsOpts, json: bool) -> anyhow::Result<u8> {
    let repo = banger_workspace::open(repo)?;
    let sel = banger_workspace::select(&repo, opts.include_untracked)?;
    let guest = opts.guest_path.as_deref().unwrap_or(DEFAULT_GUEST_PATH);
    if json {
        print_json(&serde_json::json!({
            "repo": repo.root,
            "guest_path": guest,
            "mode": opts.mode,
            "files": sel.files,
            "untracked": sel.untracked,
            "skipped": sel.skipped.iter().map(|(p, why)| serde_json::json!({"path": p, "reason": why})).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    for f in &sel.files {
        out.write_all(f.as_os_str().as_encoded_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!(
        "{}",
        style::dim(&format!(
            "dry run: {} files ({} untracked) and .git would ship from {} to {guest} ({})",
            sel.files.len(),
            sel.untracked,
            repo.root.display(),
            opts.mode
        ))
    );
    for (p, why) in &sel.skipped {
        eprintln!(
            "{}",
            style::dim(&format!("  skipped {} ({why})", p.display()))
        );
    }
    Ok(0)
}

async fn export(layout: &Layout, a: ExportArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    if let Some(b) = &a.apply_branch {
        banger_workspace::validate_branch_name(b)?;
    }
    let c = client(layout).await?;
    let r: ExportWorkspaceResult = c
        .post(
            &format!("/vms/{}/workspace/export", a.name),
            &ExportWorkspaceRequest {
                base_commit: a.base_commit.clone(),
                guest_path: a.guest_path.clone(),
            },
        )
        .await?;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(&r.patch)
        .context("daemon sent a patch that is not base64")?;
    if patch.is_empty() {
        eprintln!(
            "{}",
            style::dim(&format!("no changes in {} since {}", r.guest_path, r.base))
        );
    }
    if let Some(path) = &a.output {
        write_file(path, &patch)?;
        eprintln!(
            "{}",
            style::dim(&format!(
                "wrote {} ({}) to {}",
                if patch.is_empty() {
                    "an empty patch"
                } else {
                    "the patch"
                },
                format_size(patch.len() as u64),
                path.display()
            ))
        );
    }
    if let Some(branch) = &a.apply_branch {
        let v: VmInfo = c.get(&format!("/vms/{}", a.name)).await?;
        let ws = v.workspace.with_context(|| {
            format!("vm {} has no recorded workspace, so there is no host repo to apply to; save the patch with -o instead", a.name)
        })?;
        let base = match (&a.base_commit, &ws.head_commit) {
            (Some(b), _) => b.clone(),
            (None, Some(h)) => h.clone(),
            (None, None) => bail!("the workspace was prepared from a repo with no commits; save the patch with -o and apply it yourself"),
        };
        let repo = banger_workspace::open(Path::new(&ws.source_path))?;
        let msg = format!("banger: changes from vm {}", a.name);
        let sha = banger_workspace::apply_to_branch(&repo, &patch, &base, branch, &msg)?;
        println!(
            "created branch {branch} at {} in {}",
            short(&sha),
            repo.root.display()
        );
    } else if a.output.is_none() {
        let mut out = std::io::stdout().lock();
        out.write_all(&patch)?;
        out.flush()?;
    }
    Ok(0)
}

/// Writes through a temporary file in the same directory, then renames.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Streams an exec; `quiet_stdout` sends the guest's stdout to our stderr
/// (setup steps whose output must not mix with the user's command).
async fn stream(
    c: &Client,
    vm: &str,
    req: &ExecRequest,
    quiet_stdout: bool,
) -> anyhow::Result<i32> {
    let mut s = c.exec(vm, req).await?;
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(ev) = s.next().await? {
        match ev {
            ExecEvent::Stdout { data } => {
                let b = ExecEvent::decode(&data).map_err(anyhow::Error::msg)?;
                if quiet_stdout {
                    err.write_all(&b)?;
                    err.flush()?;
                } else {
                    out.write_all(&b)?;
                    out.flush()?;
                }
            }
            ExecEvent::Stderr { data } => {
                err.write_all(&ExecEvent::decode(&data).map_err(anyhow::Error::msg)?)?;
                err.flush()?;
            }
            ExecEvent::Exit { code } => return Ok(code),
            ExecEvent::Error { error } => return Err(banger_client::ClientError::Api(error).into()),
        }
    }
    bail!("the exec stream ended without an exit code")
}

/// Runs `cmd` in the guest, in `cwd`, through `mise exec` when the guest
/// has mise. Returns the guest's exit code.
async fn exec_in(
    c: &Client,
    vm: &str,
    cwd: Option<String>,
    cmd: Vec<String>,
) -> anyhow::Result<i32> {
    let req = ExecRequest {
        argv: banger_workspace::guest::exec_argv(&cmd),
        env: Vec::new(),
        cwd,
    };
    tokio::select! {
        r = stream(c, vm, &req, false) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    }
}

/// The host repo's HEAD when it differs from the one the workspace was
/// prepared at (`None`: up to date, or the repo cannot be read).
fn moved_head(ws: &WorkspaceInfo) -> Option<String> {
    let now = banger_workspace::head_commit(Path::new(&ws.source_path)).ok()?;
    (now != ws.head_commit).then(|| now.unwrap_or_else(|| "(no commits)".into()))
}

pub async fn exec(layout: &Layout, a: ExecArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    if let Some(p) = &a.guest_path {
        validate_guest_path(p).map_err(anyhow::Error::msg)?;
    }
    let c = client(layout).await?;
    let v: VmInfo = c.get(&format!("/vms/{}", a.name)).await?;
    if v.state != VmState::Running {
        bail!(
            "vm {} is not running (it is {}); start it with `banger vm start {}`",
            a.name,
            v.state,
            a.name
        );
    }
    if let Some(ws) = &v.workspace {
        if let Some(now) = moved_head(ws) {
            let was = ws.head_commit.as_deref().unwrap_or("(no commits)");
            if a.auto_prepare {
                eprintln!(
                    "{}",
                    style::dim(&format!(
                        "re-syncing {}: {} moved from {} to {}",
                        ws.guest_path,
                        ws.source_path,
                        short(was),
                        short(&now)
                    ))
                );
                let opts = WsOpts {
                    guest_path: Some(ws.guest_path.clone()),
                    mode: ws.mode,
                    include_untracked: ws.include_untracked,
                };
                prepare(&c, &a.name, Path::new(&ws.source_path), &opts).await?;
            } else {
                eprintln!(
                    "{} the workspace in {} is stale: it was prepared at {} but {} is now at {}; \
                     pass --auto-prepare to re-sync first (or run `banger vm workspace prepare {} {}`)",
                    style::yellow("warning:", true),
                    a.name,
                    short(was),
                    ws.source_path,
                    short(&now),
                    a.name,
                    ws.source_path
                );
            }
        }
    }
    let cwd = a
        .guest_path
        .or_else(|| v.workspace.as_ref().map(|w| w.guest_path.clone()));
    let code = exec_in(&c, &a.name, cwd, a.cmd).await?;
    Ok(exit_byte(code))
}

/// What `vm run` checked before creating anything: the repo, and which
/// mise config (if any) asks for a tool bootstrap.
struct RunPlan {
    repo: Option<banger_workspace::Repo>,
    mise: Option<&'static str>,
}

/// Every refusal `vm run` can make without a VM, so a bad combination never
/// leaves one behind.
fn plan_run(a: &RunArgs) -> anyhow::Result<RunPlan> {
    if a.detach && a.rm {
        bail!("-d/--detach keeps the VM running, --rm deletes it: pick one");
    }
    if a.detach && !a.cmd.is_empty() {
        bail!(
            "-d/--detach returns without running anything: drop `-- {}` or drop -d",
            a.cmd.join(" ")
        );
    }
    if let Some(p) = &a.ws.guest_path {
        validate_guest_path(p).map_err(anyhow::Error::msg)?;
    }
    let repo = match &a.repo {
        Some(path) => Some(banger_workspace::open(path)?),
        None => {
            if a.ws.guest_path.is_some()
                || a.ws.include_untracked
                || a.ws.mode != WorkspaceMode::Overlay
            {
                bail!("--guest-path, --mode and --include-untracked describe a workspace: pass the repo, e.g. `banger vm run ./repo -- make test`");
            }
            None
        }
    };
    let mise = repo
        .as_ref()
        .and_then(|r| banger_workspace::mise_config(&r.root));
    if let (Some(cfg), Some(r)) = (mise, &repo) {
        if !a.shape.nat && !a.no_bootstrap {
            bail!(
                "{} has {cfg}: installing its tools in the guest needs the internet. \
                 Pass --nat to give the VM outbound access, or --no-bootstrap to skip the tool install",
                r.root.display()
            );
        }
    }
    Ok(RunPlan { repo, mise })
}

/// `vm run [REPO] [-- cmd]`.
pub async fn run(layout: &Layout, a: RunArgs) -> anyhow::Result<u8> {
    let RunPlan { repo, mise } = plan_run(&a)?;
    if a.cmd.is_empty()
        && !a.detach
        && std::process::Command::new("ssh")
            .arg("-V")
            .output()
            .is_err()
    {
        bail!("without `-- <cmd>`, vm run opens an ssh session, but ssh is not installed (apt-get install openssh-client)");
    }
    let req = create_request(&a.shape)?;
    let c = client(layout).await?;
    let v = create_vm(&c, &req, false).await?;
    let result = run_in(&c, &v, repo.as_ref(), mise.is_some(), &a).await;
    if a.rm {
        if let Err(e) = c.delete::<VmInfo>(&format!("/vms/{}", v.name)).await {
            eprintln!("banger: could not delete vm {}: {e}", v.name);
        }
    } else if !a.detach || result.is_err() {
        eprintln!(
            "{}",
            style::dim(&format!(
                "vm {} keeps running: `banger vm ssh {}`, `banger vm exec {} -- <cmd>`, `banger vm delete {}`",
                v.name, v.name, v.name, v.name
            ))
        );
    }
    result.map(exit_byte)
}

async fn run_in(
    c: &Client,
    v: &VmInfo,
    repo: Option<&banger_workspace::Repo>,
    has_mise: bool,
    a: &RunArgs,
) -> anyhow::Result<i32> {
    let mut cwd = None;
    if let Some(repo) = repo {
        let r = prepare(c, &v.name, &repo.root, &a.ws).await?;
        eprintln!(
            "{}",
            style::dim(&format!("  workspace    {}", describe(&r)))
        );
        cwd = Some(r.workspace.guest_path.clone());
        if has_mise && !a.no_bootstrap {
            eprintln!("{}", style::dim("  bootstrap    mise install"));
            let req = ExecRequest {
                argv: banger_workspace::guest::bootstrap_argv(&r.workspace.guest_path),
                env: Vec::new(),
                cwd: None,
            };
            let code = stream(c, &v.name, &req, true).await?;
            if code != 0 {
                bail!(
                    "tool bootstrap (`mise install`) failed in {} with exit code {code}",
                    v.name
                );
            }
        }
    }
    if a.detach {
        println!("{}", v.name);
        eprintln!(
            "{}",
            style::dim(&format!(
                "vm {} is ready: `banger vm ssh {}`",
                v.name, v.name
            ))
        );
        return Ok(0);
    }
    if a.cmd.is_empty() {
        let info: SshInfo = c.get(&format!("/vms/{}/ssh", v.name)).await?;
        let cmd: Vec<String> = match &cwd {
            // A login shell that starts in the workspace.
            Some(dir) => vec![
                "sh".into(),
                "-c".into(),
                "cd \"$1\" && exec \"${SHELL:-/bin/bash}\" -l".into(),
                "banger-shell".into(),
                dir.clone(),
            ],
            None => Vec::new(),
        };
        return ssh_child(&info, &v.name, &cmd, true);
    }
    exec_in(c, &v.name, cwd, a.cmd.clone()).await
}

fn target(info: &SshInfo, name: &str) -> anyhow::Result<banger_ssh::SshTarget> {
    Ok(banger_ssh::SshTarget {
        name: name.to_string(),
        ip: info.ip.parse().context("daemon sent a bad VM address")?,
        known_hosts: PathBuf::from(&info.known_hosts),
        identity: PathBuf::from(&info.identity),
    })
}

/// Runs ssh as a child (so the caller can clean up afterwards); a tty is
/// requested when stdin is one and `cmd` is an interactive shell.
fn ssh_child(info: &SshInfo, name: &str, cmd: &[String], interactive: bool) -> anyhow::Result<i32> {
    let tty = interactive && std::io::stdin().is_terminal();
    let mut argv = banger_ssh::ssh_argv(&target(info, name)?, cmd, tty, false);
    let prog = argv.remove(0);
    let status = std::process::Command::new(&prog)
        .args(&argv)
        .status()
        .with_context(|| format!("run {prog} (apt-get install openssh-client)"))?;
    Ok(status.code().unwrap_or(255))
}

pub async fn ssh(layout: &Layout, a: SshArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    let c = client(layout).await?;
    let info: SshInfo = c.get(&format!("/vms/{}/ssh", a.name)).await?;
    let interactive = a.cmd.is_empty();
    let code = ssh_child(&info, &a.name, &a.cmd, interactive)?;
    Ok(exit_byte(code))
}

pub async fn ssh_config(layout: &Layout, a: SshConfigArgs) -> anyhow::Result<u8> {
    let c = client(layout).await?;
    let info: SshConfigInfo = c.get("/ssh-config").await?;
    let include = PathBuf::from(&info.include_path);
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set; cannot find ~/.ssh/config")?;
    let config = home.join(".ssh/config");
    if a.install {
        if banger_ssh::install_include(&home, &include)? {
            println!(
                "added an Include of {} to {}",
                include.display(),
                config.display()
            );
        } else {
            println!(
                "{} already includes {}",
                config.display(),
                include.display()
            );
        }
        println!("`ssh <name>.vm` now reaches banger VMs");
    } else if a.uninstall {
        if banger_ssh::uninstall_include(&home, &include)? {
            println!("removed banger's Include from {}", config.display());
        } else {
            println!("{} has no banger Include; nothing to do", config.display());
        }
    } else {
        println!("{}", include.display());
        eprintln!(
            "{}",
            style::dim(
                "`banger ssh-config --install` adds `Include` of this file to ~/.ssh/config"
            )
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(argv: &[&str]) -> RunArgs {
        T::try_parse_from(std::iter::once("run").chain(argv.iter().copied()))
            .unwrap()
            .run
    }

    fn git(dir: &Path, argv: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@x"])
            .args(argv)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {argv:?}");
    }

    fn refusal(argv: &[&str]) -> String {
        match plan_run(&args(argv)) {
            Ok(_) => panic!("{argv:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn run_refuses_ambiguous_flags_before_creating_anything() {
        assert!(refusal(&["-d", "--rm"]).contains("pick one"));
        assert!(refusal(&["-d", "--", "make", "test"]).contains("drop `-- make test`"));
        assert!(refusal(&["--include-untracked", "--", "ls"]).contains("pass the repo"));
        assert!(refusal(&["--mode", "full_copy", "--", "ls"]).contains("pass the repo"));
        assert!(refusal(&["--guest-path", "rel", "--", "ls"]).contains("absolute"));
        assert!(refusal(&["/nonexistent-banger-repo", "--", "ls"]).contains("/nonexistent"));
        assert!(plan_run(&args(&["--", "ls"])).is_ok());
        assert!(plan_run(&args(&["-d"])).is_ok());
    }

    #[test]
    fn a_mise_repo_needs_nat_or_no_bootstrap() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        git(repo, &["init", "-q"]);
        std::fs::write(repo.join("a"), "a").unwrap();
        git(repo, &["add", "a"]);
        git(repo, &["commit", "-qm", "a"]);
        let path = repo.to_str().unwrap();
        let plan = plan_run(&args(&[path, "--", "true"])).unwrap();
        assert_eq!(plan.mise, None);
        std::fs::write(repo.join(".tool-versions"), "nodejs 20\n").unwrap();
        let e = refusal(&[path, "--", "true"]);
        assert!(
            e.contains(".tool-versions") && e.contains("--nat") && e.contains("--no-bootstrap"),
            "{e}"
        );
        assert_eq!(
            plan_run(&args(&["--nat", path, "--", "true"]))
                .unwrap()
                .mise,
            Some(".tool-versions")
        );
        assert!(plan_run(&args(&["--no-bootstrap", path, "--", "true"])).is_ok());
    }
}
