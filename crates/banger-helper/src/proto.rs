//! The wire protocol between bangerd and the helper: `POST /v1/op` with one
//! [`HelperRequest`] as JSON, answered by one [`HelperResponse`] (2xx) or an
//! [`banger_api::ApiError`] body (`{code, message, op_id}`, 4xx/5xx).
//!
//! The op set is closed: anything else fails to deserialize and is refused
//! as `bad_request` before any code runs.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use banger_vmm::cow::{DmSnapshot, FsckOutcome};
use banger_vmm::jailer::{LaunchSpec, Launched};
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
    /// Rename the warm pool tap `pool` (`tap-bg-p<digits>`) to the tap of
    /// `vm_id` (computed here, never taken from the request) and leave it
    /// up on `bridge`.
    ClaimTap {
        pool: String,
        vm_id: String,
        bridge: String,
    },
    /// Rename the tap of `vm_id` back to the pool name `pool`.
    ReleaseTap {
        vm_id: String,
        pool: String,
        bridge: String,
    },
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
    /// Start the VM's Firecracker, through jailer or directly as the owner;
    /// answered with [`HelperResponse::FirecrackerLaunched`].
    LaunchFirecracker(LaunchSpec),
    /// Stop the VM's Firecracker if it still runs, unmount and remove its
    /// chroot, remove its socket links. Nothing there is fine.
    CleanupFirecracker { vm_id: String },
    /// Outbound NAT for one VM (see `banger_net::nat`): in banger's own
    /// nftables table, masquerade `ip` (the guest's /32) leaving through
    /// any interface but `bridge`, accept its forwarding, and switch IPv4
    /// forwarding on if it is off. Idempotent; a different address or bridge
    /// replaces the VM's rules.
    EnsureNat {
        vm_id: String,
        ip: Ipv4Addr,
        bridge: String,
    },
    /// Remove the NAT rules of `vm_id`; with the last VM the whole table
    /// goes, and forwarding is switched back off if banger switched it on.
    /// Nothing there is fine.
    RemoveNat { vm_id: String },
    /// Route the `~vm` domain to banger's DNS server through
    /// systemd-resolved: `resolvectl dns <bridge> <server>` and
    /// `resolvectl domain <bridge> ~vm`. Answered `Skipped` when
    /// systemd-resolved is not running. `server` is `A.B.C.D[:PORT]`.
    SyncResolverRouting { bridge: String, server: String },
}

impl HelperRequest {
    /// The op's wire name, for logs.
    pub fn op_name(&self) -> &'static str {
        match self {
            HelperRequest::Ping => "ping",
            HelperRequest::EnsureBridge { .. } => "ensure_bridge",
            HelperRequest::CreateTap { .. } => "create_tap",
            HelperRequest::DeleteTap { .. } => "delete_tap",
            HelperRequest::ClaimTap { .. } => "claim_tap",
            HelperRequest::ReleaseTap { .. } => "release_tap",
            HelperRequest::LaunchQemu { .. } => "launch_qemu",
            HelperRequest::SignalVmm { .. } => "signal_vmm",
            HelperRequest::KillVmm { .. } => "kill_vmm",
            HelperRequest::ChownToOwner { .. } => "chown_to_owner",
            HelperRequest::CreateDmSnapshot { .. } => "create_dm_snapshot",
            HelperRequest::RemoveDmSnapshot { .. } => "remove_dm_snapshot",
            HelperRequest::FsckSnapshot { .. } => "fsck_snapshot",
            HelperRequest::LaunchFirecracker(_) => "launch_firecracker",
            HelperRequest::CleanupFirecracker { .. } => "cleanup_firecracker",
            HelperRequest::EnsureNat { .. } => "ensure_nat",
            HelperRequest::RemoveNat { .. } => "remove_nat",
            HelperRequest::SyncResolverRouting { .. } => "sync_resolver_routing",
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
    /// Answer to `LaunchFirecracker`: the pid, the short socket paths the
    /// daemon connects to, and the paths as Firecracker sees them.
    FirecrackerLaunched(Launched),
    /// The op had nothing to act on here (why, in words); not an error.
    Skipped { reason: String },
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
    fn firecracker_ops_on_the_wire() {
        let s = r#"{"op":"launch_firecracker","vm_id":"0123456789ab","jailer":true,"kernel":"/s/images/d/vmlinux","initrd":null,"drives":[{"id":"rootfs","path":"/s/vms/0123456789ab/rootfs.ext4"}],"log":false}"#;
        let r: HelperRequest = serde_json::from_str(s).unwrap();
        let HelperRequest::LaunchFirecracker(spec) = &r else {
            panic!("{r:?}");
        };
        assert_eq!(spec.drives[0].id, "rootfs");
        assert_eq!(r.op_name(), "launch_firecracker");
        assert_eq!(serde_json::to_string(&r).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<HelperRequest>(
                r#"{"op":"cleanup_firecracker","vm_id":"0123456789ab"}"#
            )
            .unwrap(),
            HelperRequest::CleanupFirecracker {
                vm_id: "0123456789ab".into()
            }
        );
        for bad in [
            // The binaries are the helper's own, never the daemon's.
            r#"{"op":"launch_firecracker","vm_id":"0123456789ab","jailer":true,"kernel":"/k","initrd":null,"drives":[],"log":false,"firecracker_bin":"/tmp/x"}"#,
            r#"{"op":"launch_firecracker","vm_id":"0123456789ab","jailer":true,"kernel":"/k","initrd":null,"drives":[{"id":"a","path":"/p","mode":"rw"}],"log":false}"#,
            r#"{"op":"launch_firecracker","vm_id":"0123456789ab","kernel":"/k","initrd":null,"drives":[],"log":false}"#,
            r#"{"op":"cleanup_firecracker","vm_id":"0123456789ab","path":"/"}"#,
        ] {
            assert!(serde_json::from_str::<HelperRequest>(bad).is_err(), "{bad}");
        }
        let launched = HelperResponse::FirecrackerLaunched(Launched {
            pid: 42,
            api_socket: "/r/vms/a/fc.sock".into(),
            vsock_socket: "/r/vms/a/vsock.sock".into(),
            log_file: None,
            vmm: banger_vmm::jailer::VmmPaths {
                kernel: "/vmlinux".into(),
                initrd: None,
                drives: vec![],
                vsock_uds: "/v.sock".into(),
                log: None,
                console: None,
            },
        });
        let text = serde_json::to_string(&launched).unwrap();
        assert!(
            text.starts_with(r#"{"result":"firecracker_launched","pid":42,"api_socket":"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<HelperResponse>(&text).unwrap(),
            launched
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

    #[test]
    fn nat_ops_on_the_wire() {
        let ensure = HelperRequest::EnsureNat {
            vm_id: "0123456789ab".into(),
            ip: Ipv4Addr::new(172, 30, 0, 2),
            bridge: "br-fc".into(),
        };
        let s = serde_json::to_string(&ensure).unwrap();
        assert_eq!(
            s,
            r#"{"op":"ensure_nat","vm_id":"0123456789ab","ip":"172.30.0.2","bridge":"br-fc"}"#
        );
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), ensure);
        assert_eq!(ensure.op_name(), "ensure_nat");
        let remove = HelperRequest::RemoveNat {
            vm_id: "0123456789ab".into(),
        };
        let s = serde_json::to_string(&remove).unwrap();
        assert_eq!(s, r#"{"op":"remove_nat","vm_id":"0123456789ab"}"#);
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), remove);
        assert_eq!(remove.op_name(), "remove_nat");
        for bad in [
            r#"{"op":"ensure_nat","vm_id":"0123456789ab","ip":"fd00::2","bridge":"br-fc"}"#,
            r#"{"op":"ensure_nat","vm_id":"0123456789ab","ip":"172.30.0.2/24","bridge":"br-fc"}"#,
            r#"{"op":"ensure_nat","vm_id":"0123456789ab","ip":"172.30.0.2"}"#,
            r#"{"op":"ensure_nat","vm_id":"0123456789ab","ip":"172.30.0.2","bridge":"br-fc","comment":"x"}"#,
            r#"{"op":"remove_nat","vm_id":"0123456789ab","table":"filter"}"#,
            r#"{"op":"remove_nat"}"#,
        ] {
            assert!(serde_json::from_str::<HelperRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolver_op_on_the_wire() {
        let r = HelperRequest::SyncResolverRouting {
            bridge: "br-fc".into(),
            server: "172.30.0.1:42069".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"sync_resolver_routing","bridge":"br-fc","server":"172.30.0.1:42069"}"#
        );
        assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), r);
        assert_eq!(r.op_name(), "sync_resolver_routing");
        assert!(serde_json::from_str::<HelperRequest>(
            r#"{"op":"sync_resolver_routing","bridge":"br-fc","server":"1.2.3.4","domain":"~"}"#
        )
        .is_err());
        let skipped = HelperResponse::Skipped { reason: "x".into() };
        assert_eq!(
            serde_json::to_string(&skipped).unwrap(),
            r#"{"result":"skipped","reason":"x"}"#
        );
    }
}
