//! The VM identity from the kernel command line: hostname, address, DNS.
//!
//! Keys: `banger.hostname=NAME`, `banger.ip=A.B.C.D/PREFIX`,
//! `banger.gw=A.B.C.D`, `banger.dns=A.B.C.D[,A.B.C.D...]`,
//! `banger.iface=IFACE` (default eth0). Every failure is logged and skipped;
//! none stops the agent.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long to wait for the network interface to show up (its driver may
/// still be loading when the agent starts).
const IFACE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: Option<String>,
    /// Address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gw: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub iface: String,
}

impl Default for Identity {
    fn default() -> Identity {
        Identity {
            hostname: None,
            ip: None,
            gw: None,
            dns: Vec::new(),
            iface: "eth0".to_owned(),
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

fn parse_ip(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some(())?;
    Some((parse_ip(ip)?, prefix))
}

fn valid_hostname(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(s)
}

fn valid_iface(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    ok.then_some(s)
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

/// Reads /proc/cmdline and applies what it finds.
pub fn apply_from_kernel() {
    let cmdline = match std::fs::read_to_string("/proc/cmdline") {
        Ok(c) => c,
        Err(e) => {
            log!("identity: cannot read /proc/cmdline: {e}");
            return;
        }
    };
    let (id, warnings) = parse_cmdline(&cmdline);
    for w in warnings {
        log!("identity: {w}");
    }
    apply(&id);
}

fn apply(id: &Identity) {
    if let Some(name) = &id.hostname {
        if let Err(e) = set_hostname(name) {
            log!("identity: {e}");
        }
    }
    if let Err(e) = ip(&["link", "set", "lo", "up"]) {
        log!("identity: {e}");
    }
    if id.ip.is_some() || id.gw.is_some() {
        configure_iface(id);
    }
    if !id.dns.is_empty() {
        let mut text = String::from("# written by banger-agent from the kernel command line\n");
        for server in &id.dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        match write_replacing("/etc/resolv.conf", &text) {
            Ok(()) => log!("identity: DNS {:?}", id.dns),
            Err(e) => log!("identity: writing /etc/resolv.conf: {e}"),
        }
    }
}

fn set_hostname(name: &str) -> Result<(), String> {
    // SAFETY: the pointer and length describe `name`, which outlives the
    // call; sethostname(2) only reads that many bytes.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc != 0 {
        return Err(format!(
            "sethostname {name:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    write_replacing("/etc/hostname", &format!("{name}\n"))
        .map_err(|e| format!("writing /etc/hostname: {e}"))?;
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if let Some(text) = hosts_with_hostname(&hosts, name) {
        write_replacing("/etc/hosts", &text).map_err(|e| format!("writing /etc/hosts: {e}"))?;
    }
    log!("identity: hostname {name}");
    Ok(())
}

fn configure_iface(id: &Identity) {
    let iface = id.iface.as_str();
    let sys = Path::new("/sys/class/net").join(iface);
    let start = Instant::now();
    while !sys.exists() && start.elapsed() < IFACE_WAIT {
        sleep(Duration::from_millis(100));
    }
    if !sys.exists() {
        log!("identity: no interface {iface} after {IFACE_WAIT:?}; trying anyway");
    }
    for (args, done) in iface_commands(id) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match ip(&args) {
            Ok(()) => {
                if let Some(done) = done {
                    log!("identity: {done}");
                }
            }
            Err(e) => log!("identity: {e}"),
        }
    }
}

/// The `ip` invocations that configure the interface, each with what to
/// log once it worked. They work with iproute2 and busybox's `ip` alike,
/// and again on an interface an earlier run configured: `addr replace`,
/// not `add`, which fails then, with a message that differs between the
/// two (and the agent restarts under init).
fn iface_commands(id: &Identity) -> Vec<(Vec<String>, Option<String>)> {
    let iface = id.iface.as_str();
    let argv = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut commands = vec![(argv(&["link", "set", iface, "up"]), None)];
    if let Some((addr, prefix)) = id.ip {
        let cidr = format!("{addr}/{prefix}");
        commands.push((
            argv(&["addr", "replace", &cidr, "dev", iface]),
            Some(format!("{iface} has {cidr}")),
        ));
    }
    if let Some(gw) = id.gw {
        commands.push((
            argv(&["route", "replace", "default", "via", &gw.to_string()]),
            Some(format!("default route via {gw}")),
        ));
    }
    commands
}

/// Where `ip` lives: iproute2's, or busybox's applet (a link to busybox,
/// or busybox itself when the image has no such link), or `ip` on PATH.
/// Returns the program and the arguments that go before `ip`'s own.
fn ip_program(exists: impl Fn(&str) -> bool) -> (&'static str, &'static [&'static str]) {
    const IP: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
    const BUSYBOX: [&str; 3] = ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"];
    if let Some(ip) = IP.into_iter().find(|p| exists(p)) {
        return (ip, &[]);
    }
    match BUSYBOX.into_iter().find(|p| exists(p)) {
        Some(busybox) => (busybox, &["ip"]),
        None => ("ip", &[]),
    }
}

/// Runs `ip` with `args`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let (program, prefix) = ip_program(|p| Path::new(p).exists());
    let shown = format!("ip {}", args.join(" "));
    let output = Command::new(program)
        .args(prefix)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{shown}: {} ({})", stderr.trim(), output.status))
    }
}

/// Replaces `path` (a symlink too, e.g. a resolv.conf pointing elsewhere,
/// dangling or not) with a regular file holding `contents`, atomically.
/// A missing parent directory (an image without /etc) is created.
fn write_replacing(path: impl AsRef<Path>, contents: &str) -> std::io::Result<()> {
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.banger-agent"));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
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
    fn ip_is_iproute2_or_busybox() {
        assert_eq!(ip_program(|p| p == "/sbin/ip"), ("/sbin/ip", &[][..]));
        // Debian has both; iproute2 wins.
        assert_eq!(
            ip_program(|p| p == "/usr/sbin/ip" || p == "/bin/busybox"),
            ("/usr/sbin/ip", &[][..])
        );
        // A busybox image without an `ip` link.
        assert_eq!(
            ip_program(|p| p == "/bin/busybox"),
            ("/bin/busybox", &["ip"][..])
        );
        assert_eq!(ip_program(|_| false), ("ip", &[][..]));
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
            .map(|(args, _)| args.join(" "))
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

    /// Runs the agent's `ip` commands, twice, against iproute2 and busybox in
    /// a network namespace of their own (`unshare -n`, as root), on a veth
    /// named like the guest's interface. Skipped where that is not possible.
    #[test]
    fn ip_commands_work_with_iproute2_and_busybox() {
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
            return;
        }
        let id = Identity {
            ip: Some((Ipv4Addr::new(172, 30, 0, 5), 24)),
            gw: Some(Ipv4Addr::new(172, 30, 0, 1)),
            iface: "eth0".into(),
            ..Identity::default()
        };
        let mut commands = vec!["link set lo up".to_owned()];
        commands.extend(iface_commands(&id).into_iter().map(|(a, _)| a.join(" ")));
        let mut implementations = vec!["ip"];
        if have("busybox") {
            implementations.push("busybox ip");
        } else {
            eprintln!("busybox missing: checking iproute2 only");
        }
        for imp in implementations {
            let mut script = String::from(
                "set -e\nip link add eth0 type veth peer name peer0\nip link set peer0 up\n",
            );
            for _ in 0..2 {
                for c in &commands {
                    script.push_str(&format!("{imp} {c}\n"));
                }
            }
            script.push_str("ip -4 addr show dev eth0\nip -4 route\n");
            let out = Command::new("unshare")
                .args(["-n", "sh", "-c", &script])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && stderr.contains("unshare failed") {
                eprintln!("skipped: cannot make a network namespace: {stderr}");
                return;
            }
            assert!(out.status.success(), "{imp}: {stderr}\n{stdout}");
            assert!(stdout.contains("inet 172.30.0.5/24"), "{imp}: {stdout}");
            assert!(
                stdout.contains("default via 172.30.0.1 dev eth0"),
                "{imp}: {stdout}"
            );
        }
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
