use super::*;
use banger_vmm::Accel;
use std::os::unix::fs::symlink;

#[test]
fn bridge_names() {
    for ok in ["br-fc", "br-fc-1", "br-fc-test", "br-fc-012345678"] {
        assert!(bridge_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "br-fc-",
        "br-f",
        "br-fcx",
        "eth0",
        "docker0",
        "br-fc-0123456789",
        "br-fc-UP",
        "br-fc-a b",
        "br-fc-a/b",
        "br-fc-\n",
        "br-fc-é",
    ] {
        assert!(bridge_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn pool_tap_names() {
    for ok in ["tap-bg-p1", "tap-bg-p0000001", "tap-bg-p9999999"] {
        assert!(pool_tap_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "tap-bg-p",
        "tap-bg-p00000001",
        "tap-bg-0123abcd",
        "tap-bg-pa",
        "tap-bg-p1 ",
        "tap-bg-p-1",
        "eth0",
        "br-fc",
    ] {
        assert!(pool_tap_name(bad).is_err(), "{bad:?}");
    }
    // A pool name is never a VM's tap name (VM ids are hex).
    assert!(!banger_net::tap_name_for("0123456789ab").starts_with(POOL_TAP_PREFIX));
}

#[test]
fn resolver_addrs() {
    for ok in [
        "127.0.0.1",
        "172.30.0.1:42069",
        "127.0.0.1:53",
        "1.2.3.4:1",
        "255.255.255.255:65535",
    ] {
        assert!(resolver_addr(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        " ",
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3.4:0",
        "1.2.3.4:70000",
        "1.2.3.4:65536",
        "1.2.3.4:",
        "1.2.3.4:053",
        "1.2.3.4:+53",
        "1.2.3.4:53:53",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "256.1.1.1",
        "::1",
        "[::1]:53",
        "fd00::1",
        "localhost",
        "localhost:53",
        "dns.example.com",
        "1.2.3.4%br-fc",
        "1.2.3.4#dns.example",
        "1.2.3.4:53;rm -rf /",
        ";rm",
        "1.2.3.4\n",
        "-1.2.3.4",
    ] {
        assert!(resolver_addr(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn tap_names() {
    for ok in ["tap-bg-0123abcd", "tap-bg-a", "tap-bg-x-y"] {
        assert!(tap_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "eth0",
        "tap-bg-",
        "tap0",
        "tap-bg-012345678",
        "tap-bg-ABCD",
        "tap-bg-a_b",
        "tap-bg-a.b",
        "tap-bg-a b",
        "br-fc",
        "xtap-bg-1",
    ] {
        assert!(tap_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn prefixes_and_addresses() {
    for ok in [8, 16, 24, 30, 32] {
        assert!(prefix(ok).is_ok(), "{ok}");
    }
    for bad in [0, 1, 7, 33, 255] {
        assert!(prefix(bad).is_err(), "{bad}");
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    for (a, p) in [
        ("172.30.0.1", 24),
        ("10.0.0.1", 8),
        ("192.168.77.254", 24),
        ("100.64.0.1", 16),
        ("172.30.0.1", 32),
        ("172.30.0.0", 31),
    ] {
        assert!(bridge_address(ip(a), p).is_ok(), "{a}/{p}");
    }
    for (a, p) in [
        ("172.30.0.1", 7),
        ("172.30.0.1", 33),
        ("8.8.8.8", 24),
        ("127.0.0.1", 8),
        ("0.0.0.0", 8),
        ("255.255.255.255", 32),
        ("224.0.0.1", 24),
        ("169.254.1.1", 16),
        ("172.30.0.0", 24),
        ("172.30.0.255", 24),
        ("100.128.0.1", 16),
    ] {
        assert!(bridge_address(ip(a), p).is_err(), "{a}/{p}");
    }
}

#[test]
fn vm_ids() {
    assert!(vm_id("0123456789ab").is_ok());
    assert!(vm_id("abcdefabcdef").is_ok());
    for bad in [
        "",
        "0123456789a",
        "0123456789abc",
        "0123456789AB",
        "0123456789ag",
        "../../../etc",
        "0123456789a/",
        "0123456789a\0",
    ] {
        assert!(vm_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn macs() {
    for ok in ["52:54:00:1e:00:02", "52:54:00:ff:ab:cd"] {
        assert!(mac(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "52:54:00:1E:00:02",
        "52:54:01:1e:00:02",
        "02:54:00:1e:00:02",
        "52:54:00:1e:00",
        "52:54:00:1e:00:02:03",
        "52:54:00:1e-00-02",
        "52:54:00:1e:00:0g",
        "52:54:00:1e:00:2 ",
        "52:54:00:1e:00:02,x=y",
    ] {
        assert!(mac(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cmdlines() {
    assert!(cmdline("").is_ok());
    assert!(cmdline("console=ttyS0 root=/dev/vda rw banger.ip=172.30.0.2/24").is_ok());
    assert!(cmdline(&"a".repeat(MAX_CMDLINE)).is_ok());
    assert!(cmdline(&"a".repeat(MAX_CMDLINE + 1)).is_err());
    for bad in ["a\nb", "a\rb", "a\tb", "a\0b", "é", "a\x7fb", "a\x1bb"] {
        assert!(cmdline(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn signals() {
    for (name, want) in [
        ("TERM", libc::SIGTERM),
        ("term", libc::SIGTERM),
        ("SIGTERM", libc::SIGTERM),
        ("sigkill", libc::SIGKILL),
        ("Int", libc::SIGINT),
        ("HUP", libc::SIGHUP),
        ("QUIT", libc::SIGQUIT),
        ("USR1", libc::SIGUSR1),
        ("SIGUSR2", libc::SIGUSR2),
        ("abrt", libc::SIGABRT),
    ] {
        assert_eq!(signal(name), Ok(want), "{name}");
    }
    for bad in [
        "",
        "SIG",
        "9",
        "15",
        "-9",
        "STOP",
        "SIGSTOP",
        "CONT",
        "RTMIN",
        "SIGRTMIN+1",
        "TSTP",
        "SEGV",
        "SIGSIGTERM",
        " TERM",
        "TERM ",
    ] {
        assert!(signal(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn pids() {
    assert!(pid(0).is_err());
    assert!(pid(1).is_err());
    assert_eq!(pid(2), Ok(2));
    assert!(pid(u32::MAX).is_err());
    assert!(pid(i32::MAX as u32 + 1).is_err());
}

const VM: &str = "0123456789ab";
const OTHER_VM: &str = "ba9876543210";

/// A temp tree with the layout the daemon creates.
struct Tree {
    _dir: tempfile::TempDir,
    roots: Roots,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            state_dir: dir.path().join("state"),
            runtime_dir: dir.path().join("run"),
        };
        for d in [
            roots.vm_state_dir(VM),
            roots.vm_runtime_dir(VM),
            roots.vm_state_dir(OTHER_VM),
            roots.images_dir().join("debian"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(roots.images_dir().join("debian/vmlinuz"), b"k").unwrap();
        std::fs::write(roots.vm_state_dir(VM).join("root.qcow2"), b"r").unwrap();
        Tree { _dir: dir, roots }
    }

    fn config(&self) -> QemuConfig {
        let s = self.roots.vm_state_dir(VM);
        let r = self.roots.vm_runtime_dir(VM);
        QemuConfig {
            vm_id: VM.into(),
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 1024,
            kernel: self.roots.images_dir().join("debian/vmlinuz"),
            initrd: Some(self.roots.images_dir().join("debian/initrd.img")),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
            root_disk: s.join("root.qcow2"),
            work_disk: s.join("work.ext4"),
            work_format: banger_vmm::qemu::DiskFormat::Raw,
            tap: banger_net::tap_name_for(VM),
            mac: "52:54:00:1e:00:02".into(),
            agent_socket: r.join("agent.sock"),
            qmp_socket: r.join("qmp.sock"),
            pidfile: r.join("qemu.pid"),
            console_log: s.join("console.log"),
            vmm_log: Some(s.join("vmm.raw")),
            incoming: false,
        }
    }
}

#[test]
fn good_qemu_config_passes() {
    let t = Tree::new();
    qemu_config(&t.config(), &t.roots).unwrap();
    // Kernel may also live in the VM's own directory; initrd is optional.
    let mut c = t.config();
    c.kernel = t.roots.vm_state_dir(VM).join("vmlinuz");
    c.initrd = None;
    c.accel = Accel::Kvm;
    qemu_config(&c, &t.roots).unwrap();
    // Or in the kernel store (the kernels OCI images boot).
    let mut c = t.config();
    c.kernel = t.roots.kernels_dir().join("debian-6.1/vmlinuz");
    c.initrd = Some(t.roots.kernels_dir().join("debian-6.1/initrd.img"));
    qemu_config(&c, &t.roots).unwrap();
}

fn refused(t: &Tree, f: impl FnOnce(&mut QemuConfig), needle: &str) {
    let mut c = t.config();
    f(&mut c);
    let e = qemu_config(&c, &t.roots).expect_err(needle);
    assert!(e.0.contains(needle), "{e} (wanted {needle:?})");
    assert_eq!(ApiError::from(e).code, banger_api::ErrorCode::BadRequest);
}

#[test]
fn qemu_config_scalars_are_bounded() {
    let t = Tree::new();
    refused(&t, |c| c.vcpus = 0, "vcpus");
    refused(&t, |c| c.vcpus = 65, "vcpus");
    refused(&t, |c| c.memory_mib = 127, "memory");
    refused(&t, |c| c.memory_mib = 262_145, "memory");
    refused(&t, |c| c.vm_id = "../../etc".into(), "vm id");
    refused(&t, |c| c.mac = "52:54:00:AA:00:02".into(), "mac");
    refused(&t, |c| c.tap = "eth0".into(), "tap");
    refused(
        &t,
        |c| c.tap = banger_net::tap_name_for(OTHER_VM),
        "does not belong",
    );
    refused(
        &t,
        |c| c.cmdline = "quiet\ninit=/bin/sh".into(),
        "command line",
    );
    refused(&t, |c| c.cmdline = "x".repeat(2049), "command line");
    // Edges that pass.
    let mut c = t.config();
    c.vcpus = 64;
    c.memory_mib = 128;
    qemu_config(&c, &t.roots).unwrap();
    c.vcpus = 1;
    c.memory_mib = 262_144;
    qemu_config(&c, &t.roots).unwrap();
}

#[test]
fn qemu_config_paths_stay_in_their_trees() {
    let t = Tree::new();
    let s = t.roots.vm_state_dir(VM);
    let r = t.roots.vm_runtime_dir(VM);
    // Outside every root.
    refused(&t, |c| c.kernel = "/boot/vmlinuz".into(), "outside");
    // The state dir itself, or a sibling of the known trees, is not a boot dir.
    refused(
        &t,
        |c| c.kernel = t.roots.state_dir.join("vmlinuz"),
        "outside",
    );
    refused(
        &t,
        |c| c.kernel = t.roots.state_dir.join("kernelsx/k/vmlinuz"),
        "outside",
    );
    refused(&t, |c| c.root_disk = "/etc/shadow".into(), "outside");
    // Relative, `..`, `.`, non-normal.
    refused(
        &t,
        |c| c.root_disk = "state/vms/x/root.qcow2".into(),
        "not absolute",
    );
    refused(
        &t,
        |c| c.root_disk = s.join("../../../../etc/shadow"),
        "'..'",
    );
    refused(&t, |c| c.root_disk = s.join("./root.qcow2"), "normal form");
    refused(
        &t,
        |c| c.root_disk = PathBuf::from(format!("{}//root.qcow2", s.display())),
        "normal form",
    );
    refused(
        &t,
        |c| c.root_disk = PathBuf::from(format!("{}/", s.display())),
        "normal form",
    );
    refused(
        &t,
        |c| c.root_disk = PathBuf::from(format!("{}/a\nb", s.display())),
        "control",
    );
    // The VM directory itself is not a file inside it.
    refused(&t, |c| c.root_disk = s.clone(), "outside");
    // Another VM's directory.
    refused(
        &t,
        |c| c.root_disk = t.roots.vm_state_dir(OTHER_VM).join("root.qcow2"),
        "outside",
    );
    refused(
        &t,
        |c| c.agent_socket = t.roots.vm_runtime_dir(OTHER_VM).join("agent.sock"),
        "outside",
    );
    // Right tree, wrong root: disks never under runtime, sockets never under state.
    refused(&t, |c| c.work_disk = r.join("work.ext4"), "outside");
    refused(&t, |c| c.qmp_socket = s.join("qmp.sock"), "outside");
    refused(
        &t,
        |c| c.console_log = t.roots.images_dir().join("console.log"),
        "outside",
    );
    refused(
        &t,
        |c| c.vmm_log = Some(t.roots.vm_state_dir(OTHER_VM).join("vmm.raw")),
        "outside",
    );
    refused(
        &t,
        |c| c.vmm_log = Some(c.console_log.clone()),
        "must differ",
    );
    // Images are for kernels and initrds only.
    refused(
        &t,
        |c| c.root_disk = t.roots.images_dir().join("debian/rootfs.qcow2"),
        "outside",
    );
    // The pidfile is fixed.
    refused(&t, |c| c.pidfile = r.join("other.pid"), "pidfile must be");
    refused(
        &t,
        |c| c.pidfile = t.roots.pidfile(OTHER_VM),
        "pidfile must be",
    );
    // Sockets must be bindable and distinct.
    refused(&t, |c| c.qmp_socket = c.agent_socket.clone(), "must differ");
    refused(
        &t,
        |c| c.agent_socket = r.join("a".repeat(120)),
        "byte limit",
    );
    // A leaf that exists must be the right kind.
    std::fs::create_dir(s.join("dir.qcow2")).unwrap();
    refused(
        &t,
        |c| c.root_disk = s.join("dir.qcow2"),
        "not a regular file",
    );
    std::fs::create_dir(r.join("sockdir")).unwrap();
    refused(&t, |c| c.qmp_socket = r.join("sockdir"), "is a directory");
}

#[test]
fn symlinks_are_refused_anywhere_below_the_root() {
    let t = Tree::new();
    let s = t.roots.vm_state_dir(VM);
    // Symlink leaf (to a file outside).
    symlink("/etc/shadow", s.join("evil.qcow2")).unwrap();
    refused(&t, |c| c.root_disk = s.join("evil.qcow2"), "symlink");
    // Dangling symlink leaf: QEMU would create the target.
    symlink("/etc/evil", s.join("dangling.log")).unwrap();
    refused(&t, |c| c.console_log = s.join("dangling.log"), "symlink");
    // Symlink intermediate directory inside the VM dir.
    symlink("/etc", s.join("sub")).unwrap();
    refused(&t, |c| c.work_disk = s.join("sub/work.ext4"), "symlink");
    // The VM directory itself replaced by a symlink to another VM's.
    let link_id = "cccccccccccc";
    symlink(
        t.roots.vm_state_dir(OTHER_VM),
        t.roots.state_dir.join("vms").join(link_id),
    )
    .unwrap();
    let mut c = t.config();
    c.vm_id = link_id.into();
    c.tap = banger_net::tap_name_for(link_id);
    c.root_disk = t.roots.vm_state_dir(link_id).join("root.qcow2");
    c.work_disk = t.roots.vm_state_dir(link_id).join("work.ext4");
    c.console_log = t.roots.vm_state_dir(link_id).join("console.log");
    c.agent_socket = t.roots.vm_runtime_dir(link_id).join("agent.sock");
    c.qmp_socket = t.roots.vm_runtime_dir(link_id).join("qmp.sock");
    c.pidfile = t.roots.pidfile(link_id);
    let e = qemu_config(&c, &t.roots).unwrap_err();
    assert!(e.0.contains("symlink"), "{e}");
    // `images` replaced by a symlink.
    let t2 = Tree::new();
    std::fs::rename(
        t2.roots.images_dir(),
        t2.roots.state_dir.join("real-images"),
    )
    .unwrap();
    symlink(
        t2.roots.state_dir.join("real-images"),
        t2.roots.images_dir(),
    )
    .unwrap();
    let e = qemu_config(&t2.config(), &t2.roots).unwrap_err();
    assert!(e.0.contains("symlink"), "{e}");
    // A regular file where a directory should be.
    let t3 = Tree::new();
    std::fs::write(t3.roots.vm_state_dir(VM).join("notdir"), b"").unwrap();
    refused(
        &t3,
        |c| c.work_disk = t3.roots.vm_state_dir(VM).join("notdir/work.ext4"),
        "not a directory",
    );
}

#[test]
fn missing_leaves_and_dirs_are_allowed() {
    let t = Tree::new();
    std::fs::remove_dir_all(t.roots.vm_runtime_dir(VM)).unwrap();
    // Sockets and pidfile (and their directory) do not exist yet: fine.
    qemu_config(&t.config(), &t.roots).unwrap();
}

#[test]
fn chown_targets() {
    let t = Tree::new();
    let s = t.roots.vm_state_dir(VM);
    let r = t.roots.vm_runtime_dir(VM);
    std::fs::write(s.join("console.log"), b"").unwrap();
    std::fs::write(r.join("agent.sock"), b"").unwrap();
    assert_eq!(
        chown_target(&s.join("console.log"), &t.roots).unwrap(),
        t.roots.state_dir
    );
    assert_eq!(
        chown_target(&r.join("agent.sock"), &t.roots).unwrap(),
        t.roots.runtime_dir
    );

    symlink("/etc/passwd", s.join("link")).unwrap();
    symlink("/etc", s.join("dirlink")).unwrap();
    std::fs::write(t.roots.images_dir().join("debian/x"), b"").unwrap();
    for (bad, needle) in [
        (s.join("link"), "symlink"),
        (s.join("dirlink/passwd"), "symlink"),
        (s.join("missing"), "does not exist"),
        (s.clone(), "outside"),
        (s.join("../../../etc/passwd"), "'..'"),
        (PathBuf::from("/etc/passwd"), "outside"),
        (t.roots.images_dir().join("debian/x"), "outside"),
        (
            t.roots.state_dir.join("vms/not-a-vm-id/x"),
            "not inside a VM",
        ),
        (t.roots.state_dir.join("state.db"), "outside"),
        (t.roots.runtime_dir.join("helper.sock"), "outside"),
        (PathBuf::from("relative/vms/0123456789ab/x"), "outside"),
    ] {
        let e = chown_target(&bad, &t.roots).expect_err(&bad.display().to_string());
        assert!(
            e.0.contains(needle),
            "{}: {e} (wanted {needle:?})",
            bad.display()
        );
    }
    std::fs::create_dir(s.join("sub")).unwrap();
    let e = chown_target(&s.join("sub"), &t.roots).unwrap_err();
    assert!(e.0.contains("directory"), "{e}");
}

#[test]
fn nat_guest_addresses() {
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    for ok in [
        "172.30.0.2",
        "172.30.0.254",
        "10.0.0.2",
        "192.168.1.50",
        "172.16.0.1",
        "172.31.255.254",
        "100.64.0.2",
        "100.127.255.254",
    ] {
        assert!(nat_guest(ip(ok)).is_ok(), "{ok}");
    }
    for bad in [
        "0.0.0.0",
        "255.255.255.255",
        "127.0.0.1",
        "127.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "169.254.1.1",
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.2",
        "172.15.255.254",
        "100.128.0.1",
        "100.63.255.255",
        "192.169.0.1",
    ] {
        let e = nat_guest(ip(bad)).expect_err(bad);
        assert!(e.0.contains(bad), "{e}");
    }
}

#[test]
fn nat_requests_reuse_the_id_and_bridge_rules() {
    // EnsureNat/RemoveNat go through the same vm_id and bridge_name checks
    // as every other op: the nft comment is built only from an id that
    // passed vm_id().
    for (id, br) in [("0123456789ab", "br-fc"), ("abcdefabcdef", "br-fc-2")] {
        assert!(vm_id(id).is_ok() && bridge_name(br).is_ok(), "{id} {br}");
    }
    for bad in [
        "0123456789ab\" accept",
        "banger-vm:0123456789ab",
        "0123456789ab ",
        "ABCDEF012345",
        "",
    ] {
        assert!(vm_id(bad).is_err(), "{bad:?}");
    }
    for bad in ["eth0", "docker0", "br-fc\"", "lo", "br-fc-x y", "*"] {
        assert!(bridge_name(bad).is_err(), "{bad:?}");
    }
}
