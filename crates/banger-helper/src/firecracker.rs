//! The Firecracker ops: `LaunchFirecracker` and `CleanupFirecracker`, and
//! recognising a VM's Firecracker for `SignalVmm`/`KillVmm`.
//!
//! The binaries come from the helper's own command line
//! ([`FirecrackerConfig`]), never from a request, and are checked before
//! each launch ([`checks::root_executable`]). Everything a request names
//! is validated first ([`checks::launch_spec`]); the filesystem work goes
//! through descriptors opened without following symlinks ([`fsx`]).
//!
//! - [`stage`]: the jailer chroot and the short socket links.
//! - [`start`]: running jailer or Firecracker detached and waiting for it.

pub mod checks;
pub mod fsx;
pub mod stage;
pub mod start;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use banger_api::ApiError;
use banger_vmm::jailer::{JailerLayout, LaunchSpec, Launched, FIRECRACKER_NAME};
use banger_vmm::proc::{self, FcMatch};

use crate::ops::HelperConfig;
use crate::validate::{self, Roots};

/// Where the helper finds the two binaries (`--firecracker-bin`,
/// `--jailer-bin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    pub firecracker_bin: PathBuf,
    pub jailer_bin: PathBuf,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        FirecrackerConfig {
            firecracker_bin: banger_vmm::jailer::DEFAULT_FIRECRACKER_BIN.into(),
            jailer_bin: banger_vmm::jailer::DEFAULT_JAILER_BIN.into(),
        }
    }
}

impl From<fsx::FsError> for ApiError {
    fn from(e: fsx::FsError) -> ApiError {
        match e {
            fsx::FsError::NotADir(_) | fsx::FsError::NotAFile(_) => {
                ApiError::bad_request(e.to_string())
            }
            _ => ApiError::failed(e.to_string()),
        }
    }
}

impl From<stage::RemoveError> for ApiError {
    fn from(e: stage::RemoveError) -> ApiError {
        match e {
            stage::RemoveError::Invalid(i) => i.into(),
            stage::RemoveError::Fs(f) => f.into(),
        }
    }
}

/// VMs with a Firecracker op in flight: two launches (or a launch and a
/// cleanup) of one VM must not interleave their staging and removal.
static BUSY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

struct Busy(String);

impl Busy {
    fn claim(vm_id: &str) -> Result<Busy, ApiError> {
        let mut set = BUSY.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(vm_id.to_string()) {
            return Err(ApiError::conflict(format!(
                "another firecracker operation for vm {vm_id} is in progress"
            )));
        }
        Ok(Busy(vm_id.to_string()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// The running Firecracker of `vm_id`, jailed or direct, if any.
pub fn find(roots: &Roots, vm_id: &str) -> Option<u32> {
    let pidfile = JailerLayout::new(&roots.state_dir).pidfile(vm_id);
    proc::find_firecracker(vm_id, &pidfile, &roots.runtime_dir)
}

/// True when `pid` is the VM's QEMU or its Firecracker (see
/// [`proc::is_vmm_for`], [`proc::is_firecracker_for`]).
pub fn is_our_vmm(roots: &Roots, vm_id: &str, pid: u32) -> bool {
    let jailer_pidfile = JailerLayout::new(&roots.state_dir).pidfile(vm_id);
    proc::is_vmm_for(pid, &roots.pidfile(vm_id))
        || proc::is_firecracker_for(
            pid,
            vm_id,
            FcMatch::Jailer {
                pidfile: &jailer_pidfile,
            },
        )
        || proc::is_firecracker_for(
            pid,
            vm_id,
            FcMatch::Direct {
                runtime_dir: &roots.runtime_dir,
            },
        )
}

fn check_binary(path: &std::path::Path, name: Option<&str>) -> Result<(), ApiError> {
    checks::root_executable(path, name)
        .map_err(|e| ApiError::failed(format!("refusing to run it: {e}")))
}

/// Validates and starts a VM's Firecracker. Runs on a blocking thread.
///
/// Refuses while the VM already has a live Firecracker; clears leftovers
/// of an earlier run first; on any failure kills what it started and
/// removes everything it staged.
pub fn launch(cfg: &HelperConfig, spec: &LaunchSpec) -> Result<Launched, ApiError> {
    let drives = checks::launch_spec(spec, &cfg.roots)?;
    if spec.jailer && !cfg.privileged {
        return Err(ApiError::failed(
            "jailer mode needs root; this helper runs unprivileged (--allow-non-root)",
        ));
    }
    check_binary(&cfg.firecracker.firecracker_bin, Some(FIRECRACKER_NAME))?;
    if spec.jailer {
        check_binary(&cfg.firecracker.jailer_bin, None)?;
    }
    let _busy = Busy::claim(&spec.vm_id)?;
    if let Some(pid) = find(&cfg.roots, &spec.vm_id) {
        return Err(ApiError::conflict(format!(
            "vm {} already has a running firecracker (pid {pid})",
            spec.vm_id
        )));
    }
    teardown(&cfg.roots, &spec.vm_id)?;
    let res = if spec.jailer {
        start::jailed(cfg, spec, &drives)
    } else {
        start::direct(cfg, spec)
    };
    if res.is_err() {
        if let Err(e) = teardown(&cfg.roots, &spec.vm_id) {
            tracing::warn!(vm_id = %spec.vm_id, error = %e.message, "cleanup after a failed launch failed");
        }
    }
    res
}

/// Stops the VM's Firecracker if it still runs (SIGKILL, verified as ours),
/// then removes its chroot (unmounting first) and its socket links and
/// pidfile. Idempotent: nothing there is fine.
pub fn cleanup(roots: &Roots, vm_id: &str) -> Result<(), ApiError> {
    validate::vm_id(vm_id)?;
    let _busy = Busy::claim(vm_id)?;
    if let Some(pid) = find(roots, vm_id) {
        match crate::ops::signal_vmm(roots, vm_id, pid as i32, libc::SIGKILL) {
            Ok(()) => {}
            Err(e) if e.code == banger_api::ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        if !start::wait_gone(pid, Duration::from_secs(5)) {
            return Err(ApiError::failed(format!(
                "firecracker of vm {vm_id} (pid {pid}) is still running after SIGKILL"
            )));
        }
    }
    teardown(roots, vm_id)
}

fn teardown(roots: &Roots, vm_id: &str) -> Result<(), ApiError> {
    stage::remove_chroot(roots, vm_id)?;
    stage::remove_runtime_entries(roots, vm_id)?;
    Ok(())
}

#[cfg(test)]
mod tests;
