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
        };
        save(dir.path(), &h).unwrap();
        assert_eq!(load(dir.path()), h);
        clear(dir.path());
        assert_eq!(load(dir.path()), Handles::default());
    }
}
