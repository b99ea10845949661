//! `GET /v1/vms/{name}/stats`: what a VM uses, seen from the host (the VMM
//! process, the disk files, the tap) and, while it runs, from the guest
//! agent (memory, load, uptime, filesystems).

use serde::{Deserialize, Serialize};

use crate::VmState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    pub vm: String,
    pub state: VmState,
    pub host: HostSideStats,
    /// The guest's own numbers; absent while the VM is not running or when
    /// its agent could not answer (`note` says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestStats>,
    /// Why some numbers are missing, e.g. "vm box is stopped; ...".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The host's view of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSideStats {
    /// The VMM process, while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// CPU time the VMM process used (user + system), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Resident memory of the VMM process (`VmRSS`), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// The copy-on-write root disk (its own blocks, not the image's).
    pub root_disk: DiskFile,
    /// The work disk mounted at /root.
    pub work_disk: DiskFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Bytes the guest received over its tap (the tap's tx counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Bytes the guest sent over its tap (the tap's rx counter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
}

/// A disk file on the host: the space it takes and the size it claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFile {
    pub path: String,
    /// Blocks allocated on the host's filesystem (`st_blocks * 512`).
    pub allocated_bytes: u64,
    /// The file's length (`st_size`); sparse files allocate less.
    pub apparent_bytes: u64,
}

/// The guest's view, from its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStats {
    /// CPUs the guest sees online.
    pub cpus: u32,
    pub memory_total_bytes: u64,
    /// `MemAvailable`: what new work could use without swapping.
    pub memory_available_bytes: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    pub uptime_seconds: f64,
    /// The filesystems at `/` and `/root`, as statvfs sees them.
    pub filesystems: Vec<FsUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsUsage {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Free for an unprivileged writer.
    pub available_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_vm_leaves_the_running_parts_out() {
        let s = VmStats {
            vm: "box".into(),
            state: VmState::Stopped,
            host: HostSideStats {
                pid: None,
                cpu_seconds: None,
                rss_bytes: None,
                root_disk: DiskFile {
                    path: "/s/root.qcow2".into(),
                    allocated_bytes: 4096,
                    apparent_bytes: 8192,
                },
                work_disk: DiskFile::default(),
                tap: None,
                net_rx_bytes: None,
                net_tx_bytes: None,
            },
            guest: None,
            note: Some("vm box is stopped".into()),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            !json.contains("cpu_seconds") && !json.contains("guest"),
            "{json}"
        );
        assert!(json.contains(r#""allocated_bytes":4096"#), "{json}");
        assert_eq!(serde_json::from_str::<VmStats>(&json).unwrap(), s);
    }
}
