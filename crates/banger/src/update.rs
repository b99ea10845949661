//! `banger update`: replace a system install's binaries with a signed
//! release, restart the services, check the result, roll back on failure.
//!
//! Order of trust: the manifest only names URLs; SHA256SUMS is trusted only
//! after its signature verifies against the embedded release key; the
//! tarball only after its sha256 matches; the binaries only after they run
//! (`--version`, `bangerd --check-migrations`). After the swap, a daemon
//! that does not come up or a `doctor` that fails puts the previous
//! binaries back and restarts them again.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use banger_api::OperationInfo;
use banger_client::Client;
use banger_paths::{system as sys, Layout};
use clap::Args;

use banger_install::plan::{Binary, InstallPlan};
use banger_install::swap::{Swap, BACKUP_SUFFIX};

use crate::system::{self, require_root};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  banger update --check             # is there a newer release?\n  sudo banger update                 # to the latest stable release\n  sudo banger update --to v0.2.0\n  sudo banger update --dry-run       # download and verify, change nothing"
)]
pub struct UpdateArgs {
    /// Only say whether a newer release exists (needs no root).
    #[arg(long)]
    check: bool,
    /// Install this release (vX.Y.Z) instead of the latest stable one.
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
    /// Download, verify and try the new binaries, then stop before the swap.
    #[arg(long)]
    dry_run: bool,
    /// Update even while operations are in flight, or to the same version.
    #[arg(long)]
    force: bool,
    /// Release manifest URL (tests point this at a local server).
    #[arg(long, hide = true)]
    manifest_url: Option<String>,
    /// PEM public key to verify SHA256SUMS with, instead of the embedded one.
    #[arg(long, hide = true)]
    pubkey_file: Option<PathBuf>,
}

/// The version this CLI says it is.
fn current_version() -> &'static str {
    banger_buildinfo::VERSION
}

pub async fn run(args: UpdateArgs) -> anyhow::Result<u8> {
    let manifest_url = args
        .manifest_url
        .clone()
        .unwrap_or_else(|| banger_update::DEFAULT_MANIFEST_URL.to_string());
    let body = banger_fetch::fetch_bytes(&manifest_url, banger_update::MAX_MANIFEST_BYTES)
        .await
        .with_context(|| format!("fetch release manifest {manifest_url}"))?;
    let manifest = banger_update::Manifest::parse(&body)
        .with_context(|| format!("read release manifest {manifest_url}"))?;
    let release = match &args.to {
        Some(v) => manifest.lookup(v).with_context(|| {
            format!("release {v} is not in the manifest {manifest_url}; `banger update --check` shows the latest")
        })?,
        None => manifest.latest(),
    };
    let current = current_version();
    let newer = banger_update::compare_versions(&release.version, current).is_gt();
    if args.check {
        if newer {
            println!("update available: {current} -> {}", release.version);
        } else {
            println!("up to date ({current}; latest is {})", release.version);
        }
        return Ok(0);
    }
    require_root("update")?;
    if !Path::new(sys::INSTALL_FILE).is_file() {
        bail!(
            "banger update replaces a system install, and there is none ({} missing); install with `sudo banger system install`",
            sys::INSTALL_FILE
        );
    }
    if release.version == current && !args.force {
        println!("already at {current}; pass --force to reinstall it");
        return Ok(0);
    }
    if !args.force {
        refuse_if_busy().await?;
    }
    let key_pem = match &args.pubkey_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("read public key {}", p.display()))?,
        ),
        None => None,
    };
    let key = banger_update::release_public_key(key_pem.as_deref())?;

    let staging_root = Path::new(sys::CACHE_DIR).join("updates");
    std::fs::create_dir_all(&staging_root)
        .with_context(|| format!("create {}", staging_root.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!("{}-", release.version))
        .tempdir_in(&staging_root)
        .with_context(|| format!("create a staging dir in {}", staging_root.display()))?;
    // From here on, dropping `staging` removes everything downloaded.
    eprintln!("downloading {} ...", release.version);
    let downloaded =
        banger_update::download_release(&manifest_url, release, key, staging.path(), |_, _| {})
            .await
            .with_context(|| format!("download {}", release.version))?;
    let staged = banger_update::stage_tarball(&downloaded.tarball, &staging.path().join("bin"))
        .with_context(|| format!("unpack {}", downloaded.tarball.display()))?;
    sanity_check(&staged, &release.version)?;
    if args.dry_run {
        println!(
            "dry run: {} downloaded, signature and hashes verified, binaries run; nothing replaced",
            release.version
        );
        return Ok(0);
    }

    let sources = [
        (Binary::Agent, staged.agent.as_path()),
        (Binary::Helper, staged.helper.as_path()),
        (Binary::Bangerd, staged.bangerd.as_path()),
        (Binary::Banger, staged.banger.as_path()),
    ];
    let mut swap = Swap::new(BACKUP_SUFFIX)?;
    if let Err(e) = InstallPlan::new("/").install_binaries(&mut swap, &sources) {
        let rb = swap.rollback();
        bail!("replace the binaries: {e}{}", rollback_note(rb.err(), None));
    }
    eprintln!(
        "restarting {} and {} ...",
        sys::HELPER_UNIT,
        sys::DAEMON_UNIT
    );
    let after = async {
        system::restart_services(Some(&release.version)).await?;
        run_new_doctor()
    }
    .await;
    if let Err(e) = after {
        let rb = swap.rollback();
        let restarted = system::restart_services(None).await.err();
        bail!(
            "{:#}{}",
            e.context(format!("update to {} failed", release.version)),
            rollback_note(rb.err(), restarted)
        );
    }
    // install.toml gets the new binary's own account of itself.
    let info = match system::binary_build_info(Path::new(sys::BANGER_BIN)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "warning: {e:#}; recording {} with an unknown commit",
                release.version
            );
            banger_install::install_meta::BuildInfo {
                version: release.version.clone(),
                commit: "unknown".into(),
                built_at: "unknown".into(),
            }
        }
    };
    banger_install::install_meta::update_build_info(Path::new(sys::INSTALL_FILE), &info)?;
    if let Err(e) = swap.cleanup_backups() {
        eprintln!("warning: {e}");
    }
    println!(
        "updated {current} -> {} (commit {})",
        info.version, info.commit
    );
    Ok(0)
}

fn rollback_note(
    rollback: Option<impl std::fmt::Display>,
    restart: Option<anyhow::Error>,
) -> String {
    match (rollback, restart) {
        (None, None) => " (rolled back to the previous install)".into(),
        (Some(e), _) => format!(
            "; ROLLBACK FAILED too: {e}; the .previous files next to {} and {} hold the old binaries",
            sys::BANGER_BIN,
            sys::HELPER_BIN
        ),
        (None, Some(e)) => format!(
            " (rolled back to the previous binaries, but restarting them failed: {e:#}; see journalctl -u {})",
            sys::DAEMON_UNIT
        ),
    }
}

/// Operations still running would be cut off by the daemon's restart.
async fn refuse_if_busy() -> anyhow::Result<()> {
    let client = Client::new(Layout::system().daemon_socket());
    let ops: Vec<OperationInfo> = match client.get("/operations").await {
        Ok(o) => o,
        // A daemon that does not answer has nothing in flight to lose.
        Err(_) => return Ok(()),
    };
    let busy = busy_ops(&ops);
    if !busy.is_empty() {
        bail!(
            "operations in flight: {}; wait for them (banger operations) or pass --force",
            busy.join(", ")
        );
    }
    Ok(())
}

/// The operations a restart would cut off, as `kind target (id)`.
fn busy_ops(ops: &[OperationInfo]) -> Vec<String> {
    ops.iter()
        .filter(|o| !o.done)
        .map(|o| format!("{} {} ({})", o.kind, o.target, o.id))
        .collect()
}

/// Runs the staged binaries before anything is replaced: the CLI must say
/// it is `version`, and bangerd must accept the install's database.
fn sanity_check(staged: &banger_update::StagedRelease, version: &str) -> anyhow::Result<()> {
    let out = Command::new(&staged.banger)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", staged.banger.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.split_whitespace().any(|w| w == version) {
        bail!(
            "the release's banger says {:?}, not {version}; refusing it",
            text.trim()
        );
    }
    let out = Command::new(&staged.bangerd)
        .arg("--check-migrations")
        .env("BANGER_STATE_DIR", sys::STATE_DIR)
        .env("BANGER_RUNTIME_DIR", sys::RUNTIME_DIR)
        .output()
        .with_context(|| format!("run {} --check-migrations", staged.bangerd.display()))?;
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        Some(2) => bail!(
            "the release's bangerd cannot use this install's database ({}); staying on the current version",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => bail!(
            "the release's bangerd --check-migrations failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// The just-installed CLI's doctor, end to end; any FAIL row fails the update.
fn run_new_doctor() -> anyhow::Result<()> {
    let out = Command::new(sys::BANGER_BIN)
        .args(["doctor", "--json"])
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("run {} doctor", sys::BANGER_BIN))?;
    let report: banger_api::DoctorReport =
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the new doctor printed no report ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.status == banger_api::CheckStatus::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        bail!("the new install's doctor fails: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, done: bool) -> OperationInfo {
        serde_json::from_value(serde_json::json!({
            "id": id, "kind": "vm.create", "target": "box", "stage": "boot",
            "stages": [], "done": done, "started_at": 0, "elapsed_ms": 0
        }))
        .unwrap()
    }

    #[test]
    fn only_unfinished_operations_block_an_update() {
        assert!(busy_ops(&[op("op-1", true)]).is_empty());
        assert_eq!(
            busy_ops(&[op("op-1", true), op("op-2", false)]),
            ["vm.create box (op-2)"]
        );
    }

    #[test]
    fn rollback_note_says_what_happened() {
        assert!(rollback_note(None::<String>, None).contains("rolled back"));
        assert!(rollback_note(Some("disk full"), None).contains("ROLLBACK FAILED"));
        let n = rollback_note(None::<String>, Some(anyhow::anyhow!("unit failed")));
        assert!(
            n.contains("restarting them failed") && n.contains("unit failed"),
            "{n}"
        );
    }
}
