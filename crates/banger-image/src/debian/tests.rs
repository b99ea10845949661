use super::*;

fn fake_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["boot", "etc/ssh", "root", "var/lib/dbus"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("boot/vmlinuz-6.1.0-9-amd64"), b"kernel").unwrap();
    std::fs::write(tree.join("boot/initrd.img-6.1.0-9-amd64"), b"initrd").unwrap();
    std::fs::write(tree.join("etc/ssh/ssh_host_ed25519_key"), b"secret").unwrap();
    std::fs::write(tree.join("etc/ssh/sshd_config"), b"# keep").unwrap();
    std::fs::write(tree.join("etc/machine-id"), b"0123").unwrap();
    std::fs::write(tree.join("root/.bashrc"), b"# bashrc").unwrap();
    tree
}

#[test]
fn customize_installs_agent_and_strips_per_host_identity() {
    let dir = tempfile::tempdir().unwrap();
    let tree = fake_tree(dir.path());
    let agent = dir.path().join("agent");
    std::fs::write(&agent, b"\x7fELF").unwrap();
    customize_tree(&tree, &agent).unwrap();

    let bin = tree.join("usr/local/bin/banger-agent");
    assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF");
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let wants = tree.join("etc/systemd/system/multi-user.target.wants/banger-agent.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        PathBuf::from("/etc/systemd/system/banger-agent.service")
    );
    assert_eq!(
        std::fs::read_link(tree.join("etc/systemd/system/apt-daily.timer")).unwrap(),
        PathBuf::from("/dev/null")
    );
    assert!(!tree.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(tree.join("etc/ssh/sshd_config").exists());
    // The per-VM host key on the work disk is offered first.
    let sshd = std::fs::read_to_string(tree.join("etc/ssh/sshd_config.d/banger.conf")).unwrap();
    let keys: Vec<&str> = sshd.lines().filter(|l| l.starts_with("HostKey ")).collect();
    assert_eq!(
        keys,
        [
            "HostKey /root/.banger/ssh_host_ed25519_key",
            "HostKey /etc/ssh/ssh_host_ed25519_key"
        ]
    );
    assert_eq!(std::fs::read(tree.join("etc/machine-id")).unwrap(), b"");
    let fstab = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
    assert!(fstab.contains("/dev/vdb /root ext4"));
    // Regression: with `nofail` the agent could answer before /root was
    // mounted, and files written to /root vanished under the mount.
    assert!(!fstab.contains("nofail"), "{fstab}");
    assert!(AGENT_UNIT.contains("RequiresMountsFor=/root"));
    // Regression: the agent started before sshd, so `vm create` could
    // return before sshd listened and an ssh right after was refused.
    assert!(
        AGENT_UNIT.contains("\nAfter=ssh.service sshd.service\n"),
        "{AGENT_UNIT}"
    );
    assert!(!AGENT_UNIT.contains("Before=network-online.target ssh.service"));
    // Idempotent: a second run over the same tree succeeds.
    customize_tree(&tree, &agent).unwrap();
}

#[test]
fn kernel_and_seed_are_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let tree = fake_tree(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    assert_eq!(extract_kernel(&tree, &out).unwrap(), "6.1.0-9-amd64");
    assert_eq!(std::fs::read(out.join("vmlinuz")).unwrap(), b"kernel");
    assert_eq!(std::fs::read(out.join("initrd.img")).unwrap(), b"initrd");
    make_work_seed(&tree, &out.join("seed")).unwrap();
    assert!(out.join("seed/.bashrc").exists());
    assert!(out.join("seed/.hushlogin").exists());
}

#[test]
fn missing_kernel_says_which_package() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("boot")).unwrap();
    let e = extract_kernel(dir.path(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux-image-amd64"), "{e}");
}

#[test]
fn build_hash_follows_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, b"v1").unwrap();
    let b = DebianBuild::new(agent.clone());
    let h1 = b.build_hash().unwrap();
    assert_eq!(h1, b.build_hash().unwrap(), "deterministic");
    std::fs::write(&agent, b"v2").unwrap();
    let h2 = b.build_hash().unwrap();
    assert_ne!(h1, h2, "agent change must change the hash");
    let mut b2 = b.clone();
    b2.packages.push("vim".into());
    assert_ne!(
        h2,
        b2.build_hash().unwrap(),
        "package change must change the hash"
    );
}

#[test]
fn failed_build_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent");
    std::fs::write(&agent, b"v1").unwrap();
    let mut b = DebianBuild::new(agent);
    // An unreachable mirror (a closed local port) makes mmdebstrap fail fast,
    // or, without mmdebstrap installed, the spawn fails: both are errors.
    b.mirror = "http://127.0.0.1:9/debian".into();
    let images = dir.path().join("images");
    let err = b.build("x", &images, &mut |_| {});
    assert!(err.is_err());
    let left: Vec<_> = std::fs::read_dir(&images).unwrap().collect();
    assert!(left.is_empty(), "build dir must be removed, found {left:?}");
}

#[test]
fn initramfs_loads_the_drivers_a_root_without_modules_needs() {
    let dir = tempfile::tempdir().unwrap();
    write_initramfs_config(dir.path()).unwrap();
    let listed = std::fs::read_to_string(
        dir.path()
            .join("usr/share/initramfs-tools/modules.d/banger"),
    )
    .unwrap();
    let modules: Vec<&str> = listed.lines().collect();
    // Disks and root filesystem, then what an OCI root (no /lib/modules)
    // needs from the initramfs: network, virtio-serial and vsock.
    for m in [
        "virtio_pci",
        "virtio_mmio",
        "virtio_blk",
        "ext4",
        "virtio_net",
        "virtio_console",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(modules.contains(&m), "{m} missing from {modules:?}");
    }
    assert!(modules
        .iter()
        .all(|m| !m.trim().is_empty() && *m == m.trim()));
    let conf =
        std::fs::read_to_string(dir.path().join("etc/initramfs-tools/conf.d/banger")).unwrap();
    assert!(conf.contains("MODULES=list\n"), "{conf}");
}
