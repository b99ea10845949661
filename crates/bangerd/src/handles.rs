//! Per-VM runtime handles: what the daemon must know to find, stop and
//! clean up a running VM after it restarts.
//!
//! Written to `<vm dir>/handles.json` (temp file + rename) *before* the
//! in-memory view changes: a crash in between leaves disk ahead of memory,
//! which reconcile recovers from, never memory ahead of disk (a lost pid or
//! tap would leak).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const HANDLES_FILE: &str = "handles.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handles {
    /// The VMM's pid, once launched.
    pub pid: Option<u32>,
    /// The tap device, once created.
    pub tap: Option<String>,
    pub accel: Option<String>,
    pub accel_reason: Option<String>,
    /// Boot id the agent reported when the VM became ready.
    pub boot_id: Option<String>,
    /// Firecracker: the API socket (a short link into the jail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// Firecracker: the hybrid vsock socket the agent is reached through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_socket: Option<PathBuf>,
    /// Firecracker: launched through jailer (else directly).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jailed: bool,
    /// The dm-snapshot under the root disk, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dm: Option<banger_vmm::cow::DmSnapshot>,
}

pub fn path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(HANDLES_FILE)
}

pub fn load(vm_dir: &Path) -> Handles {
    std::fs::read(path(vm_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save(vm_dir: &Path, h: &Handles) -> std::io::Result<()> {
    let tmp = vm_dir.join(format!(".{HANDLES_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(h).expect("handles serialise"),
    )?;
    std::fs::rename(&tmp, path(vm_dir))
}

pub fn clear(vm_dir: &Path) {
    let _ = std::fs::remove_file(path(vm_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handles file written before the Firecracker fields existed still
    /// loads (a daemon upgrade must re-adopt running QEMU VMs).
    #[test]
    fn older_files_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            path(dir.path()),
            r#"{"pid":7,"tap":"tap-bg-01234567","accel":"tcg","accel_reason":null,"boot_id":"b"}"#,
        )
        .unwrap();
        let h = load(dir.path());
        assert_eq!(h.pid, Some(7));
        assert!(!h.jailed && h.dm.is_none());
    }

    #[test]
    fn save_load_clear() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Handles::default());
        let h = Handles {
            pid: Some(42),
            tap: Some("tap-bg-01234567".into()),
            accel: Some("tcg".into()),
            accel_reason: None,
            boot_id: None,
            api_socket: Some("/run/banger/vms/x/fc.sock".into()),
            vsock_socket: None,
            jailed: true,
            dm: Some(banger_vmm::cow::DmSnapshot {
                name: "fc-rootfs-0123456789ab".into(),
                base_loop: "/dev/loop3".into(),
                cow_loop: "/dev/loop4".into(),
                dev: "/dev/mapper/fc-rootfs-0123456789ab".into(),
            }),
        };
        save(dir.path(), &h).unwrap();
        assert_eq!(load(dir.path()), h);
        clear(dir.path());
        assert_eq!(load(dir.path()), Handles::default());
    }
}
