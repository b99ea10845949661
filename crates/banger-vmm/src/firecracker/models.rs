//! Request and response bodies of the Firecracker API, named after the
//! definitions in Firecracker's Swagger spec (`src/firecracker/swagger/
//! firecracker.yaml`).
//!
//! Only what banger sends or reads is modelled. Every field here exists in
//! both specs banger is checked against (1.14.1, the tested version, and
//! 1.16.1), except [`SnapshotLoadParams::vsock_override`] (1.16.1 only; sent
//! only where [`super::version::Features::snapshot_vsock_override`] says
//! so); fields the spec marks as deprecated are left out on purpose, so
//! a future release that removes them cannot break us. Optional fields are
//! `Option`s skipped when `None`: Firecracker then applies its own default,
//! which is what a field we never set should mean. The spec tests in
//! `spec_tests.rs` validate every body against both specs with unknown
//! fields forbidden, mirroring Firecracker's `deny_unknown_fields`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// 1..=32; with SMT on, 1 or even.
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Needed at boot for diff snapshots later on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// How Firecracker handles the guest's flush requests on a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are acknowledged without reaching the disk (Firecracker's default).
    Unsafe,
    /// Flushes become `fsync` on the backing file.
    Writeback,
}

/// The host I/O path of a virtio-block drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    Sync,
    /// io_uring; needs a host kernel newer than 5.10.51.
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-block drive backed by a host file.
/// (`socket`, for vhost-user-block, and `partuuid`/`rate_limiter` are not
/// used by banger.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Must equal the `{drive_id}` in the path.
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
}

/// `PATCH /drives/{drive_id}` (the spec's `PartialDrive`): points an
/// existing drive at another host file. "Post-boot only" in the spec, which
/// includes a microVM loaded from a snapshot and still paused: Firecracker
/// reopens the file and tells the guest its config changed (the guest sees
/// it once it runs). `rate_limiter` is not used by banger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDrive {
    /// Must equal the `{drive_id}` in the path.
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a host tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Must equal the `{iface_id}` in the path.
    pub iface_id: String,
    pub host_dev_name: String,
    /// `aa:bb:cc:dd:ee:ff`; Firecracker picks none if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /vsock`. The spec's `vsock_id` is deprecated and deliberately absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// At least 3 (0-2 are reserved by the vsock address family).
    pub guest_cid: u32,
    /// Firecracker listens here for host-initiated connections (see
    /// [`super::vsock::connect_hybrid`]); it is a path as Firecracker sees
    /// it, so inside a jail it is relative to the jail's root.
    pub uds_path: PathBuf,
}

/// Firecracker's log levels (case-insensitive on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `PUT /logger`. `module` (a log filter) is not used by banger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// An existing file or named pipe: Firecracker opens it but does not
    /// create it, so the caller does.
    pub log_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `PUT /serial`: where the guest's serial console (ttyS0) output goes.
/// Without it a jailed Firecracker's console goes to jailer's /dev/null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDevice {
    pub serial_out_path: PathBuf,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

/// `PUT /entropy`: a virtio-rng device. Its only field, `rate_limiter`, is
/// not used, so the body is `{}` (a braced struct, which serde writes as an
/// empty object rather than `null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyDevice {}

/// The `action_type` of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boots the configured microVM.
    InstanceStart,
    /// Asks the guest to shut down cleanly (x86_64 only): the guest sees
    /// Ctrl+Alt+Del on its i8042 controller, and Firecracker exits when the
    /// guest then resets the machine.
    SendCtrlAltDel,
    /// Writes the metrics file now instead of at the next periodic flush.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

impl InstanceActionInfo {
    pub fn new(action_type: ActionType) -> InstanceActionInfo {
        InstanceActionInfo { action_type }
    }
}

/// The state `PATCH /vm` moves a running microVM to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PATCH /vm`; a microVM must be paused before `PUT /snapshot/create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only memory dirtied since the last snapshot; needs `track_dirty_pages`.
    Diff,
}

/// `PUT /snapshot/create`. `snapshot_type` is optional in the spec (Full by
/// default) but always sent, so what banger asked for is explicit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    pub snapshot_type: SnapshotType,
    /// The microVM state file.
    pub snapshot_path: PathBuf,
    /// The guest memory file.
    pub mem_file_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// `backend_path` is the memory file written by snapshot create.
    File,
    /// `backend_path` is a Unix socket where a userfaultfd page server listens.
    Uffd,
}

/// Where a snapshot's guest memory comes from on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: PathBuf,
}

/// One entry of `network_overrides` on `PUT /snapshot/load`: the snapshot
/// stores each interface's tap name, and a clone needs its own tap, so the
/// interface `iface_id` is reattached to `host_dev_name` instead. (Both specs
/// banger checks have it; see [`super::version::Features`] for older
/// releases.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface's id as configured in the snapshotted microVM.
    pub iface_id: String,
    /// The tap this Firecracker opens for it instead.
    pub host_dev_name: String,
}

/// `vsock_override` on `PUT /snapshot/load` (1.16.1's spec, absent from
/// 1.14.1's): the snapshot stores the vsock's Unix socket path, and
/// Firecracker binds it again on load, so a clone whose socket lives
/// elsewhere needs this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The socket's path as this Firecracker sees it (inside a jail,
    /// relative to the jail's root).
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`, only accepted by a fresh Firecracker process (the
/// spec: "before configuring any resource other than the Logger and
/// Metrics"). Of the spec's fields, `mem_file_path` and
/// `enable_diff_snapshots` are deprecated (replaced by `mem_backend` and
/// `track_dirty_pages`) and never sent; `clock_realtime` (1.16.1 only) is not
/// used; `vsock_override` exists only in the newer spec and is sent only to
/// releases that have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemoryBackend,
    /// Resume the guest as soon as it is loaded (otherwise it stays paused
    /// until `PATCH /vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Keep tracking dirty pages so the restored VM can take diff snapshots.
    /// Releases older than the deprecation of `enable_diff_snapshots` only
    /// know that older name; leave this `None` for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Taps to use instead of the ones stored in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// The vsock socket to bind instead of the one stored in the snapshot;
    /// only for releases with
    /// [`super::version::Features::snapshot_vsock_override`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// The answer to `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The `--id` Firecracker was started with.
    pub id: String,
    /// `Not started`, `Running` or `Paused` (kept as a string so a state a
    /// newer release adds does not make the whole answer undecodable).
    pub state: String,
    pub vmm_version: String,
    pub app_name: String,
}

impl InstanceInfo {
    /// The state before `InstanceStart`.
    pub const NOT_STARTED: &'static str = "Not started";
    pub const RUNNING: &'static str = "Running";
    pub const PAUSED: &'static str = "Paused";
}

/// The answer to `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    pub firecracker_version: String,
}

/// The body of every Firecracker error answer. `fault_message` is optional
/// in the spec, so a body without it still decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    #[serde(default)]
    pub fault_message: String,
}
