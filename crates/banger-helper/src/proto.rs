//! The wire protocol between bangerd and the helper: `POST /v1/op` with one
//! [`HelperRequest`] as JSON, answered by one [`HelperResponse`] (2xx) or an
//! [`banger_api::ApiError`] body (`{code, message, op_id}`, 4xx/5xx).
//!
//! The op set is closed: anything else fails to deserialize and is refused
//! as `bad_request` before any code runs.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_vmm::cow::{DmSnapshot, FsckOutcome};
use banger_vmm::qemu::QemuConfig;
use serde::{Deserialize, Serialize};

/// The one route of the helper.
pub const OP_PATH: &str = "/v1/op";

/// Largest request body the helper reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The helper's protocol version, reported by `Ping`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every privileged operation the helper performs. Nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    /// Liveness and version check.
    Ping,
    /// Create the bridge if missing, add `ip/prefix`, set it up.
    EnsureBridge {
        name: String,
        ip: Ipv4Addr,
        prefix: u8,
    },
    /// Create a persistent tap owned by the helper's configured owner and
    /// attach it to `bridge`.
    CreateTap { name: String, bridge: String },
    /// Delete a tap; a missing one is not an error.
    DeleteTap { name: String },
    /// Start QEMU detached, as the owner; answers with the VMM's pid.
    LaunchQemu { config: Box<QemuConfig> },
    /// Send an allowlisted signal to the VMM of `vm_id`.
    SignalVmm {
        vm_id: String,
        pid: u32,
        signal: String,
    },
    /// SIGKILL the VMM of `vm_id`.
    KillVmm { vm_id: String, pid: u32 },
    /// Hand a file under a per-VM directory over to the owner.
    ChownToOwner { path: PathBuf },
    /// Snapshot `base` (under `<state>/images/`) as
    /// `/dev/mapper/fc-rootfs-<vm_id>`, with `cow` (under
    /// `<state>/vms/<vm_id>/`) as the copy-on-write store.
    CreateDmSnapshot {
        vm_id: String,
        base: PathBuf,
        cow: PathBuf,
    },
    /// Tear down a snapshot made by `CreateDmSnapshot`; parts already gone
    /// are skipped.
    RemoveDmSnapshot { handle: DmSnapshot },
    /// `e2fsck -fy` a snapshot device that no VM has open.
    FsckSnapshot { dev: String },
}

impl HelperRequest {
    /// The op's wire name, for logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            HelperRequest::Ping => "ping",
            HelperRequest::EnsureBridge { .. } => "ensure_bridge",
            HelperRequest::CreateTap { .. } => "create_tap",
            HelperRequest::DeleteTap { .. } => "delete_tap",
            HelperRequest::LaunchQemu { .. } => "launch_qemu",
            HelperRequest::SignalVmm { .. } => "signal_vmm",
            HelperRequest::KillVmm { .. } => "kill_vmm",
            HelperRequest::ChownToOwner { .. } => "chown_to_owner",
            HelperRequest::CreateDmSnapshot { .. } => "create_dm_snapshot",
            HelperRequest::RemoveDmSnapshot { .. } => "remove_dm_snapshot",
            HelperRequest::FsckSnapshot { .. } => "fsck_snapshot",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelperResponse {
    /// Answer to `Ping`.
    Pong { version: String },
    /// The op was carried out (or already in the wanted state).
    Done,
    /// Answer to `LaunchQemu`.
    Launched { pid: u32 },
    /// Answer to `CreateDmSnapshot`: the handle to store and hand back for
    /// removal.
    DmSnapshot(DmSnapshot),
    /// Answer to `FsckSnapshot`.
    Fscked { outcome: FsckOutcome },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = HelperRequest::EnsureBridge {
            name: "br-fc".into(),
            ip: Ipv4Addr::new(172, 30, 0, 1),
            prefix: 24,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"ensure_bridge","name":"br-fc","ip":"172.30.0.1","prefix":24}"#
        );
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<HelperRequest>(r#"{"op":"ping"}"#).unwrap(),
            HelperRequest::Ping
        );
        assert_eq!(
            serde_json::to_string(&HelperResponse::Launched { pid: 42 }).unwrap(),
            r#"{"result":"launched","pid":42}"#
        );
    }

    #[test]
    fn closed_op_set_and_strict_fields() {
        for bad in [
            r#"{"op":"exec","argv":["/bin/sh"]}"#,
            r#"{"op":"create_tap","name":"tap-bg-1","bridge":"br-fc","owner":0}"#,
            r#"{"op":"delete_tap"}"#,
            r#"{"op":"ensure_bridge","name":"br-fc","ip":"fd00::1","prefix":24}"#,
            r#"{"op":"ensure_bridge","name":"br-fc","ip":"172.30.0.1","prefix":300}"#,
            r#"{"op":"kill_vmm","vm_id":"0123456789ab","pid":-1}"#,
            r#"{"name":"tap-bg-1"}"#,
        ] {
            // (Unknown fields are refused on every op with fields; serde cannot
            // apply that to the field-less `ping`, where they are harmless.)
            assert!(serde_json::from_str::<HelperRequest>(bad).is_err(), "{bad}");
        }
    }
}
