use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;

use super::*;

const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_good_identity_becomes_a_plan() {
    let plan = validate(&banger_agent_proto::testkit::valid_identity()).unwrap();
    assert_eq!(plan.network.iface, "eth0");
    assert_eq!(plan.network.mac.as_deref(), Some("52:54:00:1e:00:07"));
    assert!(plan.network.replace_addresses);
    assert_eq!(plan.entropy, [7u8; 64]);
    assert_eq!(
        plan.authorized_keys,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 banger\n"
    );
    assert_eq!(
        plan.ssh_host_key_pub,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 web-2\n"
    );
    assert_eq!(plan.record.iface, "eth0");
    // A trailing newline on the public key, none on the private one: fine.
    let mut id = banger_agent_proto::testkit::valid_identity();
    id.ssh_host_key_pub.push('\n');
    id.ssh_host_key = KEY.trim_end().into();
    id.iface = Some("ens3".into());
    id.entropy = b64(&[1u8; 512]);
    let plan = validate(&id).unwrap();
    assert_eq!(plan.ssh_host_key, KEY);
    assert_eq!(plan.ssh_host_key_pub.matches('\n').count(), 1);
    assert_eq!(plan.network.iface, "ens3");
    assert_eq!(plan.record.iface, "ens3");
}

#[test]
fn every_bad_field_is_refused_by_name() {
    type Edit = fn(&mut NewIdentity);
    let cases: &[(&str, Edit, &str)] = &[
        ("bad mac", |i| i.mac = "52:54:00:1e:00".into(), "mac"),
        (
            "uppercase mac",
            |i| i.mac = "52:54:00:1E:00:07".into(),
            "mac",
        ),
        (
            "multicast mac",
            |i| i.mac = "03:54:00:1e:00:07".into(),
            "multicast",
        ),
        ("bad cidr", |i| i.ip = "172.30.0.7".into(), "ip"),
        ("prefix 33", |i| i.ip = "172.30.0.7/33".into(), "ip"),
        (
            "gateway elsewhere",
            |i| i.gateway = "10.0.0.1".into(),
            "gateway",
        ),
        ("bad gateway", |i| i.gateway = "gw".into(), "gateway"),
        ("bad dns", |i| i.dns = vec!["x".into()], "dns"),
        ("bad hostname", |i| i.hostname = "web_2".into(), "hostname"),
        ("empty hostname", |i| i.hostname = String::new(), "hostname"),
        ("bad iface", |i| i.iface = Some("../x".into()), "iface"),
        ("no clock", |i| i.unix_time_ns = 0, "unix_time_ns"),
        (
            "short entropy",
            |i| i.entropy = b64(&[1u8; 31]),
            "entropy of 31 bytes",
        ),
        (
            "long entropy",
            |i| i.entropy = b64(&[1u8; 513]),
            "entropy of 513 bytes",
        ),
        (
            "invalid entropy",
            |i| i.entropy = "not base64!".into(),
            "entropy is not base64",
        ),
        (
            "short machine_id",
            |i| i.machine_id = "0123abcd".into(),
            "machine_id",
        ),
        (
            "long machine_id",
            |i| i.machine_id = "0123456789abcdef0123456789abcdef0".into(),
            "machine_id",
        ),
        (
            "uppercase machine_id",
            |i| i.machine_id = "0123456789ABCDEF0123456789ABCDEF".into(),
            "machine_id",
        ),
        (
            "zero machine_id",
            |i| i.machine_id = "0".repeat(32),
            "all zero",
        ),
        (
            "not a key",
            |i| i.ssh_host_key = "hello".into(),
            "ssh_host_key is",
        ),
        (
            "key with newline in pub",
            |i| i.ssh_host_key_pub = "ssh-ed25519 AAAA\nssh-ed25519 BBBB".into(),
            "more than one line",
        ),
        (
            "rsa pub",
            |i| i.ssh_host_key_pub = "ssh-rsa AAAA".into(),
            "ssh_host_key_pub",
        ),
        (
            "pub without key",
            |i| i.ssh_host_key_pub = "ssh-ed25519 ".into(),
            "ssh_host_key_pub",
        ),
        (
            "no authorized keys",
            |i| i.authorized_keys = " \n".into(),
            "authorized_keys",
        ),
        (
            "NUL in authorized keys",
            |i| i.authorized_keys = "a\0b".into(),
            "authorized_keys",
        ),
        (
            "empty instance_id",
            |i| i.instance_id = String::new(),
            "instance_id",
        ),
        (
            "instance_id bad chars",
            |i| i.instance_id = "vm_7/x".into(),
            "instance_id",
        ),
        (
            "long instance_id",
            |i| i.instance_id = "a".repeat(65),
            "instance_id",
        ),
    ];
    for (case, edit, want) in cases {
        let mut id = banger_agent_proto::testkit::valid_identity();
        edit(&mut id);
        let err = validate(&id).expect_err(case);
        assert!(err.contains(want), "{case}: {err}");
    }
}

#[test]
fn refused_identities_change_nothing_and_disabled_agents_only_check() {
    let mut bad = banger_agent_proto::testkit::valid_identity();
    bad.mac = "01:00:5e:00:00:01".into();
    let err = handle(&bad, false).unwrap_err();
    assert!(err.starts_with("invalid identity: mac"), "{err}");
    // A valid one under --no-identity: checked, then refused.
    let err = handle(&banger_agent_proto::testkit::valid_identity(), false).unwrap_err();
    assert!(err.contains("--no-identity"), "{err}");
    assert_eq!(identity::instance_id(), None);
}

/// Records what the steps asked of the guest; fails the call named in
/// `fail`: "mac", "up", "flush", "add", "route" (the `ip` calls),
/// "hostname", "clock", "entropy".
#[derive(Default)]
struct Fake {
    calls: RefCell<Vec<String>>,
    fail: Option<&'static str>,
}

impl Fake {
    fn call(&self, name: String, key: &str) -> Result<(), String> {
        self.calls.borrow_mut().push(name);
        match self.fail {
            Some(f) if f == key => Err("Operation not permitted".into()),
            _ => Ok(()),
        }
    }
}

impl Guest for Fake {
    fn ip(&self, args: &[String]) -> Result<(), String> {
        let key = match args.first().map(String::as_str) {
            Some("-4") => "flush",
            Some("addr") => "add",
            Some("route") => "route",
            _ if args.iter().any(|a| a == "address") => "mac",
            _ => "up",
        };
        self.call(format!("ip {}", args.join(" ")), key)
    }

    fn set_hostname(&self, name: &str) -> Result<(), String> {
        self.call(format!("sethostname {name}"), "hostname")
    }

    fn set_clock(&self, unix_time_ns: u64) -> Result<(), String> {
        self.call(format!("clock {unix_time_ns}"), "clock")
    }

    fn add_entropy(&self, bytes: &[u8]) -> Result<(), String> {
        self.call(format!("entropy {}", bytes.len()), "entropy")
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A guest root as the template left it.
fn template_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let at = |p: &str| dir.path().join(p.trim_start_matches('/'));
    std::fs::create_dir_all(at("/etc/ssh")).unwrap();
    for name in [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
    ] {
        std::fs::write(at("/etc/ssh").join(name), "template").unwrap();
    }
    std::fs::write(at("/etc/ssh/sshd_config"), "HostKey x\n").unwrap();
    std::fs::write(at("/etc/ssh/ssh_host_notes"), "kept").unwrap();
    std::fs::write(
        at("/etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1\ttemplate\n",
    )
    .unwrap();
    std::fs::write(at("/etc/hostname"), "template\n").unwrap();
    std::fs::write(at("/etc/machine-id"), "ffffffffffffffffffffffffffffffff\n").unwrap();
    std::fs::create_dir_all(at("/root/.ssh")).unwrap();
    std::fs::set_permissions(at("/root/.ssh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(at("/root/.ssh/authorized_keys"), "old\n").unwrap();
    dir
}

#[test]
fn apply_runs_every_step_in_order_and_writes_the_files() {
    let root = template_root();
    let paths = Paths::under(root.path());
    let plan = validate(&banger_agent_proto::testkit::valid_identity()).unwrap();
    let guest = Fake::default();
    apply(&plan, &paths, &guest).unwrap();
    assert_eq!(
        *guest.calls.borrow(),
        [
            "ip link set dev eth0 address 52:54:00:1e:00:07",
            "ip link set eth0 up",
            "ip -4 addr flush dev eth0",
            "ip addr add 172.30.0.7/24 dev eth0",
            "ip route replace default via 172.30.0.1",
            "sethostname web-2",
            "clock 1700000000123456789",
            "entropy 64",
        ]
    );
    let at = |p: &str| paths.at(p);
    let read = |p: &str| std::fs::read_to_string(at(p)).unwrap();
    assert_eq!(
        read("/etc/resolv.conf"),
        "# written by banger-agent from a warm start's new identity\nnameserver 172.30.0.1\n"
    );
    assert_eq!(read("/etc/hostname"), "web-2\n");
    assert_eq!(
        read("/etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1\tweb-2\n"
    );
    assert_eq!(read(MACHINE_ID), "0123456789abcdef0123456789abcdef\n");
    assert_eq!(mode(&at(MACHINE_ID)), 0o444);
    assert_eq!(read(SSH_HOST_KEY), KEY);
    assert_eq!(mode(&at(SSH_HOST_KEY)), 0o600);
    assert_eq!(
        read(SSH_HOST_KEY_PUB),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 web-2\n"
    );
    assert_eq!(mode(&at(SSH_HOST_KEY_PUB)), 0o644);
    assert_eq!(mode(&at("/root/.banger")), 0o700);
    assert_eq!(
        read(AUTHORIZED_KEYS),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 banger\n"
    );
    assert_eq!(mode(&at(AUTHORIZED_KEYS)), 0o600);
    assert_eq!(mode(&at("/root/.ssh")), 0o700, "tightened for sshd");

    // The template's host keys are gone; everything else in /etc/ssh stays.
    let mut left: Vec<String> = std::fs::read_dir(at(ETC_SSH))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["ssh_host_notes", "sshd_config"]);

    // The record: the network, name and ids; no secret.
    let json = read(identity::PERSISTED);
    assert_eq!(mode(&at(identity::PERSISTED)), 0o600);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "hostname": "web-2",
            "mac": "52:54:00:1e:00:07",
            "ip": "172.30.0.7/24",
            "gateway": "172.30.0.1",
            "dns": ["172.30.0.1"],
            "iface": "eth0",
            "machine_id": "0123456789abcdef0123456789abcdef",
            "instance_id": "vm-7",
        })
    );
    for secret in [
        &banger_agent_proto::testkit::valid_identity().entropy,
        "PRIVATE KEY",
        "banger\n",
        "AAAAC3Nza",
    ] {
        assert!(!json.contains(secret), "{secret:?} in {json}");
    }
    // And what an agent restart would apply from it.
    let start = identity::startup_identity(&paths, || panic!("cmdline read")).unwrap();
    assert_eq!(start.identity, plan.network);
    assert_eq!(start.instance_id.as_deref(), Some("vm-7"));

    // No temporary files left anywhere.
    for dir in ["/etc", "/root/.banger", "/root/.ssh", "/run/banger"] {
        for e in std::fs::read_dir(at(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.ends_with(".banger-agent"), "{dir}/{name}");
        }
    }

    // Applying it again (a retried request) works the same.
    apply(&plan, &paths, &Fake::default()).unwrap();
    assert_eq!(
        read("/etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1\tweb-2\n"
    );
}

#[test]
fn a_failing_step_stops_the_rest_and_is_named() {
    let cases = [
        ("mac", "set mac on eth0: Operation not permitted", 1),
        ("up", "bring eth0 up: ", 2),
        ("flush", "flush the addresses of eth0: ", 3),
        ("add", "add 172.30.0.7/24 to eth0: ", 4),
        ("route", "default route via 172.30.0.1: ", 5),
        ("hostname", "set hostname: ", 6),
        ("clock", "set clock: ", 7),
        ("entropy", "add entropy: ", 8),
    ];
    let plan = validate(&banger_agent_proto::testkit::valid_identity()).unwrap();
    for (fail, want, calls) in cases {
        let root = template_root();
        let paths = Paths::under(root.path());
        let guest = Fake {
            fail: Some(fail),
            ..Fake::default()
        };
        let err = apply(&plan, &paths, &guest).unwrap_err();
        assert!(err.starts_with(want), "{fail}: {err}");
        assert_eq!(
            guest.calls.borrow().len(),
            calls,
            "{fail}: {:?}",
            guest.calls.borrow()
        );
        assert!(!paths.at(identity::PERSISTED).exists(), "{fail}");
        assert!(paths.at("/etc/ssh/ssh_host_rsa_key").exists(), "{fail}");
    }
}

#[test]
fn a_failing_file_step_is_named() {
    let root = template_root();
    let paths = Paths::under(root.path());
    // /root/.banger is a file: the key cannot go beneath it.
    std::fs::write(paths.at("/root/.banger"), "x").unwrap();
    let plan = validate(&banger_agent_proto::testkit::valid_identity()).unwrap();
    let err = apply(&plan, &paths, &Fake::default()).unwrap_err();
    assert!(err.contains(SSH_HOST_KEY), "{err}");
    assert!(!paths.at(identity::PERSISTED).exists());
    // The steps before it happened.
    assert_eq!(
        std::fs::read_to_string(paths.at(MACHINE_ID)).unwrap(),
        "0123456789abcdef0123456789abcdef\n"
    );
}

#[test]
fn host_key_names() {
    for name in [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_ecdsa_key.pub",
    ] {
        assert!(is_host_key_name(name), "{name}");
    }
    for name in [
        "sshd_config",
        "ssh_host_key",
        "ssh_host__key.pub",
        "ssh_host_rsa_key.bak",
        "moduli",
        "ssh_host_rsa_key-cert.pub",
    ] {
        assert!(!is_host_key_name(name), "{name}");
    }
}

#[test]
fn write_in_place_keeps_the_inode() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("machine-id");
    std::fs::write(&path, "ffffffffffffffffffffffffffffffffff\n").unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    write_in_place(&path, b"0123\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"0123\n");
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    // Never through a link.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(write_in_place(&link, b"x").is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"0123\n");
}
