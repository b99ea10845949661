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
    if let Err(e) = ip(&["link", "set", iface, "up"]) {
        log!("identity: {e}");
    }
    if let Some((addr, prefix)) = id.ip {
        let cidr = format!("{addr}/{prefix}");
        match ip(&["addr", "add", &cidr, "dev", iface]) {
            Ok(()) => log!("identity: {iface} has {cidr}"),
            Err(e) if e.contains("File exists") => {} // configured by an earlier run
            Err(e) => log!("identity: {e}"),
        }
    }
    if let Some(gw) = id.gw {
        match ip(&["route", "replace", "default", "via", &gw.to_string()]) {
            Ok(()) => log!("identity: default route via {gw}"),
            Err(e) => log!("identity: {e}"),
        }
    }
}

/// Runs iproute2's `ip` with `args`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let program = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip");
    let shown = format!("ip {}", args.join(" "));
    let output = Command::new(program)
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

/// Replaces `path` (a symlink too, e.g. a resolv.conf pointing elsewhere)
/// with a regular file holding `contents`, atomically.
fn write_replacing(path: &str, contents: &str) -> std::io::Result<()> {
    let path = Path::new(path);
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
}
