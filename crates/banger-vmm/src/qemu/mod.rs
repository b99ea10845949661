//! The QEMU backend: a typed launch description, the argv it becomes, and a
//! detached launch.
//!
//! Devices: virtio-blk root (a qcow2 overlay over the golden image) as
//! `/dev/vda`, virtio-blk work disk as `/dev/vdb`, virtio-net on a tap,
//! virtio-rng, and a virtio-serial port named `banger.agent` whose host end
//! is a Unix socket the daemon connects to. The serial console goes to a
//! file, QEMU's own messages to another (`-D`). No vhost (not every host
//! has it).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::spawn::drop_privileges;
pub use crate::spawn::owner_groups;
pub mod qmp;

/// Default QEMU binary.
pub const DEFAULT_QEMU_BIN: &str = "qemu-system-x86_64";

/// Everything needed to start one VM's QEMU. Sent by the daemon to the root
/// helper, which validates every field before building the argv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuConfig {
    pub vm_id: String,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The guest kernel command line (see [`crate::qemu::kernel_cmdline`]).
    pub cmdline: String,
    /// qcow2 overlay whose backing file is the golden image.
    pub root_disk: PathBuf,
    /// ext4 image mounted at /root in the guest: raw, or a qcow2 overlay
    /// over a warm template's work disk (see `work_format`).
    pub work_disk: PathBuf,
    #[serde(default)]
    pub work_format: DiskFormat,
    pub tap: String,
    pub mac: String,
    /// Host end of the agent's virtio-serial port (QEMU listens here).
    pub agent_socket: PathBuf,
    /// QMP control socket (QEMU listens here).
    pub qmp_socket: PathBuf,
    pub pidfile: PathBuf,
    /// The guest's serial console is appended here (the daemon copies it
    /// into the VM's capped log and frees what it copied).
    pub console_log: PathBuf,
    /// QEMU's own log (`-D`): after `-daemonize` QEMU points its stderr
    /// here instead of /dev/null, so its warnings and last words are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_log: Option<PathBuf>,
    /// Start paused and wait for a migration stream (`-incoming defer`):
    /// the daemon then loads a warm template's state over QMP
    /// (`migrate-incoming`) and resumes the guest (`cont`).
    #[serde(default)]
    pub incoming: bool,
}

/// The on-disk format of a VM disk image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    #[default]
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl QemuConfig {
    /// The argv after the binary name. `-daemonize` makes QEMU fork once it
    /// has opened every device, so startup errors reach the launcher's
    /// stderr and the running VMM is owned by nobody's request.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(OsString::from(s));
        push("-name");
        push(&format!("banger-{}", self.vm_id));
        push("-machine");
        push(match self.accel {
            Accel::Kvm => "q35,accel=kvm",
            Accel::Tcg => "q35,accel=tcg",
        });
        push("-cpu");
        push(match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        });
        push("-smp");
        push(&self.vcpus.to_string());
        push("-m");
        push(&format!("{}M", self.memory_mib));
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(s);
        }
        push("-kernel");
        push(&self.kernel.to_string_lossy());
        if let Some(initrd) = &self.initrd {
            push("-initrd");
            push(&initrd.to_string_lossy());
        }
        push("-append");
        push(&self.cmdline);
        push("-drive");
        push(&format!(
            "file={},format=qcow2,if=none,id=root,cache=writeback,discard=unmap",
            escape_opt(&self.root_disk)
        ));
        push("-device");
        push("virtio-blk-pci,drive=root");
        push("-drive");
        push(&format!(
            "file={},format={},if=none,id=work,cache=writeback,discard=unmap",
            escape_opt(&self.work_disk),
            self.work_format.as_str()
        ));
        push("-device");
        push("virtio-blk-pci,drive=work");
        push("-netdev");
        push(&format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            self.tap
        ));
        push("-device");
        push(&format!("virtio-net-pci,netdev=net0,mac={}", self.mac));
        push("-object");
        push("rng-random,id=rng0,filename=/dev/urandom");
        push("-device");
        push("virtio-rng-pci,rng=rng0");
        // A VM generation ID: on every restore of a snapshot the guest
        // kernel sees a new one and reseeds its CRNG ("crng reseeded due to
        // virtual machine fork"). Every VM has it, so that the device set of
        // a template and of the VMs restored from it is the same.
        push("-device");
        push("vmgenid,guid=auto");
        push("-device");
        push("virtio-serial-pci,id=vser0");
        push("-chardev");
        push(&format!(
            "socket,id=agent0,path={},server=on,wait=off",
            escape_opt(&self.agent_socket)
        ));
        push("-device");
        push(&format!(
            "virtserialport,bus=vser0.0,chardev=agent0,name={}",
            banger_agent_port()
        ));
        push("-chardev");
        push(&format!(
            "file,id=console0,path={},append=on",
            escape_opt(&self.console_log)
        ));
        push("-serial");
        push("chardev:console0");
        if let Some(log) = &self.vmm_log {
            push("-D");
            push(&log.to_string_lossy());
            push("-msg");
            push("timestamp=on");
        }
        push("-qmp");
        push(&format!(
            "unix:{},server=on,wait=off",
            escape_opt(&self.qmp_socket)
        ));
        push("-pidfile");
        push(&self.pidfile.to_string_lossy());
        if self.incoming {
            push("-incoming");
            push("defer");
        }
        push("-daemonize");
        a
    }
}

fn banger_agent_port() -> &'static str {
    // Kept in one place with the agent's own constant in banger-agent-proto;
    // a test in the daemon checks the two agree.
    "banger.agent"
}

/// QEMU option values are comma-separated; a literal comma is written twice.
fn escape_opt(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The guest's identity, passed on the kernel command line and applied by
/// the agent at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestIdentity {
    pub hostname: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    pub dns: Option<std::net::Ipv4Addr>,
    /// The guest's init when it is not the image's `/sbin/init` (the agent,
    /// for an image without systemd). Only a plain absolute path is put on
    /// the command line; anything else is left out (see [`safe_init`]).
    pub init: Option<String>,
}

/// True for an init path that cannot add or change kernel parameters: an
/// absolute path of letters, digits, '/', '.', '_' and '-', no `..`.
pub fn safe_init(init: &str) -> bool {
    init.starts_with('/')
        && init.len() <= 200
        && init
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        && !init.split('/').any(|c| c == "..")
}

/// Builds the guest kernel command line for a Debian image with the distro
/// kernel and initramfs. Every value is typed, so no token can smuggle a
/// space or an extra `key=value`. The kernel logs to the console at its
/// default level, so the kept console shows the boot.
pub fn kernel_cmdline(id: &GuestIdentity) -> String {
    let mut parts = base_cmdline(&id.hostname);
    parts.push(format!("banger.ip={}/{}", id.ip, id.prefix));
    parts.push(format!("banger.gw={}", id.gateway));
    if let Some(dns) = id.dns {
        parts.push(format!("banger.dns={dns}"));
    }
    if let Some(init) = id.init.as_deref().filter(|i| safe_init(i)) {
        parts.push(format!("init={init}"));
    }
    parts.join(" ")
}

/// The command line of a warm snapshot's template guest: a hostname but no
/// address. A restored guest announces the addresses it had on the bridge,
/// and by then the template's could belong to another VM; each restored VM
/// gets its own address from the agent instead.
pub fn template_cmdline(hostname: &str, init: Option<&str>) -> String {
    let mut parts = base_cmdline(hostname);
    if let Some(init) = init.filter(|i| safe_init(i)) {
        parts.push(format!("init={init}"));
    }
    parts.join(" ")
}

fn base_cmdline(hostname: &str) -> Vec<String> {
    vec![
        "console=ttyS0".to_string(),
        "root=/dev/vda".to_string(),
        "rw".to_string(),
        "rootfstype=ext4".to_string(),
        "net.ifnames=0".to_string(),
        "biosdevname=0".to_string(),
        "panic=-1".to_string(),
        // No `quiet`: the console log (`vm logs`) is where a guest that does
        // not come up says why, and quiet leaves only the login prompt in it
        // (~35 KB of boot messages; no measurable boot cost under TCG).
        "systemd.show_status=auto".to_string(),
        format!("banger.hostname={hostname}"),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot run {bin}: {source}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu exited with {status} before the VM started: {stderr}")]
    Failed { status: String, stderr: String },
    #[error("qemu did not write its pidfile {0}")]
    NoPidfile(PathBuf),
    #[error("qemu startup did not finish within {0:?}")]
    Timeout(Duration),
}

/// Starts QEMU detached and returns the VMM's pid.
///
/// The foreground QEMU exits once the daemonised child is up; its exit
/// status and stderr are the startup verdict. `uid_gid` drops the VMM to
/// the owner (the helper runs as root; QEMU needs no privilege once the
/// tap is owned by that user).
pub fn launch(
    bin: &Path,
    cfg: &QemuConfig,
    uid_gid: Option<(u32, u32)>,
    timeout: Duration,
) -> Result<u32, LaunchError> {
    let _ = std::fs::remove_file(&cfg.pidfile);
    let mut cmd = Command::new(bin);
    cmd.args(cfg.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = uid_gid {
        if uid != 0 {
            drop_privileges(&mut cmd, uid, gid);
        }
    }
    let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        bin: bin.display().to_string(),
        source,
    })?;
    let start = Instant::now();
    let out = wait_with_timeout(child, timeout)?;
    if !out.status.success() {
        return Err(LaunchError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // The pidfile is written before the parent exits; allow a moment for
    // slow filesystems anyway.
    while start.elapsed() < timeout {
        if let Some(pid) = crate::proc::read_pidfile(&cfg.pidfile) {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(LaunchError::NoPidfile(cfg.pidfile.clone()))
}

fn wait_with_timeout(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::Output, LaunchError> {
    use std::io::Read;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                // The daemonised grandchild keeps stderr open only until it
                // redirects to /dev/null, which happens before the parent exits.
                let stderr = reader.join().unwrap_or_default();
                return Ok(std::process::Output {
                    status,
                    stdout: Vec::new(),
                    stderr,
                });
            }
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Timeout(timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// Creates a qcow2 overlay at `overlay` whose backing file is the raw image
/// `base`: the VM's copy-on-write root. Nothing of `base` is copied.
pub fn create_overlay(qemu_img: &Path, base: &Path, overlay: &Path) -> Result<(), LaunchError> {
    create_overlay_of(qemu_img, base, DiskFormat::Raw, overlay)
}

/// Creates a qcow2 overlay at `overlay` over `base`, whose format is
/// `base_format` (a warm template's disks are qcow2 or raw). The overlay
/// has the size of its base.
pub fn create_overlay_of(
    qemu_img: &Path,
    base: &Path,
    base_format: DiskFormat,
    overlay: &Path,
) -> Result<(), LaunchError> {
    let out = Command::new(qemu_img)
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base_format.as_str(),
            "-b",
        ])
        .arg(base)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LaunchError::Spawn {
            bin: qemu_img.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(overlay);
        return Err(LaunchError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
