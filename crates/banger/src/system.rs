//! `banger system install | status | restart | uninstall`: banger as two
//! systemd services, an owner-user `bangerd` and a root `banger-helper`,
//! and the system-mode rows of `banger doctor`.
//!
//! The files and their contents come from `banger-install`; this module
//! decides the order, talks to systemctl and reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use banger_api::{CheckStatus, DaemonStatus, DoctorCheck};
use banger_client::Client;
use banger_install::install_meta::{BuildInfo, InstallMeta};
use banger_install::plan::{Binary, InstallPlan, UninstallOptions};
use banger_install::swap::{Swap, BACKUP_SUFFIX};
use banger_install::units::{self, UnitParams};
use banger_paths::{system as sys, Layout};
use clap::{Args, Subcommand};

use crate::JsonFlag;

#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Install banger's binaries and its two systemd services, and start them.
    #[command(
        after_help = "Examples:\n  sudo banger system install              # owner: the user running sudo\n  sudo banger system install --owner alice\n  sudo ./build/bin/banger system install  # binaries next to this banger"
    )]
    Install(InstallArgs),
    /// Show what is installed and whether both services run.
    #[command(after_help = "Examples:\n  banger system status\n  banger system status --json")]
    Status(JsonFlag),
    /// Restart the helper, then the daemon. Running VMs keep running.
    #[command(after_help = "Examples:\n  sudo banger system restart")]
    Restart,
    /// Stop and remove the services and binaries install added.
    #[command(
        after_help = "Examples:\n  sudo banger system uninstall           # keeps VMs' disks, images and config\n  sudo banger system uninstall --purge   # removes state and cache too"
    )]
    Uninstall(UninstallArgs),
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The user the daemon runs as and who may use banger (default: the
    /// user who ran sudo).
    #[arg(long)]
    pub owner: Option<String>,
    /// Directory holding banger, bangerd, banger-helper and banger-agent
    /// (default: the directory of this banger).
    #[arg(long, value_hint = clap::ValueHint::DirPath)]
    pub from: Option<PathBuf>,
    /// Print what was installed where as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Also remove /var/lib/banger (VM disks, images, database),
    /// /var/cache/banger and /etc/banger.
    #[arg(long)]
    pub purge: bool,
    /// Uninstall even while VMs are running: they are stopped first (their
    /// disks are kept, like any stopped VM's), so no VMM outlives the services.
    #[arg(long)]
    pub force: bool,
    /// Print the removed and kept paths as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if euid() != 0 {
        bail!("{what} changes /usr/local and systemd units: run it with sudo (sudo banger {what})");
    }
    Ok(())
}

/// Runs systemctl with `args`; failures carry its stderr.
pub fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    run_tool("systemctl", args)
}

fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("run {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `systemctl is-active UNIT` as a word ("active", "failed", ...). Where
/// systemctl cannot be asked (no D-Bus for a non-root user), a unit counts
/// as active when its socket accepts a connection.
pub fn unit_state(unit: &str) -> String {
    let asked = Command::new("systemctl")
        .args(["is-active", unit])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(state) = asked {
        return state;
    }
    let sock = if unit == sys::HELPER_UNIT {
        PathBuf::from(sys::HELPER_SOCKET)
    } else {
        Layout::system().daemon_socket()
    };
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        "active".into()
    } else {
        format!(
            "unknown (systemctl could not be asked; nothing answers on {})",
            sock.display()
        )
    }
}

/// Restarts the helper, then the daemon, and waits until the daemon
/// answers. `want_version`, when given, must appear in its version line
/// (so an old daemon still answering does not count).
pub async fn restart_services(want_version: Option<&str>) -> anyhow::Result<DaemonStatus> {
    // A unit that hit its start limit refuses `restart` until reset.
    let _ = systemctl(&["reset-failed", sys::HELPER_UNIT, sys::DAEMON_UNIT]);
    systemctl(&["restart", sys::HELPER_UNIT])?;
    systemctl(&["restart", sys::DAEMON_UNIT])?;
    wait_daemon_ready(want_version, Duration::from_secs(30)).await
}

pub async fn wait_daemon_ready(
    want_version: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<DaemonStatus> {
    let client = Client::new(Layout::system().daemon_socket());
    let t = Instant::now();
    let mut last = String::from("no answer");
    while t.elapsed() < timeout {
        match client.get::<DaemonStatus>("/status").await {
            Ok(st)
                if want_version.is_none_or(|v| st.version.split_whitespace().any(|w| w == v)) =>
            {
                return Ok(st)
            }
            Ok(st) => last = format!("it answers as {}", st.version),
            Err(banger_client::ClientError::Unreachable { .. }) => {
                last = format!(
                    "nothing answers on {}",
                    Layout::system().daemon_socket().display()
                )
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "bangerd did not come up within {}s ({last}); see journalctl -u {}",
        timeout.as_secs(),
        sys::DAEMON_UNIT
    )
}

fn lookup_owner(name: &str) -> anyhow::Result<units::Owner> {
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("look up user {name}"))?
        .with_context(|| format!("no user named {name:?}; pass --owner with an existing user"))?;
    if user.uid.is_root() {
        bail!("the owner must not be root: bangerd never runs as root in a system install; pass --owner <user>");
    }
    Ok(units::Owner {
        user: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    })
}

/// Runs `<bin> version` and parses its three lines.
pub fn binary_build_info(banger_bin: &Path) -> anyhow::Result<BuildInfo> {
    let out = Command::new(banger_bin)
        .arg("version")
        .output()
        .with_context(|| format!("run {} version", banger_bin.display()))?;
    if !out.status.success() {
        bail!("{} version failed ({})", banger_bin.display(), out.status);
    }
    banger_update::parse_version_output(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("read the output of {} version", banger_bin.display()))
}

pub async fn install(args: InstallArgs) -> anyhow::Result<u8> {
    require_root("system install")?;
    let owner_name = match args.owner.or_else(|| std::env::var("SUDO_USER").ok()) {
        Some(o) if !o.is_empty() => o,
        _ => bail!("no owner: pass --owner <user> (the user bangerd runs as and who uses banger)"),
    };
    let owner = lookup_owner(&owner_name)?;
    let from = match args.from {
        Some(d) => d,
        None => std::env::current_exe()
            .context("find this banger's directory")?
            .parent()
            .map(Path::to_path_buf)
            .context("this banger has no parent directory")?,
    };
    let mut sources = Vec::new();
    for b in Binary::ALL {
        let src = from.join(b.file_name());
        if !src.is_file() {
            bail!(
                "{} missing: --from must hold banger, bangerd, banger-helper and banger-agent (scripts/build puts them in build/bin)",
                src.display()
            );
        }
        sources.push((b, src));
    }
    let settings = banger_paths::Settings::from_env(Path::new(sys::CONFIG_FILE))?;
    let qemu = banger_paths::which(banger_vmm::qemu::DEFAULT_QEMU_BIN).with_context(|| {
        format!(
            "{} not found on PATH; install qemu-system-x86 first",
            banger_vmm::qemu::DEFAULT_QEMU_BIN
        )
    })?;
    let params = UnitParams::new(
        owner.clone(),
        units::VmmBins {
            firecracker: settings.firecracker_bin.clone(),
            jailer: settings.jailer_bin.clone(),
            qemu,
        },
    )?;
    let plan = InstallPlan::new("/");
    // What to go back to if this install fails: the previous install, or
    // nothing at all.
    let previous = plan.read_meta().ok();
    eprintln!("installing banger for {} (uid {})", owner.user, owner.uid);
    let mut swap = Swap::new(BACKUP_SUFFIX)?;
    let done = async {
        plan.create_dirs(owner.uid, owner.gid)?;
        let staged: Vec<(Binary, &Path)> = sources.iter().map(|(b, p)| (*b, p.as_path())).collect();
        plan.install_binaries(&mut swap, &staged)?;
        plan.install_units(&mut swap, &params)?;
        let build = binary_build_info(Path::new(sys::BANGER_BIN))?;
        let mut meta = InstallMeta::new(params.owner(), &build);
        if let Some(p) = &previous {
            meta.installed_at = p.installed_at.clone();
        }
        plan.write_meta(&meta)?;
        run_tool("systemd-tmpfiles", &["--create", sys::TMPFILES_FILE])?;
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", sys::HELPER_UNIT, sys::DAEMON_UNIT])?;
        let st = restart_services(Some(&build.version)).await?;
        anyhow::Ok((build, st))
    }
    .await;
    let (build, st) = match done {
        Ok(v) => v,
        Err(e) => {
            let undone = undo_install(&plan, &mut swap, previous.as_ref()).await;
            return Err(e.context(format!("install failed; {undone}")));
        }
    };
    if let Err(e) = swap.cleanup_backups() {
        eprintln!("warning: {e}");
    }
    let placed = vec![
        ("cli", sys::BANGER_BIN.to_string()),
        ("daemon", format!("{} ({})", sys::DAEMON_UNIT, st.socket)),
        (
            "helper",
            format!("{} ({})", sys::HELPER_UNIT, sys::HELPER_SOCKET),
        ),
        ("state", sys::STATE_DIR.to_string()),
        ("install record", sys::INSTALL_FILE.to_string()),
    ];
    if args.json {
        crate::vmcmd::print_json(&serde_json::json!({
            "version": build.version,
            "owner": owner.user,
            "placed": placed
                .iter()
                .map(|(what, place)| serde_json::json!({"what": what, "where": place}))
                .collect::<Vec<_>>(),
        }))?;
    } else {
        println!("installed {} for {}", build.version, owner.user);
        let rows: Vec<Vec<String>> = placed
            .into_iter()
            .map(|(what, place)| vec![what.to_string(), place])
            .collect();
        print!("{}", crate::table::render(&["WHAT", "WHERE"], &rows));
    }
    Ok(0)
}

/// Puts the host back after a failed install: the previous install's
/// binaries, units and record, restarted; or, for a first install, nothing
/// of banger's at all (stopped, disabled, every file install added
/// removed). Says which, and what could not be undone.
async fn undo_install(
    plan: &InstallPlan,
    swap: &mut Swap,
    previous: Option<&InstallMeta>,
) -> String {
    let mut problems = Vec::new();
    let mut kept = Vec::new();
    match previous {
        Some(meta) => {
            if let Err(e) = swap.rollback() {
                problems.push(e.to_string());
            }
            if let Err(e) = plan.write_meta(meta) {
                problems.push(e.to_string());
            }
            let _ = systemctl(&["daemon-reload"]);
            if let Err(e) = restart_services(None).await {
                problems.push(format!("{e:#}"));
            }
        }
        None => {
            let _ = systemctl(&["disable", "--now", sys::DAEMON_UNIT, sys::HELPER_UNIT]);
            match plan.uninstall(UninstallOptions { purge: false }) {
                Ok(report) => {
                    kept = report
                        .kept
                        .iter()
                        .map(|k| k.path.display().to_string())
                        .collect()
                }
                Err(e) => problems.push(e.to_string()),
            }
            let _ = systemctl(&["daemon-reload"]);
            let _ = systemctl(&["reset-failed", sys::DAEMON_UNIT, sys::HELPER_UNIT]);
        }
    }
    let what = match (previous, kept.is_empty()) {
        (Some(_), _) => "the previous install is back".to_string(),
        (None, true) => "removed what it had added".to_string(),
        (None, false) => format!(
            "removed what it had added (kept data dirs that may predate it: {})",
            kept.join(", ")
        ),
    };
    if problems.is_empty() {
        what
    } else {
        format!("{what}, except: {}", problems.join("; "))
    }
}

pub async fn status(json: bool) -> anyhow::Result<u8> {
    let meta = InstallMeta::read(Path::new(sys::INSTALL_FILE)).ok();
    let helper = unit_state(sys::HELPER_UNIT);
    let daemon = unit_state(sys::DAEMON_UNIT);
    let st = Client::new(Layout::system().daemon_socket())
        .get::<DaemonStatus>("/status")
        .await
        .ok();
    if json {
        crate::vmcmd::print_json(&serde_json::json!({
            "installed": meta.is_some(),
            "install": meta,
            "services": { sys::HELPER_UNIT: helper, sys::DAEMON_UNIT: daemon },
            "daemon": st,
        }))?;
    } else {
        let Some(m) = &meta else {
            println!(
                "banger is not installed as a system service ({} missing); install with `sudo banger system install`",
                sys::INSTALL_FILE
            );
            return Ok(1);
        };
        let rows = vec![
            vec![
                "owner".into(),
                format!("{} (uid {})", m.owner_user, m.owner_uid),
            ],
            vec![
                "version".into(),
                format!("{} (commit {}, built {})", m.version, m.commit, m.built_at),
            ],
            vec!["installed at".into(), m.installed_at.clone()],
            vec![sys::HELPER_UNIT.into(), helper.clone()],
            vec![sys::DAEMON_UNIT.into(), daemon.clone()],
            vec![
                "daemon".into(),
                st.as_ref()
                    .map(|s| format!("{} on {}", s.version, s.socket))
                    .unwrap_or_else(|| "not answering".into()),
            ],
        ];
        print!("{}", crate::table::render(&["WHAT", "STATE"], &rows));
    }
    Ok(
        if meta.is_some() && helper == "active" && daemon == "active" {
            0
        } else {
            1
        },
    )
}

pub async fn restart() -> anyhow::Result<u8> {
    require_root("system restart")?;
    if !Path::new(sys::INSTALL_FILE).is_file() {
        bail!(
            "banger is not installed as a system service ({} missing)",
            sys::INSTALL_FILE
        );
    }
    let st = restart_services(None).await?;
    println!("restarted; {} running VM(s) kept", st.vms_running);
    Ok(0)
}

pub async fn uninstall(args: UninstallArgs) -> anyhow::Result<u8> {
    require_root("system uninstall")?;
    let client = Client::new(Layout::system().daemon_socket());
    if let Ok(st) = client.get::<DaemonStatus>("/status").await {
        if st.vms_running > 0 && !args.force {
            bail!(
                "{} VM(s) still running; stop or delete them first (banger vm list), or pass --force to stop them",
                st.vms_running
            );
        }
        // VMMs outlive the services (KillMode=process): stop the VMs while
        // the daemon can still do it, or they would run on with nobody to
        // manage them.
        let vms: Vec<banger_api::VmInfo> = client.get("/vms").await?;
        for vm in vms
            .iter()
            .filter(|v| v.state == banger_api::VmState::Running)
        {
            let _: banger_api::VmInfo = client
                .post(&format!("/vms/{}/stop", vm.name), &serde_json::json!({}))
                .await
                .with_context(|| format!("stop vm {} before uninstalling", vm.name))?;
            eprintln!("stopped vm {}", vm.name);
        }
    }
    for unit in [sys::DAEMON_UNIT, sys::HELPER_UNIT] {
        // Missing units are fine: uninstall finishes what it can.
        let _ = systemctl(&["disable", "--now", unit]);
    }
    let report = InstallPlan::new("/").uninstall(UninstallOptions { purge: args.purge })?;
    let _ = systemctl(&["daemon-reload"]);
    if args.json {
        crate::vmcmd::print_json(&serde_json::json!({
            "removed": report.removed,
            "kept": report
                .kept
                .iter()
                .map(|k| serde_json::json!({"path": k.path, "reason": k.reason}))
                .collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    print!("{}", uninstall_table(&report));
    if !args.purge && !report.kept.is_empty() {
        println!("(sudo banger system uninstall --purge removes those too)");
    }
    Ok(0)
}

/// One row per path uninstall touched: removed, or kept and why.
fn uninstall_table(report: &banger_install::plan::UninstallReport) -> String {
    let rows: Vec<Vec<String>> = report
        .removed
        .iter()
        .map(|p| vec![p.display().to_string(), "removed".into(), String::new()])
        .chain(report.kept.iter().map(|k| {
            vec![
                k.path.display().to_string(),
                "kept".into(),
                k.reason.to_string(),
            ]
        }))
        .collect();
    crate::table::render(&["PATH", "RESULT", "REASON"], &rows)
}

fn check(name: &str, status: CheckStatus, detail: impl Into<String>) -> DoctorCheck {
    DoctorCheck {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// Doctor rows that compare the host with what a system install promises;
/// outside system mode one warning that says the trust model is looser.
pub fn doctor_checks(layout: &Layout) -> Vec<DoctorCheck> {
    if !layout.system {
        return vec![check(
            "system install",
            CheckStatus::Warn,
            "running outside the system install: bangerd and the root helper are plain processes \
             (banger daemon start), without the services' sandboxing; fine for development, \
             not for shared hosts (see docs/privileges.md; sudo banger system install)",
        )];
    }
    let mut out = Vec::new();
    let meta = match InstallMeta::read(Path::new(sys::INSTALL_FILE)) {
        Ok(m) => m,
        Err(e) => {
            return vec![check("install record", CheckStatus::Fail, e.to_string())];
        }
    };
    for unit in [sys::HELPER_UNIT, sys::DAEMON_UNIT] {
        let st = unit_state(unit);
        out.push(if st == "active" {
            check(unit, CheckStatus::Pass, "active")
        } else {
            check(
                unit,
                CheckStatus::Fail,
                format!("{st}; sudo systemctl start {unit}, or see journalctl -u {unit}"),
            )
        });
    }
    for (name, path) in [
        ("daemon socket", layout.daemon_socket()),
        ("helper socket", layout.helper_socket()),
    ] {
        out.push(socket_check(name, &path, meta.owner_uid));
    }
    for (name, unit, required) in [
        (
            "helper unit hardening",
            sys::HELPER_UNIT,
            banger_install::hardening::HELPER_REQUIRED,
        ),
        (
            "daemon unit hardening",
            sys::DAEMON_UNIT,
            banger_install::hardening::DAEMON_REQUIRED,
        ),
    ] {
        let path = Path::new(sys::UNIT_DIR).join(unit);
        out.push(match std::fs::read_to_string(&path) {
            Err(e) => check(name, CheckStatus::Fail, format!("{}: {e}", path.display())),
            Ok(text) => {
                let mut missing = banger_install::hardening::missing_directives(&text, required);
                if unit == sys::DAEMON_UNIT {
                    let user = format!("User={}", meta.owner_user);
                    if !banger_install::hardening::missing_directives(
                        &text,
                        &[("User", meta.owner_user.as_str())],
                    )
                    .is_empty()
                    {
                        missing.push(user);
                    }
                }
                if missing.is_empty() {
                    check(
                        name,
                        CheckStatus::Pass,
                        format!("{} has every directive", path.display()),
                    )
                } else {
                    check(
                        name,
                        CheckStatus::Fail,
                        format!(
                            "{} lacks {}; re-run sudo banger system install",
                            path.display(),
                            missing.join(", ")
                        ),
                    )
                }
            }
        });
    }
    out.push(firecracker_owner_check(layout));
    out.push(version_check(&meta));
    out
}

fn socket_check(name: &str, path: &Path, owner_uid: u32) -> DoctorCheck {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match std::fs::symlink_metadata(path) {
        Err(e) => check(name, CheckStatus::Fail, format!("{}: {e}", path.display())),
        Ok(m) if !m.file_type().is_socket() => check(
            name,
            CheckStatus::Fail,
            format!("{} is not a socket", path.display()),
        ),
        Ok(m) if m.mode() & 0o777 != 0o600 || m.uid() != owner_uid => check(
            name,
            CheckStatus::Fail,
            format!(
                "{} is mode {:o} owned by uid {}; want 600 owned by the owner (uid {owner_uid}); sudo banger system restart",
                path.display(),
                m.mode() & 0o777,
                m.uid()
            ),
        ),
        Ok(_) => check(
            name,
            CheckStatus::Pass,
            format!("{} 0600, owner uid {owner_uid}", path.display()),
        ),
    }
}

/// The Firecracker binary the root helper would run: root-owned, a regular
/// file, not group/world-writable. Missing is only a warning (QEMU works).
fn firecracker_owner_check(layout: &Layout) -> DoctorCheck {
    use std::os::unix::fs::MetadataExt;
    let settings = banger_paths::Settings::from_env(&layout.config_file).unwrap_or_default();
    let bin = &settings.firecracker_bin;
    match std::fs::symlink_metadata(bin) {
        Err(_) => check(
            "firecracker binary",
            CheckStatus::Warn,
            format!("{} not present; VMs use QEMU", bin.display()),
        ),
        Ok(m) if !m.file_type().is_file() => check(
            "firecracker binary",
            CheckStatus::Fail,
            format!("{} is not a regular file (symlinks are refused)", bin.display()),
        ),
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 || m.mode() & 0o111 == 0 => check(
            "firecracker binary",
            CheckStatus::Fail,
            format!(
                "{} is uid {} mode {:o}; it must be root-owned, executable, not group/world-writable (sudo chown root {0}; sudo chmod 755 {0})",
                bin.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
        ),
        Ok(_) => check(
            "firecracker binary",
            CheckStatus::Pass,
            format!("{} root-owned, not writable by others", bin.display()),
        ),
    }
}

fn version_check(meta: &InstallMeta) -> DoctorCheck {
    let cli = banger_buildinfo::VERSION;
    let detail = format!(
        "cli {cli} (commit {}), installed {} (commit {})",
        banger_buildinfo::COMMIT,
        meta.version,
        meta.commit
    );
    if banger_buildinfo::is_dev(cli) || banger_buildinfo::is_dev(&meta.version) {
        return check(
            "banger version",
            CheckStatus::Pass,
            format!("{detail}; dev build, not compared"),
        );
    }
    if cli != meta.version || banger_buildinfo::COMMIT != meta.commit {
        return check(
            "banger version",
            CheckStatus::Warn,
            format!(
                "{detail}: this CLI is not the installed one ({})",
                sys::BANGER_BIN
            ),
        );
    }
    check("banger version", CheckStatus::Pass, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninstall_report_is_one_table() {
        let report = banger_install::plan::UninstallReport {
            removed: vec![PathBuf::from("/usr/local/bin/banger")],
            kept: vec![banger_install::plan::Kept {
                path: PathBuf::from("/var/lib/banger"),
                reason: "the owner's data (--purge removes it)",
            }],
        };
        assert_eq!(
            uninstall_table(&report),
            "PATH                   RESULT   REASON\n\
             /usr/local/bin/banger  removed  -\n\
             /var/lib/banger        kept     the owner's data (--purge removes it)\n"
        );
    }

    fn meta(version: &str, commit: &str) -> InstallMeta {
        InstallMeta {
            owner_user: "alice".into(),
            owner_uid: 1000,
            owner_gid: 1000,
            owner_home: "/home/alice".into(),
            version: version.into(),
            commit: commit.into(),
            built_at: "2026-11-01T00:00:00Z".into(),
            installed_at: "2026-11-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn outside_system_mode_doctor_has_one_warning_about_trust() {
        let mut layout = Layout::from_lookup(|k| {
            (k == "BANGER_STATE_DIR").then(|| PathBuf::from("/nonexistent/state"))
        });
        layout.system = false;
        let rows = doctor_checks(&layout);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, CheckStatus::Warn);
        assert!(rows[0].detail.contains("outside the system install"));
        assert!(rows[0].detail.contains("docs/privileges.md"));
    }

    #[test]
    fn version_drift_warns_except_for_dev_builds() {
        // This test binary is a development build: never compared.
        let row = version_check(&meta("v9.9.9", "abc"));
        if banger_buildinfo::is_dev(banger_buildinfo::VERSION) {
            assert_eq!(row.status, CheckStatus::Pass);
            assert!(row.detail.contains("dev build"), "{}", row.detail);
        } else {
            assert_eq!(row.status, CheckStatus::Warn);
        }
        let dev_install = version_check(&meta("v0.1.0-dev", "abc"));
        assert_eq!(dev_install.status, CheckStatus::Pass);
    }

    #[test]
    fn socket_check_wants_a_0600_socket_of_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let me = euid();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(socket_check("s", &sock, me).status, CheckStatus::Pass);
        assert_eq!(socket_check("s", &sock, me + 1).status, CheckStatus::Fail);
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let row = socket_check("s", &sock, me);
        assert_eq!(row.status, CheckStatus::Fail);
        assert!(row.detail.contains("666"), "{}", row.detail);
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(socket_check("s", &file, me).detail.contains("not a socket"));
        assert_eq!(
            socket_check("s", &dir.path().join("missing"), me).status,
            CheckStatus::Fail
        );
    }
}
