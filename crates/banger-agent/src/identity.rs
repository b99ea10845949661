//! The VM identity: hostname, MAC, address, DNS; from the kernel command
//! line at boot, or from the identity a warm start gave this guest.
//!
//! Keys: `banger.hostname=NAME`, `banger.ip=A.B.C.D/PREFIX`,
//! `banger.gw=A.B.C.D`, `banger.dns=A.B.C.D[,A.B.C.D...]`,
//! `banger.iface=IFACE` (default eth0). Every failure is logged and skipped;
//! none stops the agent.
//!
//! A guest restored from a memory snapshot (a warm start) keeps the
//! template's /proc/cmdline, so the host gives it its own identity with a
//! Reidentify request (`reidentify`), which records what it applied in
//! [`PERSISTED`] (on /run, a tmpfs: gone on the next cold boot). At startup
//! that record, when present, wins over the command line: the agent unit
//! restarts the agent whenever it exits, and a restarted agent must not put
//! the template's address and name back.

use std::fs::{OpenOptions, Permissions};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys::Guest;

/// How long to wait for the network interface to show up (its driver may
/// still be loading when the agent starts).
const IFACE_WAIT: Duration = Duration::from_secs(10);

/// The identity a Reidentify applied, without its secrets (see [`Persisted`]).
pub const PERSISTED: &str = "/run/banger/identity.json";
pub const HOSTNAME_FILE: &str = "/etc/hostname";
pub const HOSTS_FILE: &str = "/etc/hosts";
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where the guest's files are: `/` in the guest, a temporary directory in
/// tests. Every path the identity steps write goes through [`Paths::at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// The running guest's own files.
    pub fn system() -> Paths {
        Paths { root: "/".into() }
    }

    /// Every guest path under `root` instead of `/`.
    #[cfg(test)]
    pub fn under(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }

    /// `guest_path` (absolute, as the guest sees it) under this root.
    pub fn at(&self, guest_path: &str) -> PathBuf {
        self.root.join(guest_path.trim_start_matches('/'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: Option<String>,
    /// `xx:xx:xx:xx:xx:xx`, lowercase; `None` leaves the MAC alone (the
    /// command line never sets it: the VMM gave the NIC its MAC).
    pub mac: Option<String>,
    /// Address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gw: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub iface: String,
    /// Remove the interface's other IPv4 addresses before adding `ip`: a
    /// restored clone still carries the template's. The command line path
    /// keeps today's `addr replace`, which leaves others alone.
    pub replace_addresses: bool,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            hostname: None,
            mac: None,
            ip: None,
            gw: None,
            dns: Vec::new(),
            iface: "eth0".to_owned(),
            replace_addresses: false,
        }
    }
}

/// Parses the `banger.*` keys of a kernel command line. Invalid values are
/// skipped, each with a warning; for repeated keys the last one wins.
pub fn parse_cmdline(cmdline: &str) -> (Identity, Vec<String>) {
    let mut id = Identity::default();
    let mut warnings = Vec::new();
    for token in cmdline.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let Some(key) = key.strip_prefix("banger.") else {
            continue;
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let parsed = match key {
            "hostname" => valid_hostname(value).map(|h| id.hostname = Some(h.to_owned())),
            "ip" => parse_cidr(value).map(|cidr| id.ip = Some(cidr)),
            "gw" => parse_ip(value).map(|gw| id.gw = Some(gw)),
            "dns" => value
                .split(',')
                .map(parse_ip)
                .collect::<Option<Vec<_>>>()
                .map(|dns| id.dns = dns),
            "iface" => valid_iface(value).map(|i| id.iface = i.to_owned()),
            _ => Some(()), // someone else's key
        };
        if parsed.is_none() {
            warnings.push(format!("ignoring invalid banger.{key}={value:?}"));
        }
    }
    (id, warnings)
}

pub fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some((parse_ip(ip)?, prefix))
}

pub fn valid_hostname(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(s)
}

pub fn valid_iface(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    ok.then_some(s)
}

/// A unicast MAC in the form `ip link` takes and prints: six pairs of
/// lowercase hex digits, colon separated, not all zero.
pub fn valid_mac(s: &str) -> Result<&str, &'static str> {
    let octets: Vec<&str> = s.split(':').collect();
    let hex = |o: &&str| o.len() == 2 && o.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if octets.len() != 6 || !octets.iter().all(hex) {
        return Err("is not six colon-separated pairs of lowercase hex digits");
    }
    let first = u8::from_str_radix(octets[0], 16).unwrap_or(0);
    if first & 1 != 0 {
        return Err("is a multicast address");
    }
    if octets.iter().all(|o| *o == "00") {
        return Err("is all zero");
    }
    Ok(s)
}

/// The network part of an identity from text fields (a Reidentify request,
/// or its [`Persisted`] record), every field checked; the error names the
/// first bad one. The gateway must lie inside the address's subnet and
/// differ from the address, or `ip route replace default via` would fail
/// after the address had already changed.
pub fn network_identity(
    hostname: &str,
    mac: &str,
    ip: &str,
    gateway: &str,
    dns: &[String],
    iface: &str,
) -> Result<Identity, String> {
    /// More name servers than anyone needs (glibc reads three).
    const MAX_DNS: usize = 8;
    let hostname = valid_hostname(hostname)
        .ok_or_else(|| format!("hostname {hostname:?} is not RFC 1123 label(s) of [A-Za-z0-9-]"))?;
    let mac = valid_mac(mac).map_err(|why| format!("mac {mac:?} {why}"))?;
    let (addr, prefix) =
        parse_cidr(ip).ok_or_else(|| format!("ip {ip:?} is not A.B.C.D/PREFIX (PREFIX <= 32)"))?;
    let gw = parse_ip(gateway).ok_or_else(|| format!("gateway {gateway:?} is not A.B.C.D"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    if u32::from(gw) & mask != u32::from(addr) & mask || gw == addr {
        return Err(format!(
            "gateway {gw} is not another address inside {addr}/{prefix}"
        ));
    }
    if dns.len() > MAX_DNS {
        return Err(format!("{} dns servers; at most {MAX_DNS}", dns.len()));
    }
    let dns = dns
        .iter()
        .map(|d| parse_ip(d).ok_or_else(|| format!("dns server {d:?} is not A.B.C.D")))
        .collect::<Result<Vec<_>, _>>()?;
    let iface =
        valid_iface(iface).ok_or_else(|| format!("iface {iface:?} is not an interface name"))?;
    Ok(Identity {
        hostname: Some(hostname.to_owned()),
        mac: Some(mac.to_owned()),
        ip: Some((addr, prefix)),
        gw: Some(gw),
        dns,
        iface: iface.to_owned(),
        replace_addresses: true,
    })
}

/// What a successful Reidentify leaves in [`PERSISTED`]: enough to put the
/// network and the name back after an agent restart, and the instance id
/// Pong reports. Never the entropy, the SSH private key nor the
/// authorized keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub hostname: String,
    pub mac: String,
    pub ip: String,
    pub gateway: String,
    pub dns: Vec<String>,
    pub iface: String,
    pub machine_id: String,
    pub instance_id: String,
}

impl Persisted {
    /// The identity to apply, every field checked again (the file is ours,
    /// but a torn or edited one must not half-configure the network).
    pub fn identity(&self) -> Result<Identity, String> {
        let id = network_identity(
            &self.hostname,
            &self.mac,
            &self.ip,
            &self.gateway,
            &self.dns,
            &self.iface,
        )?;
        if !valid_instance_id(&self.instance_id) {
            return Err(format!("instance_id {:?} is invalid", self.instance_id));
        }
        Ok(id)
    }
}

/// 1 to 64 characters of `[A-Za-z0-9-]`.
pub fn valid_instance_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Reads [`PERSISTED`]: `Ok(None)` when there is none (a cold boot, or no
/// Reidentify yet).
pub fn load_persisted(paths: &Paths) -> Result<Option<Persisted>, String> {
    let path = paths.at(PERSISTED);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {PERSISTED}: {e}")),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("parsing {PERSISTED}: {e}"))
}

/// Writes [`PERSISTED`] atomically, 0600, in a 0700 directory.
pub fn store_persisted(paths: &Paths, record: &Persisted) -> std::io::Result<()> {
    let path = paths.at(PERSISTED);
    if let Some(dir) = path.parent() {
        ensure_dir(dir, 0o700)?;
    }
    let mut text = serde_json::to_vec_pretty(record).expect("the record always serialises");
    text.push(b'\n');
    write_atomic(&path, &text, 0o600)
}

/// The instance id of the identity this guest took on (Reidentify, or its
/// record at startup); `None` before any.
static INSTANCE_ID: Mutex<Option<String>> = Mutex::new(None);

pub fn instance_id() -> Option<String> {
    INSTANCE_ID
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

pub fn set_instance_id(id: &str) {
    *INSTANCE_ID.lock().unwrap_or_else(PoisonError::into_inner) = Some(id.to_owned());
}

/// What to apply at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    pub identity: Identity,
    /// Set when the identity came from [`PERSISTED`].
    pub instance_id: Option<String>,
    /// Lines to log (where the identity came from, what was skipped).
    pub notes: Vec<String>,
}

/// The identity to apply at startup: [`PERSISTED`] when it is there and
/// valid, otherwise the kernel command line (`read_cmdline`, only called
/// then). `None` when neither can be read.
pub fn startup_identity(
    paths: &Paths,
    read_cmdline: impl FnOnce() -> std::io::Result<String>,
) -> Option<Startup> {
    let mut notes = Vec::new();
    match load_persisted(paths).and_then(|p| match p {
        Some(p) => p.identity().map(|id| Some((id, p))),
        None => Ok(None),
    }) {
        Ok(Some((identity, record))) => {
            notes.push(format!(
                "instance {} from {PERSISTED} (not the kernel command line)",
                record.instance_id
            ));
            return Some(Startup {
                identity,
                instance_id: Some(record.instance_id),
                notes,
            });
        }
        Ok(None) => {}
        Err(e) => notes.push(format!("ignoring {PERSISTED}: {e}")),
    }
    let cmdline = match read_cmdline() {
        Ok(c) => c,
        Err(e) => {
            log!("identity: cannot read /proc/cmdline: {e}");
            for note in notes {
                log!("identity: {note}");
            }
            return None;
        }
    };
    let (identity, warnings) = parse_cmdline(&cmdline);
    notes.extend(warnings);
    Some(Startup {
        identity,
        instance_id: None,
        notes,
    })
}

/// `/etc/hosts` with `127.0.1.1 <hostname>`, or None when the hostname is
/// already there. An existing 127.0.1.1 line (another name, from the image)
/// is replaced; otherwise the line is appended.
pub fn hosts_with_hostname(current: &str, hostname: &str) -> Option<String> {
    let fields = |line: &str| -> Vec<String> {
        let line = line.split('#').next().unwrap_or("");
        line.split_whitespace().map(str::to_owned).collect()
    };
    let present = current.lines().any(|line| {
        let f = fields(line);
        f.len() > 1 && f[1..].iter().any(|name| name == hostname)
    });
    if present {
        return None;
    }
    let entry = format!("127.0.1.1\t{hostname}");
    let mut replaced = false;
    let mut lines: Vec<String> = current
        .lines()
        .map(|line| {
            if !replaced && fields(line).first().map(String::as_str) == Some("127.0.1.1") {
                replaced = true;
                entry.clone()
            } else {
                line.to_owned()
            }
        })
        .collect();
    if !replaced {
        lines.push(entry);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Some(text)
}

/// At startup: applies the recorded identity of a warm-started guest, or
/// else the one on the kernel command line.
pub fn apply_at_startup() {
    let paths = Paths::system();
    let Some(start) = startup_identity(&paths, || std::fs::read_to_string("/proc/cmdline")) else {
        return;
    };
    for note in &start.notes {
        log!("identity: {note}");
    }
    if let Some(instance) = &start.instance_id {
        set_instance_id(instance);
    }
    let source = match start.instance_id {
        Some(_) => PERSISTED,
        None => "the kernel command line",
    };
    apply(&paths, &crate::sys::Real, &start.identity, source);
}

/// Applies `id` (from `source`, named in /etc/resolv.conf), logging and
/// skipping whatever fails: at startup, better a guest with part of its
/// identity than an agent that serves nobody.
fn apply(paths: &Paths, guest: &dyn Guest, id: &Identity, source: &str) {
    if let Some(name) = &id.hostname {
        match apply_hostname(paths, guest, name) {
            Ok(()) => log!("identity: hostname {name}"),
            Err(e) => log!("identity: {e}"),
        }
    }
    if let Err(e) = guest.ip(&argv(&["link", "set", "lo", "up"])) {
        log!("identity: {e}");
    }
    if id.ip.is_some() || id.gw.is_some() || id.mac.is_some() {
        wait_for_iface(paths, &id.iface);
        for step in iface_commands(id) {
            match guest.ip(&step.argv) {
                Ok(()) => {
                    if let Some(done) = step.done {
                        log!("identity: {done}");
                    }
                }
                Err(e) => log!("identity: {}: {e}", step.what),
            }
        }
    }
    if !id.dns.is_empty() {
        match write_resolv_conf(paths, &id.dns, source) {
            Ok(()) => log!("identity: DNS {:?}", id.dns),
            Err(e) => log!("identity: {e}"),
        }
    }
}

fn wait_for_iface(paths: &Paths, iface: &str) {
    let sys = paths.at("/sys/class/net").join(iface);
    let start = Instant::now();
    while !sys.exists() && start.elapsed() < IFACE_WAIT {
        sleep(Duration::from_millis(100));
    }
    if !sys.exists() {
        log!("identity: no interface {iface} after {IFACE_WAIT:?}; trying anyway");
    }
}

/// sethostname(2), then /etc/hostname and the 127.0.1.1 line of /etc/hosts.
pub fn apply_hostname(paths: &Paths, guest: &dyn Guest, name: &str) -> Result<(), String> {
    guest
        .set_hostname(name)
        .map_err(|e| format!("set hostname: {e}"))?;
    write_replacing(paths.at(HOSTNAME_FILE), &format!("{name}\n"))
        .map_err(|e| format!("write {HOSTNAME_FILE}: {e}"))?;
    let hosts = std::fs::read_to_string(paths.at(HOSTS_FILE)).unwrap_or_default();
    if let Some(text) = hosts_with_hostname(&hosts, name) {
        write_replacing(paths.at(HOSTS_FILE), &text)
            .map_err(|e| format!("write {HOSTS_FILE}: {e}"))?;
    }
    Ok(())
}

/// Replaces /etc/resolv.conf with `servers`; `source` says where they came
/// from, in its comment line.
pub fn write_resolv_conf(paths: &Paths, servers: &[Ipv4Addr], source: &str) -> Result<(), String> {
    let mut text = format!("# written by banger-agent from {source}\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    write_replacing(paths.at(RESOLV_CONF), &text).map_err(|e| format!("write {RESOLV_CONF}: {e}"))
}

/// One `ip` invocation of the network setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpStep {
    /// The step, as an error names it ("set mac on eth0").
    pub what: String,
    /// `ip`'s arguments.
    pub argv: Vec<String>,
    /// What to log once it worked.
    pub done: Option<String>,
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The `ip` invocations that configure the interface, in order. They work
/// with iproute2 and busybox's `ip` alike, and again on an interface an
/// earlier run configured: `addr replace`, not `add`, which fails then,
/// with a message that differs between the two (and the agent restarts
/// under init). With `replace_addresses` the interface's IPv4 addresses
/// are flushed first and the address added afresh: the template's address
/// must go, and nothing else can be left to collide with the `add`.
/// The MAC goes first, so the address is never announced with the
/// template's MAC.
pub fn iface_commands(id: &Identity) -> Vec<IpStep> {
    let iface = id.iface.as_str();
    let mut steps = Vec::new();
    if let Some(mac) = &id.mac {
        steps.push(IpStep {
            what: format!("set mac on {iface}"),
            argv: argv(&["link", "set", "dev", iface, "address", mac]),
            done: Some(format!("{iface} has MAC {mac}")),
        });
    }
    steps.push(IpStep {
        what: format!("bring {iface} up"),
        argv: argv(&["link", "set", iface, "up"]),
        done: None,
    });
    if let Some((addr, prefix)) = id.ip {
        let cidr = format!("{addr}/{prefix}");
        if id.replace_addresses {
            steps.push(IpStep {
                what: format!("flush the addresses of {iface}"),
                argv: argv(&["-4", "addr", "flush", "dev", iface]),
                done: None,
            });
        }
        let verb = if id.replace_addresses {
            "add"
        } else {
            "replace"
        };
        steps.push(IpStep {
            what: format!("add {cidr} to {iface}"),
            argv: argv(&["addr", verb, &cidr, "dev", iface]),
            done: Some(format!("{iface} has {cidr}")),
        });
    }
    if let Some(gw) = id.gw {
        steps.push(IpStep {
            what: format!("default route via {gw}"),
            argv: argv(&["route", "replace", "default", "via", &gw.to_string()]),
            done: Some(format!("default route via {gw}")),
        });
    }
    steps
}

/// Replaces `path` (a symlink too, e.g. a resolv.conf pointing elsewhere,
/// dangling or not) with a regular file holding `contents`, mode 0644,
/// atomically. A missing parent directory (an image without /etc) is
/// created.
pub fn write_replacing(path: impl AsRef<Path>, contents: &str) -> std::io::Result<()> {
    write_atomic(path.as_ref(), contents.as_bytes(), 0o644)
}

/// Writes `contents` to a temporary file beside `path` with exactly `mode`
/// (whatever the umask), flushes it to disk, and renames it over `path`:
/// a reader (sshd, systemd) sees the old file or the new one, never half
/// of one, and never a key file readable by others. A missing parent
/// directory is created.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.banger-agent"));
    // Left over by an agent that died mid-write.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `dir` (and its parents) if missing, and gives it `mode` either
/// way: sshd refuses an authorized_keys under a directory others can write.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn parses_the_banger_keys() {
        let (id, warnings) = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda rw console=ttyS0 banger.hostname=web-1 \
             banger.ip=172.30.0.5/24 banger.gw=172.30.0.1 banger.dns=1.1.1.1,9.9.9.9 \
             banger.iface=ens3 banger.future=x quiet\n",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            id,
            Identity {
                hostname: Some("web-1".into()),
                ip: Some((Ipv4Addr::new(172, 30, 0, 5), 24)),
                gw: Some(Ipv4Addr::new(172, 30, 0, 1)),
                dns: vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
                iface: "ens3".into(),
                mac: None,
                replace_addresses: false,
            }
        );
    }

    #[test]
    fn defaults_and_quotes() {
        let (id, warnings) =
            parse_cmdline("root=/dev/vda banger.hostname=\"db\" banger.ip=10.0.0.2/32");
        assert!(warnings.is_empty());
        assert_eq!(id.hostname.as_deref(), Some("db"));
        assert_eq!(id.ip, Some((Ipv4Addr::new(10, 0, 0, 2), 32)));
        assert_eq!(id.iface, "eth0");
        assert_eq!(id.gw, None);
        assert!(id.dns.is_empty());
        assert_eq!(parse_cmdline("").0, Identity::default());
    }

    #[test]
    fn invalid_values_are_skipped_with_a_warning() {
        let (id, warnings) = parse_cmdline(
            "banger.hostname=bad_name! banger.ip=10.0.0.2 banger.ip=10.0.0.2/33 \
             banger.gw=300.1.1.1 banger.dns=1.1.1.1,x banger.iface=a/b banger.hostname=",
        );
        assert_eq!(id, Identity::default());
        assert_eq!(warnings.len(), 7, "{warnings:?}");
        assert!(warnings[0].contains("banger.hostname"), "{warnings:?}");
    }

    #[test]
    fn last_key_wins() {
        let (id, _) = parse_cmdline("banger.hostname=a banger.hostname=b");
        assert_eq!(id.hostname.as_deref(), Some("b"));
    }

    #[test]
    fn hosts_gets_the_hostname_once() {
        let debian = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
        let added = hosts_with_hostname(debian, "vm1").unwrap();
        assert_eq!(added, format!("{debian}127.0.1.1\tvm1\n"));
        assert_eq!(hosts_with_hostname(&added, "vm1"), None);

        let image = "127.0.0.1 localhost\n127.0.1.1 debian\n# 127.0.1.1 comment\n";
        assert_eq!(
            hosts_with_hostname(image, "vm1").unwrap(),
            "127.0.0.1 localhost\n127.0.1.1\tvm1\n# 127.0.1.1 comment\n"
        );
        // Present on another line (or only in a comment: not present).
        assert_eq!(hosts_with_hostname("10.0.0.1 vm1 other\n", "vm1"), None);
        assert!(hosts_with_hostname("# 127.0.1.1 vm1\n", "vm1").is_some());
        assert_eq!(hosts_with_hostname("", "vm1").unwrap(), "127.0.1.1\tvm1\n");
    }

    #[test]
    fn iface_commands_are_idempotent_forms() {
        let id = Identity {
            ip: Some((Ipv4Addr::new(172, 30, 0, 5), 24)),
            gw: Some(Ipv4Addr::new(172, 30, 0, 1)),
            ..Identity::default()
        };
        let argv: Vec<String> = iface_commands(&id)
            .into_iter()
            .map(|step| step.argv.join(" "))
            .collect();
        assert_eq!(
            argv,
            [
                "link set eth0 up",
                "addr replace 172.30.0.5/24 dev eth0",
                "route replace default via 172.30.0.1",
            ]
        );
        let only_up = iface_commands(&Identity::default());
        assert_eq!(only_up.len(), 1);
    }

    /// The `ip` implementations to test the agent's commands with (iproute2,
    /// and busybox when installed), or None where the test cannot run here
    /// (it needs root and `unshare` for a network namespace of its own).
    fn ip_implementations() -> Option<Vec<&'static str>> {
        let have = |prog: &str| {
            Command::new(prog)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        };
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !have("unshare") || !have("ip") {
            eprintln!("skipped: needs root, unshare and iproute2");
            return None;
        }
        let mut implementations = vec!["ip"];
        if have("busybox") {
            implementations.push("busybox ip");
        } else {
            eprintln!("busybox missing: checking iproute2 only");
        }
        Some(implementations)
    }

    /// Runs `setup`, then `commands` twice (as an agent restart would) with
    /// `imp`, then `report`, in a fresh network namespace; returns stdout,
    /// or None when no namespace can be made here.
    fn run_in_netns(imp: &str, setup: &str, commands: &[String], report: &str) -> Option<String> {
        let mut script = format!("set -e\n{setup}");
        for _ in 0..2 {
            for c in commands {
                script.push_str(&format!("{imp} {c}\n"));
            }
        }
        script.push_str(report);
        let out = Command::new("unshare")
            .args(["-n", "sh", "-c", &script])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("unshare failed") {
            eprintln!("skipped: cannot make a network namespace: {stderr}");
            return None;
        }
        assert!(out.status.success(), "{imp}: {stderr}\n{stdout}");
        Some(stdout)
    }

    /// Runs the agent's `ip` commands, twice, against iproute2 and busybox in
    /// a network namespace of their own (`unshare -n`, as root), on a veth
    /// named like the guest's interface. Skipped where that is not possible.
    #[test]
    fn ip_commands_work_with_iproute2_and_busybox() {
        let Some(implementations) = ip_implementations() else {
            return;
        };
        let id = Identity {
            ip: Some((Ipv4Addr::new(172, 30, 0, 5), 24)),
            gw: Some(Ipv4Addr::new(172, 30, 0, 1)),
            iface: "eth0".into(),
            ..Identity::default()
        };
        let mut commands = vec!["link set lo up".to_owned()];
        commands.extend(iface_commands(&id).into_iter().map(|s| s.argv.join(" ")));
        for imp in implementations {
            let Some(stdout) = run_in_netns(
                imp,
                "ip link add eth0 type veth peer name peer0\nip link set peer0 up\n",
                &commands,
                "ip -4 addr show dev eth0\nip -4 route\n",
            ) else {
                return;
            };
            assert!(stdout.contains("inet 172.30.0.5/24"), "{imp}: {stdout}");
            assert!(
                stdout.contains("default via 172.30.0.1 dev eth0"),
                "{imp}: {stdout}"
            );
        }
    }

    /// The warm-start form (MAC, flush, add, route) on an interface that
    /// still has the template's address, MAC and route, in a network
    /// namespace of its own; twice, as an agent restart would. Skipped
    /// where that is not possible.
    #[test]
    fn replacing_ip_commands_move_a_configured_interface() {
        let Some(implementations) = ip_implementations() else {
            return;
        };
        let id = network_identity(
            "web-2",
            "52:54:00:1e:00:07",
            "172.30.0.7/24",
            "172.30.0.1",
            &[],
            "eth0",
        )
        .unwrap();
        let commands: Vec<String> = iface_commands(&id)
            .into_iter()
            .map(|s| s.argv.join(" "))
            .collect();
        for imp in implementations {
            let Some(stdout) = run_in_netns(
                imp,
                concat!(
                    "ip link add eth0 address 52:54:00:1e:00:02 type veth peer name peer0\n",
                    "ip link set peer0 up\nip link set eth0 up\n",
                    "ip addr add 172.30.0.2/24 dev eth0\nip addr add 10.9.0.2/16 dev eth0\n",
                    "ip route add default via 172.30.0.1\n",
                ),
                &commands,
                "ip link show dev eth0\nip -4 addr show dev eth0\nip -4 route\n",
            ) else {
                return;
            };
            assert!(
                stdout.contains("link/ether 52:54:00:1e:00:07"),
                "{imp}: {stdout}"
            );
            assert!(stdout.contains("inet 172.30.0.7/24"), "{imp}: {stdout}");
            assert!(!stdout.contains("172.30.0.2"), "{imp}: {stdout}");
            assert!(!stdout.contains("10.9.0.2"), "{imp}: {stdout}");
            assert!(
                stdout.contains("default via 172.30.0.1 dev eth0"),
                "{imp}: {stdout}"
            );
        }
    }

    #[test]
    fn replacing_ip_argv() {
        let mut id = network_identity(
            "web-2",
            "52:54:00:1e:00:07",
            "172.30.0.7/24",
            "172.30.0.1",
            &["1.1.1.1".into()],
            "ens3",
        )
        .unwrap();
        let steps = iface_commands(&id);
        let argv: Vec<String> = steps.iter().map(|s| s.argv.join(" ")).collect();
        assert_eq!(
            argv,
            [
                "link set dev ens3 address 52:54:00:1e:00:07",
                "link set ens3 up",
                "-4 addr flush dev ens3",
                "addr add 172.30.0.7/24 dev ens3",
                "route replace default via 172.30.0.1",
            ]
        );
        let what: Vec<&str> = steps.iter().map(|s| s.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "set mac on ens3",
                "bring ens3 up",
                "flush the addresses of ens3",
                "add 172.30.0.7/24 to ens3",
                "default route via 172.30.0.1",
            ]
        );
        // The arguments are separate words, whatever they hold.
        id.iface = "a b".into();
        assert!(iface_commands(&id)[0].argv.contains(&"a b".to_owned()));
    }

    #[test]
    fn network_identity_checks_every_field() {
        let ok = |h: &str, m: &str, ip: &str, gw: &str, dns: &[&str], i: &str| {
            let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
            network_identity(h, m, ip, gw, &dns, i)
        };
        let id = ok(
            "a.b-c",
            "52:54:00:00:00:01",
            "10.0.0.2/8",
            "10.200.0.1",
            &["9.9.9.9"],
            "eth0",
        )
        .unwrap();
        assert_eq!(id.mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(id.dns, [Ipv4Addr::new(9, 9, 9, 9)]);
        assert!(id.replace_addresses);
        let cases: &[(&str, Result<Identity, String>)] = &[
            (
                "hostname",
                ok(
                    "bad_name",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "mac",
                ok(
                    "a",
                    "52:54:00:00:00:0G",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "mac",
                ok(
                    "a",
                    "52:54:00:00:00:0A",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "mac",
                ok(
                    "a",
                    "52:54:00:00:00",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "mac",
                ok(
                    "a",
                    "52-54-00-00-00-01",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "multicast",
                ok(
                    "a",
                    "01:00:5e:00:00:01",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "all zero",
                ok(
                    "a",
                    "00:00:00:00:00:00",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "ip",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "ip",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/33",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "ip",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.256/24",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "gateway",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "gateway",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.1.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "gateway",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.0.2",
                    &[],
                    "eth0",
                ),
            ),
            (
                "gateway",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/32",
                    "10.0.0.1",
                    &[],
                    "eth0",
                ),
            ),
            (
                "dns",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &["1.1.1"],
                    "eth0",
                ),
            ),
            (
                "iface",
                ok(
                    "a",
                    "52:54:00:00:00:01",
                    "10.0.0.2/24",
                    "10.0.0.1",
                    &[],
                    "a/b",
                ),
            ),
        ];
        for (field, got) in cases {
            let err = got.as_ref().expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    fn record() -> Persisted {
        Persisted {
            hostname: "web-2".into(),
            mac: "52:54:00:1e:00:07".into(),
            ip: "172.30.0.7/24".into(),
            gateway: "172.30.0.1".into(),
            dns: vec!["172.30.0.1".into()],
            iface: "eth0".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            instance_id: "vm-7".into(),
        }
    }

    const CMDLINE: &str = "root=/dev/vda banger.hostname=template banger.ip=172.30.0.2/24 \
                           banger.gw=172.30.0.1";

    #[test]
    fn startup_prefers_the_recorded_identity() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());

        // No record: the kernel command line, as before warm starts.
        let start = startup_identity(&paths, || Ok(CMDLINE.into())).unwrap();
        assert_eq!(start.instance_id, None);
        assert_eq!(start.identity, parse_cmdline(CMDLINE).0);
        assert!(start.notes.is_empty(), "{:?}", start.notes);

        // A record: it wins, and /proc/cmdline is not even read.
        store_persisted(&paths, &record()).unwrap();
        let start = startup_identity(&paths, || panic!("cmdline read")).unwrap();
        assert_eq!(start.instance_id.as_deref(), Some("vm-7"));
        assert_eq!(start.identity, record().identity().unwrap());
        assert_eq!(start.identity.hostname.as_deref(), Some("web-2"));
        assert_eq!(start.identity.mac.as_deref(), Some("52:54:00:1e:00:07"));
        assert_eq!(start.identity.ip, Some((Ipv4Addr::new(172, 30, 0, 7), 24)));

        // A torn or invalid record: said so, and the command line instead.
        let file = paths.at(PERSISTED);
        std::fs::write(&file, b"{\"hostname\":").unwrap();
        let start = startup_identity(&paths, || Ok(CMDLINE.into())).unwrap();
        assert_eq!(start.instance_id, None);
        assert_eq!(start.identity.hostname.as_deref(), Some("template"));
        assert!(start.notes[0].contains("ignoring"), "{:?}", start.notes);
        let mut bad = record();
        bad.mac = "01:00:5e:00:00:01".into();
        store_persisted(&paths, &bad).unwrap();
        let start = startup_identity(&paths, || Ok(CMDLINE.into())).unwrap();
        assert_eq!(start.instance_id, None);
        assert!(start.notes[0].contains("multicast"), "{:?}", start.notes);

        // Neither: nothing to apply.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            startup_identity(&paths, || Err(std::io::ErrorKind::NotFound.into())),
            None
        );
    }

    #[test]
    fn the_record_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        store_persisted(&paths, &record()).unwrap();
        let file = paths.at(PERSISTED);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(load_persisted(&paths).unwrap(), Some(record()));
        // Again over the old one: replaced, no temporary file left.
        let mut next = record();
        next.instance_id = "vm-8".into();
        store_persisted(&paths, &next).unwrap();
        assert_eq!(load_persisted(&paths).unwrap(), Some(next));
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn write_atomic_sets_the_mode_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        // A temporary file left by an agent that died mid-write is no obstacle.
        std::fs::write(dir.path().join("a/b/.key.banger-agent"), b"stale").unwrap();
        write_atomic(&path, b"three", 0o444).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        assert_eq!(
            std::fs::read_dir(dir.path().join("a/b")).unwrap().count(),
            1
        );
    }

    #[test]
    fn write_replacing_copes_with_dangling_links_and_no_etc() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        // No /etc at all.
        write_replacing(etc.join("hostname"), "vm1\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "vm1\n"
        );
        // resolv.conf pointing at systemd-resolved's file, which is not there.
        let resolv = etc.join("resolv.conf");
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &resolv).unwrap();
        write_replacing(&resolv, "nameserver 1.1.1.1\n").unwrap();
        assert!(!std::fs::symlink_metadata(&resolv)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            "nameserver 1.1.1.1\n"
        );
        assert!(
            !dir.path().join("run").exists(),
            "the link target stays absent"
        );
        let names: Vec<_> = std::fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
