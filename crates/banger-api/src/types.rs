use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Lifecycle states a VM row can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Being created: disks, network and VMM are being set up.
    Creating,
    /// The VMM runs and the agent answers.
    Running,
    /// Disks kept, no VMM.
    Stopped,
    /// A step failed; `error` says which.
    Error,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        Some(match s {
            "creating" => VmState::Creating,
            "running" => VmState::Running,
            "stopped" => VmState::Stopped,
            "error" => VmState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shape of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Size of the work disk mounted at /root.
    pub work_disk_mib: u64,
}

impl VmSpec {
    pub const DEFAULT: VmSpec = VmSpec {
        vcpus: 2,
        memory_mib: 1024,
        work_disk_mib: 8192,
    };
    pub const MAX_VCPUS: u32 = 64;
    pub const MIN_MEMORY_MIB: u32 = 128;

    /// Checks the shape's bounds; the message names the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > Self::MAX_VCPUS {
            return Err(format!(
                "--vcpu must be between 1 and {}, got {}",
                Self::MAX_VCPUS,
                self.vcpus
            ));
        }
        if self.memory_mib < Self::MIN_MEMORY_MIB {
            return Err(format!(
                "--memory must be at least {} MiB, got {} MiB",
                Self::MIN_MEMORY_MIB,
                self.memory_mib
            ));
        }
        if self.work_disk_mib < 64 {
            return Err(format!(
                "--disk must be at least 64 MiB, got {} MiB",
                self.work_disk_mib
            ));
        }
        Ok(())
    }
}

/// Everything `vm show` and `vm list` print.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub image: String,
    pub spec: VmSpec,
    pub ip: String,
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// "qemu" or "firecracker".
    pub vmm: String,
    /// How the root disk is copied-on-write over the image: "qcow2",
    /// "dm-snapshot", "reflink" or "sparse-copy".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cow: Option<String>,
    /// Why this VMM was picked (for `vmm = "auto"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_reason: Option<String>,
    /// "kvm" or "tcg" while running (what the VMM actually uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// Why this accelerator was picked, e.g. "/dev/kvm refuses standard guests".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel_reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// Outbound NAT for the guest (`--nat`).
    #[serde(default)]
    pub nat: bool,
    /// The warm snapshot this VM was restored from at create (its disks
    /// are copy-on-write clones of the snapshot's); absent after a cold boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_snapshot: Option<String>,
    /// The prepared workspace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::WorkspaceInfo>,
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateVmRequest {
    /// Empty or absent: the daemon generates a name.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub work_disk_mib: Option<u64>,
    /// Which VMM to use; absent: the daemon's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmChoice>,
    /// Masquerade the guest's traffic out of the host's uplink.
    #[serde(default)]
    pub nat: bool,
    /// Boot from scratch even when a warm snapshot of the image matches.
    #[serde(default)]
    pub cold: bool,
}

/// A warm snapshot: a booted guest of one image and shape, saved once its
/// agent answered, that new VMs are restored from (`banger image warm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSnapshotInfo {
    /// Short id: the first 16 hex digits of the hash of everything below
    /// that must match for a restore.
    pub id: String,
    pub image: String,
    pub vmm: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub work_disk_mib: u64,
    /// `qemu-system-x86_64 --version` (or the Firecracker version).
    pub vmm_version: String,
    /// Hash of the guest agent binary the snapshot was made with.
    pub agent: String,
    /// False once the image, kernel, agent or VMM changed: the next run of
    /// that image and shape boots cold and builds a new snapshot.
    pub current: bool,
    /// VMs whose disks are copy-on-write clones of this snapshot's disks;
    /// it cannot be removed while there are any.
    pub used_by: Vec<String>,
    pub bytes: u64,
    pub created_at: i64,
    /// How long the snapshot took to build (one cold boot plus the save).
    pub build_ms: u64,
}

/// `POST /v1/images/{name}/warm`: build the warm snapshot of one shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmImageRequest {
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub work_disk_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmChoice>,
    /// Rebuild even when a current snapshot exists.
    #[serde(default)]
    pub force: bool,
}

/// Which VMM a VM runs under. `Auto` picks Firecracker when it is installed
/// at a supported version and KVM really works, QEMU otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmChoice {
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

impl VmmChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            VmmChoice::Auto => "auto",
            VmmChoice::Firecracker => "firecracker",
            VmmChoice::Qemu => "qemu",
        }
    }
}

impl std::str::FromStr for VmmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(VmmChoice::Auto),
            "firecracker" => Ok(VmmChoice::Firecracker),
            "qemu" => Ok(VmmChoice::Qemu),
            other => Err(format!(
                "unknown vmm {other:?}: expected auto, firecracker or qemu"
            )),
        }
    }
}

/// One finished stage of an operation, with how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageInfo {
    pub name: String,
    pub elapsed_ms: u64,
}

/// An asynchronous operation (vm create, image build) as the daemon tracks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationInfo {
    pub id: String,
    /// "vm.create", "image.build".
    pub kind: String,
    /// What it acts on: a VM or image name.
    pub target: String,
    /// The stage now running (or the last one, once done).
    pub stage: String,
    /// Stages already finished, in order.
    pub stages: Vec<StageInfo>,
    /// Last progress line of the running stage (e.g. an image build step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One-line notes worth showing once, in order (e.g. why a VM booted
    /// cold instead of from a warm snapshot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmInfo>,
    pub started_at: i64,
    pub elapsed_ms: u64,
}

/// `POST /v1/vms/{name}/exec`. The answer is a stream of [`ExecEvent`] lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// One line of an exec stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    /// Base64 of bytes the command wrote to stdout.
    Stdout { data: String },
    /// Base64 of bytes the command wrote to stderr.
    Stderr { data: String },
    /// The command ended; `code` is its exit status (128+N for signal N).
    Exit { code: i32 },
    /// The exec could not run or the channel broke.
    Error { error: ApiError },
}

impl ExecEvent {
    pub fn stdout(bytes: &[u8]) -> Self {
        ExecEvent::Stdout {
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    pub fn stderr(bytes: &[u8]) -> Self {
        ExecEvent::Stderr {
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Decodes the payload of a stdout/stderr event.
    pub fn decode(data: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("bad base64 in exec stream: {e}"))
    }
}

/// `POST /v1/vms/{name}/kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    /// Signal name, e.g. "KILL" or "TERM".
    pub signal: String,
}

/// `GET /v1/vms/{name}/ports`: the sockets listening in a running guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPorts {
    pub vm: String,
    /// Sorted by (proto, port, addr).
    pub ports: Vec<PortInfo>,
}

/// One listening socket in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// "tcp", "tcp6", "udp" or "udp6".
    pub proto: String,
    /// Local address as text: "0.0.0.0", "::", "127.0.0.1", ...
    pub addr: String,
    pub port: u16,
    /// The owning process's name (comm), when the agent found it.
    pub process: Option<String>,
    pub pid: Option<u32>,
    /// `<vm>.vm:<port>`, reachable through the daemon's DNS server; none for
    /// a listener bound to loopback only.
    pub endpoint: Option<String>,
}

/// `POST /v1/vms/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResult {
    pub deleted: Vec<String>,
}

/// A golden image in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub name: String,
    /// Directory holding rootfs.ext4, the kernel, initrd and manifest.
    pub dir: String,
    pub kernel: String,
    pub initrd: Option<String>,
    pub rootfs_bytes: u64,
    /// e.g. "debian:bookworm".
    pub source: String,
    /// Hash of the build inputs (package list, agent); a change rebuilds.
    pub build_hash: String,
    pub created_at: i64,
    /// The kernel-store kernel the image boots (OCI and catalog images).
    #[serde(default)]
    pub kernel_name: Option<String>,
    /// The guest's init when it is not the image's own (`init=` on the
    /// kernel command line): the agent, for images without systemd.
    #[serde(default)]
    pub init: Option<String>,
    /// Registered in place: the files are the user's, outside banger's store.
    #[serde(default)]
    pub registered: bool,
    /// VMs whose disks are backed by this image.
    #[serde(default)]
    pub in_use_by: Vec<String>,
}

/// `POST /v1/images/pull`: from an OCI registry (a reference with '/', ':'
/// or '@') or, for a bare name, from the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullImageRequest {
    pub reference: String,
    /// Image name; derived from the reference when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Kernel-store kernel for an OCI image; the configured default if absent.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Plain http to this registry (a local test registry).
    #[serde(default)]
    pub insecure_registry: bool,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `POST /v1/images/import`: an OCI layout directory or a `docker save`
/// archive on the daemon's host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportImageRequest {
    /// Absolute path.
    pub path: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Tag inside an OCI layout (default `latest`).
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
}

/// `POST /v1/images/register`: an image whose files stay where they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterImageRequest {
    pub name: String,
    /// Absolute path of an ext4 root filesystem.
    pub rootfs: String,
    /// Absolute path of a kernel file; or use `kernel_name`.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    /// A kernel from the kernel store.
    #[serde(default)]
    pub kernel_name: Option<String>,
    /// Directory whose files seed each VM's /root.
    #[serde(default)]
    pub work_seed: Option<String>,
}

/// `POST /v1/images/cache/prune`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePruneRequest {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePruneResult {
    /// Bytes freed (or that would be, with `dry_run`).
    pub bytes: u64,
    pub blobs: u64,
    pub dry_run: bool,
    pub cache_dir: String,
}

/// A kernel in the kernel store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub name: String,
    pub version: String,
    /// `catalog:<url>` or `import:<path>`.
    pub source: String,
    pub sha256: String,
    pub bytes: u64,
    pub created_at: i64,
    pub dir: String,
    pub vmlinuz: String,
    #[serde(default)]
    pub initrd: Option<String>,
    /// VMs booted with it (through their images).
    #[serde(default)]
    pub in_use_by: Vec<String>,
}

/// One kernel the catalog offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogKernel {
    pub name: String,
    pub version: String,
    pub size: u64,
    pub description: String,
    pub installed: bool,
}

/// `POST /v1/kernels/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullKernelRequest {
    pub name: String,
}

/// `POST /v1/kernels/import`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportKernelRequest {
    pub name: String,
    /// Absolute path of a bzImage or ELF vmlinux.
    pub vmlinuz: String,
    #[serde(default)]
    pub initrd: Option<String>,
    /// Replace a kernel of that name.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/images/build`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildImageRequest {
    #[serde(default)]
    pub name: Option<String>,
    /// Rebuild even when an image of that name exists.
    #[serde(default)]
    pub force: bool,
}

/// Result of one doctor check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub checks: Vec<DoctorCheck>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub state_dir: String,
    pub socket: String,
    pub helper_socket: String,
    pub vms_running: usize,
    /// Where the `.vm` DNS server listens; None when off or it could not
    /// bind (`banger doctor` says why). Absent from older daemons.
    #[serde(default)]
    pub dns: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation_names_the_flag() {
        let mut s = VmSpec::DEFAULT;
        assert!(s.validate().is_ok());
        s.vcpus = 0;
        assert!(s.validate().unwrap_err().contains("--vcpu"));
        s.vcpus = 2;
        s.memory_mib = 64;
        assert!(s.validate().unwrap_err().contains("--memory"));
    }

    #[test]
    fn exec_events_are_tagged_lines() {
        let ev = ExecEvent::stdout(b"hi\n");
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(line, r#"{"type":"stdout","data":"aGkK"}"#);
        match serde_json::from_str::<ExecEvent>(&line).unwrap() {
            ExecEvent::Stdout { data } => assert_eq!(ExecEvent::decode(&data).unwrap(), b"hi\n"),
            other => panic!("unexpected {other:?}"),
        }
        let exit: ExecEvent = serde_json::from_str(r#"{"type":"exit","code":42}"#).unwrap();
        assert_eq!(exit, ExecEvent::Exit { code: 42 });
    }

    #[test]
    fn vm_ports_serialise_with_every_field() {
        let p = VmPorts {
            vm: "box".into(),
            ports: vec![PortInfo {
                proto: "tcp".into(),
                addr: "0.0.0.0".into(),
                port: 22,
                process: Some("sshd".into()),
                pid: Some(310),
                endpoint: Some("box.vm:22".into()),
            }],
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"vm":"box","ports":[{"proto":"tcp","addr":"0.0.0.0","port":22,"process":"sshd","pid":310,"endpoint":"box.vm:22"}]}"#
        );
        assert_eq!(serde_json::from_str::<VmPorts>(&json).unwrap(), p);
    }

    #[test]
    fn state_strings_round_trip() {
        for s in [
            VmState::Creating,
            VmState::Running,
            VmState::Stopped,
            VmState::Error,
        ] {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VmState::parse("bogus"), None);
    }
}
