//! Input validation. The helper treats every request as if the daemon were
//! compromised: names, numbers, signals and paths are checked against a
//! closed set of shapes before anything privileged happens.
//!
//! Paths: every path a request names must be absolute, in normal form (no
//! `.`/`..`, no `//`, no trailing `/`), valid UTF-8 without control
//! characters, strictly below the directory its field belongs to, and no
//! existing component below the helper's configured root may be a symlink
//! (an `lstat` walk; components that do not exist yet are fine). The roots
//! themselves come from the helper's command line and are trusted.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use banger_api::ApiError;
use banger_paths::MAX_SOCKET_PATH;
use banger_vmm::qemu::QemuConfig;

/// A refused input. The message names the field and is safe to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        ApiError::bad_request(e.0)
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// The file name of a VMM's pidfile inside `<runtime>/vms/<vm_id>/`.
pub const PIDFILE_NAME: &str = banger_paths::VM_PIDFILE;

/// Longest kernel command line accepted.
pub const MAX_CMDLINE: usize = 2048;

/// The bridge name prefix; the bridge is `br-fc` or `br-fc-<suffix>`.
pub const BRIDGE_PREFIX: &str = "br-fc";

/// The two trees the helper will touch on the daemon's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Roots {
    /// `<state>/vms/<vm_id>`: disks and console log.
    pub fn vm_state_dir(&self, vm_id: &str) -> PathBuf {
        self.state_dir.join("vms").join(vm_id)
    }

    /// `<runtime>/vms/<vm_id>`: sockets and pidfile.
    pub fn vm_runtime_dir(&self, vm_id: &str) -> PathBuf {
        self.runtime_dir.join("vms").join(vm_id)
    }

    /// `<state>/images`: shared kernels and initrds.
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// `<state>/kernels`: the kernel store (kernels OCI images boot).
    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    /// Where a VM's kernel and initrd may come from: the images, the kernel
    /// store, or the VM's own state dir.
    pub fn boot_dirs(&self, vm_id: &str) -> [PathBuf; 3] {
        [
            self.images_dir(),
            self.kernels_dir(),
            self.vm_state_dir(vm_id),
        ]
    }

    /// The only pidfile a VMM of `vm_id` may use; computed here, never taken
    /// from a request.
    pub fn pidfile(&self, vm_id: &str) -> PathBuf {
        self.vm_runtime_dir(vm_id).join(PIDFILE_NAME)
    }
}

fn is_iface_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// `br-fc` or `br-fc-<suffix>`, at most 15 bytes of `[a-z0-9-]`.
pub fn bridge_name(name: &str) -> Result<(), Invalid> {
    let ok_shape = name == BRIDGE_PREFIX
        || name
            .strip_prefix("br-fc-")
            .is_some_and(|rest| !rest.is_empty());
    if !ok_shape {
        return invalid(format!(
            "invalid bridge name {name:?}: must be br-fc or start with br-fc-"
        ));
    }
    if name.len() > 15 || !name.bytes().all(is_iface_char) {
        return invalid(format!(
            "invalid bridge name {name:?}: at most 15 characters of [a-z0-9-]"
        ));
    }
    Ok(())
}

/// `tap-bg-<suffix>`, at most 15 bytes of `[a-z0-9-]`.
pub fn tap_name(name: &str) -> Result<(), Invalid> {
    let prefix = banger_net::TAP_PREFIX;
    if !name.starts_with(prefix) || name.len() == prefix.len() {
        return invalid(format!(
            "invalid tap name {name:?}: must start with {prefix} and name a VM"
        ));
    }
    if name.len() > 15 || !name.bytes().all(is_iface_char) {
        return invalid(format!(
            "invalid tap name {name:?}: at most 15 characters of [a-z0-9-]"
        ));
    }
    Ok(())
}

/// A warm-pool tap: `tap-bg-p` and 1 to 7 digits. VM taps are `tap-bg-`
/// plus hex, so the two never collide.
pub fn pool_tap_name(name: &str) -> Result<(), Invalid> {
    let digits = name.strip_prefix(POOL_TAP_PREFIX).unwrap_or("");
    if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return invalid(format!(
            "invalid pool tap name {name:?}: must be {POOL_TAP_PREFIX} and 1 to 7 digits"
        ));
    }
    Ok(())
}

/// Prefix of warm-pool taps.
pub const POOL_TAP_PREFIX: &str = "tap-bg-p";

/// CIDR prefix length for the bridge: 8..=32.
pub fn prefix(prefix: u8) -> Result<(), Invalid> {
    if !(8..=32).contains(&prefix) {
        return invalid(format!("invalid prefix /{prefix}: must be 8 to 32"));
    }
    Ok(())
}

/// The bridge's own address: a private (RFC 1918) or shared (RFC 6598,
/// 100.64.0.0/10) unicast IPv4 address that is neither the network nor the
/// broadcast address of its prefix. A public address on the bridge would
/// shadow real routes on the host.
pub fn bridge_address(ip: Ipv4Addr, len: u8) -> Result<(), Invalid> {
    prefix(len)?;
    let o = ip.octets();
    let shared = o[0] == 100 && (o[1] & 0xc0) == 64;
    if !(ip.is_private() || shared) {
        return invalid(format!(
            "invalid bridge address {ip}: must be private (10/8, 172.16/12, 192.168/16) or 100.64/10"
        ));
    }
    if len <= 30 {
        let mask = u32::MAX << (32 - u32::from(len));
        let host = u32::from(ip) & !mask;
        if host == 0 || host == !mask {
            return invalid(format!(
                "invalid bridge address {ip}/{len}: network or broadcast address"
            ));
        }
    }
    Ok(())
}

/// Exactly 12 lowercase hex characters.
pub fn vm_id(id: &str) -> Result<(), Invalid> {
    if id.len() != 12
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return invalid(format!(
            "invalid vm id {id:?}: must be 12 lowercase hex characters"
        ));
    }
    Ok(())
}

/// `52:54:00:xx:xx:xx`, lowercase hex.
pub fn mac(mac: &str) -> Result<(), Invalid> {
    let bad = || {
        invalid(format!(
            "invalid mac {mac:?}: must be 52:54:00:xx:xx:xx (lowercase hex)"
        ))
    };
    let Some(rest) = mac.strip_prefix("52:54:00:") else {
        return bad();
    };
    let b = rest.as_bytes();
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return bad();
    }
    if ![0, 1, 3, 4, 6, 7].iter().all(|&i| hex(b[i])) {
        return bad();
    }
    Ok(())
}

/// Printable ASCII only (no control characters, no newlines), at most
/// [`MAX_CMDLINE`] bytes.
pub fn cmdline(s: &str) -> Result<(), Invalid> {
    if s.len() > MAX_CMDLINE {
        return invalid(format!(
            "kernel command line is {} bytes, over the {MAX_CMDLINE}-byte limit",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return invalid(format!(
            "kernel command line contains {c:?}: only printable ASCII is allowed"
        ));
    }
    Ok(())
}

/// The signals the helper will send, by name.
const SIGNALS: [(&str, i32); 8] = [
    ("TERM", libc::SIGTERM),
    ("KILL", libc::SIGKILL),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("ABRT", libc::SIGABRT),
];

/// Parses an allowlisted signal name (case-insensitive, optional `SIG`
/// prefix) into its number. Numbers and every other signal are refused.
pub fn signal(name: &str) -> Result<i32, Invalid> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            Invalid(format!(
                "signal {name:?} is not allowed: use one of TERM, KILL, INT, HUP, QUIT, USR1, USR2, ABRT"
            ))
        })
}

/// A pid the helper may consider signalling: above 1 and a valid `pid_t`.
pub fn pid(pid: u32) -> Result<i32, Invalid> {
    if pid <= 1 {
        return invalid(format!("refusing to signal pid {pid}"));
    }
    i32::try_from(pid).map_err(|_| Invalid(format!("invalid pid {pid}")))
}

/// What is at a validated path right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Missing,
    File,
    Dir,
    Other,
}

/// Validates a managed path: see the module docs. `root` is the configured
/// root the path must live in (walked from there), `bases` the directories
/// (at or below `root`) it must be strictly below. Returns what the leaf is.
pub fn managed_path(
    field: &str,
    path: &Path,
    root: &Path,
    bases: &[PathBuf],
) -> Result<Leaf, Invalid> {
    let Some(s) = path.to_str() else {
        return invalid(format!("{field}: path is not valid UTF-8"));
    };
    if s.chars().any(|c| c.is_control()) {
        return invalid(format!("{field}: path {s:?} contains control characters"));
    }
    if !path.is_absolute() {
        return invalid(format!("{field}: path {s:?} is not absolute"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return invalid(format!("{field}: path {s:?} contains '..' or '.'"));
    }
    let normal: PathBuf = path.components().collect();
    if normal.as_os_str() != path.as_os_str() {
        return invalid(format!("{field}: path {s:?} is not in normal form"));
    }
    if !bases
        .iter()
        .any(|b| path.starts_with(b) && path != b.as_path())
    {
        let list: Vec<String> = bases.iter().map(|b| format!("{}/", b.display())).collect();
        return invalid(format!(
            "{field}: path {s:?} is outside {}",
            list.join(" and ")
        ));
    }
    let rel = path
        .strip_prefix(root)
        .map_err(|_| Invalid(format!("{field}: path {s:?} is outside {}", root.display())))?;
    let mut cur = root.to_path_buf();
    let n = rel.components().count();
    for (i, comp) in rel.components().enumerate() {
        cur.push(comp);
        let is_leaf = i + 1 == n;
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return invalid(format!(
                    "{field}: {} is a symlink; managed paths may not contain symlinks",
                    cur.display()
                ));
            }
            Ok(md) if !is_leaf && !md.is_dir() => {
                return invalid(format!("{field}: {} is not a directory", cur.display()));
            }
            Ok(md) if is_leaf => {
                return Ok(if md.is_file() {
                    Leaf::File
                } else if md.is_dir() {
                    Leaf::Dir
                } else {
                    Leaf::Other
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Leaf::Missing),
            Err(e) => {
                return invalid(format!("{field}: cannot inspect {}: {e}", cur.display()));
            }
        }
    }
    Ok(Leaf::Missing)
}

/// A managed path whose leaf, when present, must be a regular file.
fn managed_file(field: &str, path: &Path, root: &Path, bases: &[PathBuf]) -> Result<(), Invalid> {
    match managed_path(field, path, root, bases)? {
        Leaf::Missing | Leaf::File => Ok(()),
        _ => invalid(format!("{field}: {} is not a regular file", path.display())),
    }
}

/// A socket path: managed, not a directory, and short enough to bind.
fn managed_socket(field: &str, path: &Path, root: &Path, bases: &[PathBuf]) -> Result<(), Invalid> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return invalid(format!(
            "{field}: socket path {} is over the {MAX_SOCKET_PATH}-byte limit",
            path.display()
        ));
    }
    match managed_path(field, path, root, bases)? {
        Leaf::Dir => invalid(format!("{field}: {} is a directory", path.display())),
        _ => Ok(()),
    }
}

/// Validates a whole launch description against the helper's roots.
pub fn qemu_config(cfg: &QemuConfig, roots: &Roots) -> Result<(), Invalid> {
    vm_id(&cfg.vm_id)?;
    if !(1..=64).contains(&cfg.vcpus) {
        return invalid(format!("vcpus {}: must be 1 to 64", cfg.vcpus));
    }
    if !(128..=262_144).contains(&cfg.memory_mib) {
        return invalid(format!(
            "memory {} MiB: must be 128 to 262144",
            cfg.memory_mib
        ));
    }
    mac(&cfg.mac)?;
    tap_name(&cfg.tap)?;
    let want_tap = banger_net::tap_name_for(&cfg.vm_id);
    if cfg.tap != want_tap {
        return invalid(format!(
            "tap {:?} does not belong to vm {}: expected {want_tap}",
            cfg.tap, cfg.vm_id
        ));
    }
    cmdline(&cfg.cmdline)?;

    let state = roots.state_dir.as_path();
    let runtime = roots.runtime_dir.as_path();
    let vm_state = [roots.vm_state_dir(&cfg.vm_id)];
    let vm_runtime = [roots.vm_runtime_dir(&cfg.vm_id)];
    let boot = roots.boot_dirs(&cfg.vm_id);

    managed_file("kernel", &cfg.kernel, state, &boot)?;
    if let Some(initrd) = &cfg.initrd {
        managed_file("initrd", initrd, state, &boot)?;
    }
    managed_file("root_disk", &cfg.root_disk, state, &vm_state)?;
    managed_file("work_disk", &cfg.work_disk, state, &vm_state)?;
    managed_file("console_log", &cfg.console_log, state, &vm_state)?;
    if let Some(log) = &cfg.vmm_log {
        managed_file("vmm_log", log, state, &vm_state)?;
        if *log == cfg.console_log {
            return invalid("console_log and vmm_log must differ");
        }
    }
    managed_socket("agent_socket", &cfg.agent_socket, runtime, &vm_runtime)?;
    managed_socket("qmp_socket", &cfg.qmp_socket, runtime, &vm_runtime)?;
    if cfg.agent_socket == cfg.qmp_socket {
        return invalid("agent_socket and qmp_socket must differ");
    }
    let pidfile = roots.pidfile(&cfg.vm_id);
    if cfg.pidfile != pidfile {
        return invalid(format!(
            "pidfile must be {} for vm {}",
            pidfile.display(),
            cfg.vm_id
        ));
    }
    managed_file("pidfile", &cfg.pidfile, runtime, &vm_runtime)?;
    Ok(())
}

/// A path `ChownToOwner` may hand over: something inside a per-VM
/// directory, `<state>/vms/<vm_id>/...` or `<runtime>/vms/<vm_id>/...`.
/// Returns the configured root it lives under.
pub fn chown_target<'r>(path: &Path, roots: &'r Roots) -> Result<&'r Path, Invalid> {
    for root in [&roots.state_dir, &roots.runtime_dir] {
        let vms = root.join("vms");
        let Ok(rel) = path.strip_prefix(&vms) else {
            continue;
        };
        let id = match rel.components().next() {
            Some(Component::Normal(id)) => id.to_str().unwrap_or(""),
            _ => "",
        };
        vm_id(id).map_err(|e| {
            Invalid(format!(
                "path: {} is not inside a VM directory ({e})",
                path.display()
            ))
        })?;
        let base = vms.join(id);
        match managed_path("path", path, root, &[base])? {
            Leaf::File | Leaf::Other => return Ok(root.as_path()),
            Leaf::Missing => {
                return invalid(format!("path: {} does not exist", path.display()));
            }
            Leaf::Dir => {
                return invalid(format!("path: {} is a directory", path.display()));
            }
        }
    }
    invalid(format!(
        "path: {} is outside {}/vms/ and {}/vms/",
        path.display(),
        roots.state_dir.display(),
        roots.runtime_dir.display()
    ))
}

/// A guest address to NAT ([`crate::proto::HelperRequest::EnsureNat`]):
/// from the same ranges the bridge's own address must come from
/// ([`bridge_address`]: RFC 1918 private, or RFC 6598 shared
/// 100.64.0.0/10), which also rules out unspecified, broadcast, multicast,
/// loopback and link-local addresses. The helper is not told the VM subnet,
/// so this is the tightest check it can make: a public address would turn
/// the rule into masquerading someone else's traffic.
pub fn nat_guest(ip: Ipv4Addr) -> Result<(), Invalid> {
    let o = ip.octets();
    let shared = o[0] == 100 && (o[1] & 0xc0) == 64;
    let special = ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_loopback()
        || ip.is_link_local();
    if special || !(ip.is_private() || shared) {
        return invalid(format!(
            "invalid guest address {ip} for NAT: must be private (10/8, 172.16/12, 192.168/16) or 100.64/10"
        ));
    }
    Ok(())
}

/// A DNS server for [`crate::proto::HelperRequest::SyncResolverRouting`]:
/// `A.B.C.D` or `A.B.C.D:PORT`, IPv4 only, port 1..=65535, nothing else
/// (it ends up as an argument of `resolvectl`, which also accepts
/// interface and SNI suffixes this refuses).
pub fn resolver_addr(s: &str) -> Result<(), Invalid> {
    let bad = || {
        invalid(format!(
            "invalid resolver address {s:?}: expected A.B.C.D or A.B.C.D:PORT"
        ))
    };
    if s.is_empty()
        || s.len() > 21
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b':')
    {
        return bad();
    }
    let (ip, port) = match s.split_once(':') {
        Some((ip, port)) => (ip, Some(port)),
        None => (s, None),
    };
    if ip.parse::<Ipv4Addr>().is_err() {
        return bad();
    }
    if let Some(port) = port {
        // Digits only (checked above, so no sign), no leading zero.
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('0') => {}
            _ => return bad(),
        }
    }
    Ok(())
}

pub mod dm;

#[cfg(test)]
mod tests;
