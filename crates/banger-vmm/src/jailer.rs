//! Firecracker on the host: where a VM's jailer chroot lives, what things
//! are called inside it, and the argv of both launch modes.
//!
//! - **Jailer mode** (root helper, system installs): `jailer` builds the
//!   chroot `<state>/jailer/firecracker/<vm_id>/root`, drops to the owner
//!   and execs Firecracker inside it. The chroot base sits in the state dir
//!   on purpose: it must be on the same filesystem as the images and VM
//!   disks, so the kernel and drives can be hard-linked in rather than
//!   copied.
//! - **Direct mode**: Firecracker runs as the owner on the host, its API
//!   socket in the VM's runtime dir.
//!
//! Either way the daemon talks to `<runtime>/vms/<id>/fc.sock` and
//! `<runtime>/vms/<id>/vsock.sock`; in jailer mode those are symlinks into
//! the chroot, because a chroot path easily exceeds the 108 bytes of
//! `sun_path` and the kernel only counts the path it is given.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name the Firecracker binary must have: comm checks look for it, and
/// jailer names the chroot (`<base>/<exec-file-name>/<id>`) and its
/// pidfile (`<exec-file-name>.pid`) after it.
pub const FIRECRACKER_NAME: &str = "firecracker";
/// Default host paths of the two binaries.
pub const DEFAULT_FIRECRACKER_BIN: &str = "/usr/bin/firecracker";
pub const DEFAULT_JAILER_BIN: &str = "/usr/bin/jailer";

/// The chroot base's directory name inside the state dir.
pub const JAILER_DIR: &str = "jailer";

/// Paths as the jailed Firecracker sees them (relative to its chroot).
pub const IN_JAIL_KERNEL: &str = "/vmlinux";
pub const IN_JAIL_INITRD: &str = "/initrd.img";
pub const IN_JAIL_API_SOCKET: &str = "/run/firecracker.socket";
pub const IN_JAIL_VSOCK: &str = "/v.sock";
pub const IN_JAIL_LOG: &str = "/firecracker.log";
/// The guest's serial console (`PUT /serial`), created with the log.
pub const IN_JAIL_CONSOLE: &str = "/console.log";
/// Written by jailer: the pid it exec'd Firecracker as.
pub const IN_JAIL_PIDFILE: &str = "/firecracker.pid";

/// In `<runtime>/vms/<id>/`: the API socket (a symlink in jailer mode).
pub const API_SOCKET_NAME: &str = "fc.sock";
/// In `<runtime>/vms/<id>/`: the hybrid vsock socket (a symlink in jailer mode).
pub const VSOCK_SOCKET_NAME: &str = "vsock.sock";
/// In `<runtime>/vms/<id>/`: the helper's record of a direct-mode pid.
pub const DIRECT_PIDFILE_NAME: &str = "firecracker.pid";
/// In `<state>/vms/<id>/`: the direct-mode Firecracker log.
pub const DIRECT_LOG_NAME: &str = "firecracker.log";
/// In `<state>/vms/<id>/`: the direct-mode guest console (the same name
/// QEMU's console log has).
pub const DIRECT_CONSOLE_NAME: &str = "console.log";

/// Where jailer builds chroots for one state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerLayout {
    base: PathBuf,
}

impl JailerLayout {
    /// The layout under `<state_dir>/jailer`.
    pub fn new(state_dir: &Path) -> JailerLayout {
        JailerLayout {
            base: state_dir.join(JAILER_DIR),
        }
    }

    /// `--chroot-base-dir`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `<base>/firecracker`: jailer's per-binary directory.
    pub fn exec_dir(&self) -> PathBuf {
        self.base.join(FIRECRACKER_NAME)
    }

    /// `<base>/firecracker/<vm_id>`: everything of one VM; cleanup removes it.
    pub fn vm_dir(&self, vm_id: &str) -> PathBuf {
        self.exec_dir().join(vm_id)
    }

    /// `<base>/firecracker/<vm_id>/root`: the chroot.
    pub fn chroot(&self, vm_id: &str) -> PathBuf {
        self.vm_dir(vm_id).join("root")
    }

    /// The host path of an in-jail path such as [`IN_JAIL_KERNEL`].
    pub fn host_path(&self, vm_id: &str, in_jail: &str) -> PathBuf {
        self.chroot(vm_id).join(in_jail.trim_start_matches('/'))
    }

    pub fn pidfile(&self, vm_id: &str) -> PathBuf {
        self.host_path(vm_id, IN_JAIL_PIDFILE)
    }

    pub fn api_socket(&self, vm_id: &str) -> PathBuf {
        self.host_path(vm_id, IN_JAIL_API_SOCKET)
    }

    pub fn vsock(&self, vm_id: &str) -> PathBuf {
        self.host_path(vm_id, IN_JAIL_VSOCK)
    }

    pub fn log(&self, vm_id: &str) -> PathBuf {
        self.host_path(vm_id, IN_JAIL_LOG)
    }
}

/// A drive's path as the jailed Firecracker sees it: `/<id>`.
pub fn drive_in_jail(id: &str) -> PathBuf {
    Path::new("/").join(id)
}

/// One block device for the VM, as the daemon asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveSpec {
    /// Firecracker's drive id, also the drive's file name in the chroot
    /// (`rootfs`, `work`).
    pub id: String,
    /// A regular file in the VM's state dir or a
    /// `/dev/mapper/fc-rootfs-*` device.
    pub path: PathBuf,
}

/// What the daemon asks the helper to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    pub vm_id: String,
    /// Through jailer (chroot, owner uid) or directly as the owner.
    pub jailer: bool,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub drives: Vec<DriveSpec>,
    /// Start Firecracker with `--log-path` (the file is created first).
    pub log: bool,
}

/// Paths as Firecracker itself sees them: what the daemon puts in the API
/// calls that configure the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPaths {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub drives: Vec<DriveSpec>,
    /// `uds_path` of the hybrid vsock device.
    pub vsock_uds: PathBuf,
    pub log: Option<PathBuf>,
    /// The guest console file (`PUT /serial`), created with the log.
    #[serde(default)]
    pub console: Option<PathBuf>,
}

/// A started Firecracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    pub pid: u32,
    /// Short host path of the API socket (`<runtime>/vms/<id>/fc.sock`).
    pub api_socket: PathBuf,
    /// Short host path of the vsock socket (`<runtime>/vms/<id>/vsock.sock`);
    /// Firecracker creates it once the vsock device is configured.
    pub vsock_socket: PathBuf,
    /// Where the daemon reads the Firecracker log, when one was asked for.
    pub log_file: Option<PathBuf>,
    pub vmm: VmmPaths,
}

impl VmmPaths {
    /// The in-chroot names of jailer mode.
    pub fn jailed(spec: &LaunchSpec) -> VmmPaths {
        VmmPaths {
            kernel: IN_JAIL_KERNEL.into(),
            initrd: spec.initrd.as_ref().map(|_| IN_JAIL_INITRD.into()),
            drives: spec
                .drives
                .iter()
                .map(|d| DriveSpec {
                    id: d.id.clone(),
                    path: drive_in_jail(&d.id),
                })
                .collect(),
            vsock_uds: IN_JAIL_VSOCK.into(),
            log: spec.log.then(|| IN_JAIL_LOG.into()),
            console: spec.log.then(|| IN_JAIL_CONSOLE.into()),
        }
    }

    /// Host paths, as they are, for direct mode.
    pub fn direct(spec: &LaunchSpec, vm_runtime_dir: &Path, vm_state_dir: &Path) -> VmmPaths {
        VmmPaths {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            drives: spec.drives.clone(),
            vsock_uds: vm_runtime_dir.join(VSOCK_SOCKET_NAME),
            log: spec.log.then(|| vm_state_dir.join(DIRECT_LOG_NAME)),
            console: spec.log.then(|| vm_state_dir.join(DIRECT_CONSOLE_NAME)),
        }
    }
}

/// What [`jailer_argv`] needs.
#[derive(Debug, Clone)]
pub struct JailerArgs<'a> {
    pub vm_id: &'a str,
    /// Host path of the Firecracker binary; jailer copies it into the
    /// chroot itself.
    pub exec_file: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: &'a Path,
    pub log: bool,
}

/// The jailer's argv after the binary name.
///
/// No `--new-pid-ns`: its extra fork makes the parent exit as if
/// Firecracker had, and the API socket was torn down too early. With
/// `--daemonize` jailer calls `setsid()` and points stdio at /dev/null
/// itself. Everything after `--` goes to Firecracker; jailer adds `--id`.
pub fn jailer_argv(a: &JailerArgs) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--id".into(),
        a.vm_id.into(),
        "--exec-file".into(),
        a.exec_file.into(),
        "--uid".into(),
        a.uid.to_string().into(),
        "--gid".into(),
        a.gid.to_string().into(),
        "--chroot-base-dir".into(),
        a.chroot_base.into(),
        "--daemonize".into(),
        "--".into(),
        "--api-sock".into(),
        IN_JAIL_API_SOCKET.into(),
    ];
    if a.log {
        v.push("--log-path".into());
        v.push(IN_JAIL_LOG.into());
    }
    v
}

/// Firecracker's argv after the binary name in direct mode.
pub fn direct_argv(vm_id: &str, api_sock: &Path, log: Option<&Path>) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--id".into(),
        vm_id.into(),
        "--api-sock".into(),
        api_sock.into(),
    ];
    if let Some(log) = log {
        v.push("--log-path".into());
        v.push(log.into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "0123456789ab";

    fn strs(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn layout_follows_jailers_own() {
        let l = JailerLayout::new(Path::new("/s"));
        assert_eq!(l.base(), Path::new("/s/jailer"));
        assert_eq!(
            l.chroot(VM),
            PathBuf::from("/s/jailer/firecracker/0123456789ab/root")
        );
        let root = "/s/jailer/firecracker/0123456789ab/root";
        assert_eq!(
            l.pidfile(VM),
            PathBuf::from(format!("{root}/firecracker.pid"))
        );
        assert_eq!(
            l.api_socket(VM),
            PathBuf::from(format!("{root}/run/firecracker.socket"))
        );
        assert_eq!(l.vsock(VM), PathBuf::from(format!("{root}/v.sock")));
        assert_eq!(l.log(VM), PathBuf::from(format!("{root}/firecracker.log")));
        assert_eq!(
            l.host_path(VM, IN_JAIL_KERNEL),
            PathBuf::from(format!("{root}/vmlinux"))
        );
        assert_eq!(drive_in_jail("rootfs"), PathBuf::from("/rootfs"));
    }

    #[test]
    fn jailer_argv_is_pinned() {
        let a = JailerArgs {
            vm_id: VM,
            exec_file: Path::new("/usr/bin/firecracker"),
            uid: 1000,
            gid: 1001,
            chroot_base: Path::new("/s/jailer"),
            log: true,
        };
        assert_eq!(
            strs(jailer_argv(&a)),
            [
                "--id",
                VM,
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "1000",
                "--gid",
                "1001",
                "--chroot-base-dir",
                "/s/jailer",
                "--daemonize",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
                "--log-path",
                "/firecracker.log",
            ]
        );
        let quiet = strs(jailer_argv(&JailerArgs { log: false, ..a }));
        assert_eq!(quiet.last().unwrap(), "/run/firecracker.socket");
        assert!(!quiet.iter().any(|s| s == "--new-pid-ns"));
    }

    #[test]
    fn direct_argv_is_pinned() {
        let sock = Path::new("/r/vms/0123456789ab/fc.sock");
        assert_eq!(
            strs(direct_argv(VM, sock, None)),
            ["--id", VM, "--api-sock", "/r/vms/0123456789ab/fc.sock"]
        );
        let log = Path::new("/s/vms/0123456789ab/firecracker.log");
        assert_eq!(
            strs(direct_argv(VM, sock, Some(log)))[4..],
            ["--log-path", "/s/vms/0123456789ab/firecracker.log"]
        );
    }

    #[test]
    fn vmm_paths_per_mode() {
        let spec = LaunchSpec {
            vm_id: VM.into(),
            jailer: true,
            kernel: "/s/images/d/vmlinux".into(),
            initrd: Some("/s/images/d/initrd.img".into()),
            drives: vec![DriveSpec {
                id: "rootfs".into(),
                path: "/dev/mapper/fc-rootfs-0123456789ab".into(),
            }],
            log: false,
        };
        let j = VmmPaths::jailed(&spec);
        assert_eq!(j.kernel, PathBuf::from("/vmlinux"));
        assert_eq!(j.initrd, Some(PathBuf::from("/initrd.img")));
        assert_eq!(j.drives[0].path, PathBuf::from("/rootfs"));
        assert_eq!(j.vsock_uds, PathBuf::from("/v.sock"));
        assert_eq!(j.log, None);
        let d = VmmPaths::direct(&spec, Path::new("/r/vms/x"), Path::new("/s/vms/x"));
        assert_eq!(d.kernel, spec.kernel);
        assert_eq!(d.drives, spec.drives);
        assert_eq!(d.vsock_uds, PathBuf::from("/r/vms/x/vsock.sock"));
    }
}
