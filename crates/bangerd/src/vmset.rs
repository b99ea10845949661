//! `PATCH /vms/{name}` (`banger vm set`): a new shape for a stopped VM.
//!
//! Under the VM's lock, so it never races a start: refuse unless stopped,
//! check the request against this host (the authoritative check; the CLI's
//! is a courtesy), grow the work disk in place if asked
//! ([`banger_image::ext4::grow`]: a failure leaves the old, valid disk),
//! and only then write the new shape to the database. The next start boots
//! with it.

use std::path::Path;

use banger_api::{ApiError, HostLimits, SetVmRequest, SetVmResult, VmSpec, VmState};
use banger_store::VmRecord;

use crate::daemon::Shared;
use crate::vm::{self, store_err, vm_dir};

const MIB: u64 = 1 << 20;

pub async fn set(d: Shared, name: String, req: SetVmRequest) -> Result<SetVmResult, ApiError> {
    if req.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to change: pass --vcpu, --memory or --disk",
        ));
    }
    let rec = vm::find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    vm::spawn_detached(async move {
        let _g = lock.lock().await;
        let rec = vm::find(&d, &name)?;
        refuse_unless_stopped(&d, &rec)?;
        let before = spec(&rec);
        let dir = vm_dir(&d, &rec);
        let after = req
            .apply(&before, &host_limits(&dir)?)
            .map_err(ApiError::bad_request)?;
        if after.work_disk_mib != before.work_disk_mib {
            let disk = dir.join(crate::workdisk::FILE);
            let bytes = after.work_disk_mib * MIB;
            let vm_dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                detach_warm_work_disk(&vm_dir)?;
                banger_image::ext4::grow(&disk, bytes).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                ApiError::failed(format!(
                    "grow the work disk of vm {name}: {e}; nothing was changed"
                ))
            })?;
        }
        if after != before
            && !d
                .store
                .set_vm_spec(&rec.id, after.vcpus, after.memory_mib, after.work_disk_mib)
                .map_err(store_err)?
        {
            // Cannot happen while we hold the lock; said plainly if it does.
            return Err(ApiError::conflict(format!(
                "vm {name} changed state while its shape was being set; try again"
            )));
        }
        tracing::info!(vm = %name, ?before, ?after, "vm shape set");
        let rec = vm::find(&d, &name)?;
        Ok(SetVmResult {
            before,
            vm: vm::info(&d, &rec),
        })
    })
    .await
}

fn spec(rec: &VmRecord) -> VmSpec {
    VmSpec {
        vcpus: rec.vcpus,
        memory_mib: rec.memory_mib,
        work_disk_mib: rec.work_disk_mib,
    }
}

/// A running VM (by its row, or by a VMM still alive) and one being
/// created keep their shape.
fn refuse_unless_stopped(d: &Shared, rec: &VmRecord) -> Result<(), ApiError> {
    let name = &rec.name;
    if rec.state == VmState::Running.as_str() || vm::is_running(d, rec) {
        return Err(ApiError::conflict(format!(
            "vm {name} is running; stop it first: banger vm stop {name}"
        )));
    }
    if rec.state == VmState::Creating.as_str() {
        return Err(ApiError::conflict(format!(
            "vm {name} is still being created"
        )));
    }
    Ok(())
}

/// This host's limits; free space is measured where the VM's disks are.
pub(crate) fn host_limits(vm_dir: &Path) -> Result<HostLimits, ApiError> {
    Ok(HostLimits {
        cpus: banger_vmm::host::cpus(),
        memory_bytes: banger_vmm::host::memory_bytes().map_err(ApiError::internal)?,
        disk_free_bytes: Some(banger_vmm::host::free_bytes(vm_dir).map_err(ApiError::internal)?),
    })
}

/// A VM restored from a warm snapshot has a qcow2 work disk over the
/// snapshot's; growing works on raw ext4, so it first becomes a standalone
/// (sparse) raw image. On failure the overlay stays as it was.
fn detach_warm_work_disk(vm_dir: &std::path::Path) -> Result<(), String> {
    let overlay = vm_dir.join(crate::warm::WORK_OVERLAY);
    if !overlay.exists() {
        return Ok(());
    }
    let raw = vm_dir.join(crate::workdisk::FILE);
    let tmp = vm_dir.join(".work.ext4.converting");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(&overlay)
        .arg(&tmp)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run qemu-img: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "convert the work disk to raw: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &raw).map_err(|e| format!("rename the converted work disk: {e}"))?;
    std::fs::remove_file(&overlay).map_err(|e| format!("remove the old overlay: {e}"))
}
