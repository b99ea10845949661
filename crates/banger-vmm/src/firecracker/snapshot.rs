//! Warm starts on Firecracker: saving a booted template microVM as a
//! snapshot, and restoring new microVMs from it instead of booting them.
//!
//! Like [`super::launch`], each operation is a plan of API calls built
//! without I/O (so the order and every body are pinned by tests and checked
//! against both specs by the fake API server), and a thin async wrapper that
//! [`apply`]s it.
//!
//! What the spec and Firecracker's snapshot documentation fix:
//!
//! - `PUT /snapshot/create` is "Post-boot only" and "the microVM should be
//!   in the `Paused` state": [`save_plan`] pauses first.
//! - `PUT /snapshot/load` is "Pre-boot only" and "only accepted on a fresh
//!   Firecracker process (before configuring any resource other than the
//!   Logger and Metrics)": [`restore_plan`] starts with it, so it is for a
//!   Firecracker just spawned and given no configuration (a logger and
//!   metrics may be put before it). The loaded microVM is paused.
//! - The snapshot stores the host side of every device: each drive's
//!   `path_on_host`, each interface's tap (`host_dev_name`) and the vsock's
//!   `uds_path`. Firecracker reopens all of them on load, so a clone must
//!   either see its own resources at those same paths or be told others:
//!   `network_overrides` for the tap (both specs banger checks),
//!   `vsock_override` for the socket (1.16.1's spec only), and
//!   `PATCH /drives/{drive_id}` with a new `path_on_host` for each drive
//!   ("Post-boot only", which a loaded microVM is; the spec's `PartialDrive`
//!   has `path_on_host` in both versions), all before the guest runs again.
//!
//! What the daemon must guarantee for a restore to be correct:
//!
//! - The template's drive files stay at the template's paths (as this VM's
//!   Firecracker sees them) for as long as clones are restored: the load
//!   opens them before the drive patches move the clone onto its own
//!   files. Under jailer each chroot holds the clone's own files at the
//!   in-jail paths the template used, and the patch merely reopens them.
//!   In direct mode the load briefly holds the template's files open, so
//!   they must be the quiesced state the snapshot was taken from (guest
//!   synced before the pause) and nothing may write them.
//! - The memory file and state file are never modified while a VM restored
//!   from them runs (memory is mapped `MAP_PRIVATE` from the file).
//! - This VM's tap exists before the load, and nothing is bound at its vsock
//!   socket path (Firecracker binds it on load, as at boot).
//! - The clone comes up with the template's guest identity (MAC, IP, machine
//!   id, entropy pool): the daemon re-identifies the guest after resume.
//! - Only a logger and metrics may be put before the plan: by the spec's
//!   wording even `PUT /serial` makes the process no longer "fresh", so a
//!   restored VM's console cannot be pointed at a file through the API
//!   before the load.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::FcClient;
use super::launch::{apply, patch, put, utf8_path, ApiCall, ApplyError, PlanError};
use super::models::{
    MemoryBackend, MemoryBackendType, NetworkOverride, PartialDrive, SnapshotCreateParams,
    SnapshotLoadParams, SnapshotType, Vm, VmState, VsockOverride,
};
use super::version::{features, SemVer};

/// A failed [`save`] or [`restore`]: the plan could not be built, or a call
/// of it failed (later calls were not sent).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// The calls that turn a running template microVM into a snapshot: pause it
/// (`PATCH /vm`), then write a full snapshot, the microVM state to `state`
/// and all of guest memory to `mem` (`PUT /snapshot/create`). Firecracker
/// creates both files and flushes the drives to their backing files, so once
/// it answers the template's disks are consistent with the snapshot.
///
/// The template is left paused. It must never run again: a guest resumed
/// from the same state twice repeats its "unique" state (random seeds,
/// identifiers), and its disks are the state the snapshot refers to. The
/// daemon kills it.
///
/// `mem` is mapped `MAP_PRIVATE` by every VM restored from it and must not
/// change while any of them lives.
pub fn save_plan(state: &Path, mem: &Path) -> Result<Vec<ApiCall>, PlanError> {
    Ok(vec![
        patch(
            "/vm",
            &Vm {
                state: VmState::Paused,
            },
        ),
        put(
            "/snapshot/create",
            &SnapshotCreateParams {
                snapshot_type: SnapshotType::Full,
                snapshot_path: utf8_path("snapshot state", state)?,
                mem_file_path: utf8_path("snapshot memory", mem)?,
            },
        ),
    ])
}

/// What a VM restored from a template's snapshot gets of its own. All paths
/// are as this VM's Firecracker sees them (inside a jail, relative to its
/// root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// The snapshot's microVM state file.
    pub state: PathBuf,
    /// The snapshot's guest memory file (mapped, never written).
    pub mem: PathBuf,
    /// The interface's id in the template ([`super::launch::IFACE_ID`]).
    pub iface_id: String,
    /// This VM's tap, which must exist before the restore: Firecracker
    /// opens it on load.
    pub host_dev_name: String,
    /// This VM's vsock socket, where it differs from the template's path.
    /// `None` keeps the path stored in the snapshot, which is only right
    /// where that path already names this VM's own socket: under jailer,
    /// whose per-VM chroot puts every VM's socket at the same in-jail path
    /// ([`crate::jailer::IN_JAIL_VSOCK`]). `Some` needs a Firecracker with
    /// `vsock_override` ([`super::version::Features::snapshot_vsock_override`]);
    /// [`restore_plan`] refuses it on older ones rather than let the clone
    /// bind, or fail to bind, the template's socket.
    pub vsock_uds: Option<PathBuf>,
    /// `(drive_id, this VM's file)` for each drive of the template, each
    /// file a copy-on-write clone of the template's disk.
    pub drives: Vec<(String, PathBuf)>,
}

/// The calls that restore `spec` in a freshly started Firecracker `version`
/// with no configuration (a logger and metrics at most):
///
/// 1. `PUT /snapshot/load` with the memory file as backend, `resume_vm:
///    false`, this VM's tap in `network_overrides` and, where given, its
///    vsock socket in `vsock_override`;
/// 2. `PATCH /drives/{drive_id}` to this VM's file, for each drive, while
///    the guest is still paused, so it never runs on the template's disks;
/// 3. `PATCH /vm` `Resumed`.
///
/// Refused (before any I/O) when this Firecracker cannot override the tap
/// (every clone would open the template's) or was given a vsock socket it
/// cannot override.
pub fn restore_plan(spec: &RestoreSpec, version: SemVer) -> Result<Vec<ApiCall>, PlanError> {
    let f = features(version);
    if !f.snapshot_network_overrides {
        return Err(PlanError::RestoreUnsupported {
            version,
            why: "snapshot load has no network_overrides, so the clone would open the \
                  template's tap",
        });
    }
    if spec.vsock_uds.is_some() && !f.snapshot_vsock_override {
        return Err(PlanError::RestoreUnsupported {
            version,
            why: "snapshot load has no vsock_override, so the clone's vsock socket must be \
                  the template's path (leave vsock_uds unset where it is, as under jailer)",
        });
    }
    check_id("interface", &spec.iface_id)?;
    if spec.host_dev_name.is_empty() {
        return Err(PlanError::NoTap);
    }
    let mut drives = Vec::with_capacity(spec.drives.len());
    for (id, path) in &spec.drives {
        check_id("drive", id)?;
        if drives.iter().any(|(seen, _)| seen == id) {
            return Err(PlanError::DuplicateDrive(id.clone()));
        }
        drives.push((id.clone(), utf8_path("drive", path)?));
    }

    let load = SnapshotLoadParams {
        snapshot_path: utf8_path("snapshot state", &spec.state)?,
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: utf8_path("snapshot memory", &spec.mem)?,
        },
        // Resumed only once the drives are this VM's own.
        resume_vm: Some(false),
        track_dirty_pages: None,
        network_overrides: Some(vec![NetworkOverride {
            iface_id: spec.iface_id.clone(),
            host_dev_name: spec.host_dev_name.clone(),
        }]),
        vsock_override: spec
            .vsock_uds
            .as_ref()
            .map(|p| utf8_path("vsock socket", p))
            .transpose()?
            .map(|uds_path| VsockOverride { uds_path }),
    };
    let mut plan = vec![put("/snapshot/load", &load)];
    for (drive_id, path) in drives {
        let body = PartialDrive {
            drive_id: drive_id.clone(),
            path_on_host: Some(path),
        };
        plan.push(patch(&format!("/drives/{drive_id}"), &body));
    }
    plan.push(patch(
        "/vm",
        &Vm {
            state: VmState::Resumed,
        },
    ));
    Ok(plan)
}

/// An id that becomes a path segment (`/drives/{drive_id}`) must be one.
fn check_id(what: &'static str, id: &str) -> Result<(), PlanError> {
    if id.is_empty() || id.contains('/') {
        return Err(PlanError::BadId {
            what,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Pauses the template behind `client` and snapshots it (see [`save_plan`]).
pub async fn save(client: &FcClient, state: &Path, mem: &Path) -> Result<(), SnapshotError> {
    apply(client, &save_plan(state, mem)?).await?;
    Ok(())
}

/// Restores `spec` into the fresh Firecracker `version` behind `client` and
/// resumes it (see [`restore_plan`]). On an error after the load the process
/// holds a half-restored microVM (and a failed load ends it, Firecracker's
/// documentation says): kill it, never retry on the same process.
pub async fn restore(
    client: &FcClient,
    spec: &RestoreSpec,
    version: SemVer,
) -> Result<(), SnapshotError> {
    apply(client, &restore_plan(spec, version)?).await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
