use super::*;

fn cfg() -> QemuConfig {
    QemuConfig {
        vm_id: "0123456789ab".into(),
        accel: Accel::Tcg,
        vcpus: 2,
        memory_mib: 1024,
        kernel: "/s/images/default/vmlinuz".into(),
        initrd: Some("/s/images/default/initrd.img".into()),
        cmdline: "console=ttyS0 root=/dev/vda".into(),
        root_disk: "/s/vms/0123456789ab/root.qcow2".into(),
        work_disk: "/s/vms/0123456789ab/work.ext4".into(),
        work_format: DiskFormat::Raw,
        tap: "tap-bg-01234567".into(),
        mac: "52:54:00:12:34:56".into(),
        agent_socket: "/r/vms/0123456789ab/agent.sock".into(),
        qmp_socket: "/r/vms/0123456789ab/qmp.sock".into(),
        pidfile: "/r/vms/0123456789ab/qemu.pid".into(),
        console_log: "/s/vms/0123456789ab/console.raw".into(),
        vmm_log: Some("/s/vms/0123456789ab/vmm.raw".into()),
        incoming: false,
    }
}

fn args(c: &QemuConfig) -> Vec<String> {
    c.args()
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
}

fn value_of<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
    a.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn argv_wires_every_device() {
    let a = args(&cfg());
    assert_eq!(value_of(&a, "-machine"), ["q35,accel=tcg"]);
    assert_eq!(value_of(&a, "-cpu"), ["max"]);
    assert_eq!(value_of(&a, "-smp"), ["2"]);
    assert_eq!(value_of(&a, "-m"), ["1024M"]);
    assert_eq!(value_of(&a, "-append"), ["console=ttyS0 root=/dev/vda"]);
    let drives = value_of(&a, "-drive");
    assert!(drives[0].starts_with("file=/s/vms/0123456789ab/root.qcow2,format=qcow2"));
    assert!(drives[1].starts_with("file=/s/vms/0123456789ab/work.ext4,format=raw"));
    assert_eq!(
        value_of(&a, "-netdev"),
        ["tap,id=net0,ifname=tap-bg-01234567,script=no,downscript=no"]
    );
    assert!(value_of(&a, "-device")
        .contains(&"virtserialport,bus=vser0.0,chardev=agent0,name=banger.agent"));
    assert_eq!(value_of(&a, "-pidfile"), ["/r/vms/0123456789ab/qemu.pid"]);
    assert_eq!(a.last().unwrap(), "-daemonize");
    assert!(a.contains(&"-no-reboot".to_string()));
}

#[test]
fn console_and_vmm_log_go_to_files() {
    let a = args(&cfg());
    assert!(value_of(&a, "-chardev")
        .contains(&"file,id=console0,path=/s/vms/0123456789ab/console.raw,append=on"));
    assert_eq!(value_of(&a, "-serial"), ["chardev:console0"]);
    assert_eq!(value_of(&a, "-D"), ["/s/vms/0123456789ab/vmm.raw"]);
    assert_eq!(value_of(&a, "-msg"), ["timestamp=on"]);
    let mut c = cfg();
    c.vmm_log = None;
    let a = args(&c);
    assert!(value_of(&a, "-D").is_empty() && value_of(&a, "-msg").is_empty());
    // A daemon that sends no vmm_log (an older one) still parses.
    let mut v = serde_json::to_value(cfg()).unwrap();
    v.as_object_mut().unwrap().remove("vmm_log");
    let back: QemuConfig = serde_json::from_value(v).unwrap();
    assert_eq!(back.vmm_log, None);
}

#[test]
fn kvm_uses_host_cpu() {
    let mut c = cfg();
    c.accel = Accel::Kvm;
    let a = args(&c);
    assert_eq!(value_of(&a, "-machine"), ["q35,accel=kvm"]);
    assert_eq!(value_of(&a, "-cpu"), ["host"]);
}

#[test]
fn commas_in_paths_are_escaped() {
    let mut c = cfg();
    c.root_disk = "/s/a,b/root.qcow2".into();
    let a = args(&c);
    assert!(value_of(&a, "-drive")[0].starts_with("file=/s/a,,b/root.qcow2,format"));
}

#[test]
fn cmdline_carries_identity() {
    let line = kernel_cmdline(&GuestIdentity {
        hostname: "box".into(),
        ip: "172.30.0.5".parse().unwrap(),
        prefix: 24,
        gateway: "172.30.0.1".parse().unwrap(),
        dns: None,
        init: None,
    });
    assert!(line.contains("root=/dev/vda"));
    assert!(line.contains("banger.hostname=box"));
    assert!(line.contains("banger.ip=172.30.0.5/24"));
    assert!(line.contains("banger.gw=172.30.0.1"));
    assert!(!line.contains("banger.dns"));
    // The kept console must show the kernel's and systemd's boot messages.
    assert!(!line
        .split(' ')
        .any(|p| p == "quiet" || p.starts_with("loglevel=")));
    assert!(!line.contains("init="));
}

#[test]
fn cmdline_carries_a_plain_init_and_drops_one_that_smuggles_parameters() {
    let id = |init: &str| GuestIdentity {
        hostname: "box".into(),
        ip: "172.30.0.5".parse().unwrap(),
        prefix: 24,
        gateway: "172.30.0.1".parse().unwrap(),
        dns: None,
        init: Some(init.into()),
    };
    let line = kernel_cmdline(&id("/usr/local/bin/banger-agent"));
    assert!(
        line.ends_with(" init=/usr/local/bin/banger-agent"),
        "{line}"
    );
    for bad in [
        "/bin/sh rw single",
        "bin/sh",
        "/x/../sh",
        "/bin/sh\ninit=/y",
    ] {
        let line = kernel_cmdline(&id(bad));
        assert!(!line.contains("init="), "{bad:?}: {line}");
    }
}

#[test]
fn launch_reports_qemu_startup_errors_with_stderr() {
    let qemu = Path::new("/usr/bin/qemu-system-x86_64");
    if !qemu.exists() {
        eprintln!("skipping: qemu not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.kernel = dir.path().join("missing-vmlinuz");
    c.pidfile = dir.path().join("qemu.pid");
    let err = launch(qemu, &c, None, Duration::from_secs(20)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("qemu exited"), "{msg}");
    assert!(!c.pidfile.exists());
}

#[test]
fn launch_of_missing_binary_names_it() {
    let err = launch(
        Path::new("/nonexistent/qemu"),
        &cfg(),
        None,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/qemu"));
}

#[test]
fn overlay_is_small_and_backed_by_the_base() {
    let qemu_img = Path::new("/usr/bin/qemu-img");
    if !qemu_img.exists() {
        eprintln!("skipping: qemu-img not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    std::fs::write(&base, vec![7u8; 4 * 1024 * 1024]).unwrap();
    let overlay = dir.path().join("root.qcow2");
    create_overlay(qemu_img, &base, &overlay).unwrap();
    assert!(std::fs::metadata(&overlay).unwrap().len() < 1024 * 1024);
    let info = Command::new(qemu_img)
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains(&*base.to_string_lossy()), "{text}");
}

#[test]
fn restore_argv_differs_from_a_boot_only_in_per_vm_paths_and_incoming() {
    // A migration stream only loads into the same device set in the same
    // order, so a restore's argv may differ from its template's only in
    // what is per VM (paths, tap, MAC, name) and in `-incoming defer`.
    let template = cfg();
    let mut restore = cfg();
    restore.vm_id = "ba9876543210".into();
    restore.root_disk = "/s/vms/ba9876543210/root.qcow2".into();
    restore.work_disk = "/s/vms/ba9876543210/work.qcow2".into();
    restore.work_format = DiskFormat::Qcow2;
    restore.tap = "tap-bg-ba987654".into();
    restore.mac = "52:54:00:aa:bb:cc".into();
    restore.incoming = true;
    let a = args(&template);
    let b = args(&restore);
    assert_eq!(value_of(&b, "-incoming"), ["defer"]);
    assert!(value_of(&a, "-incoming").is_empty());
    assert_eq!(b.last().unwrap(), "-daemonize");
    let flags = |v: &[String]| -> Vec<String> {
        v.iter().filter(|s| s.starts_with('-')).cloned().collect()
    };
    let mut fa = flags(&a);
    fa.insert(fa.len() - 1, "-incoming".into());
    assert_eq!(fa, flags(&b), "same options in the same order");
    let devices = |v: &[String]| -> Vec<String> {
        value_of(v, "-device")
            .iter()
            .map(|d| d.replace("52:54:00:aa:bb:cc", "52:54:00:12:34:56"))
            .collect()
    };
    assert_eq!(devices(&a), devices(&b), "same devices in the same order");
    assert!(value_of(&a, "-device").contains(&"vmgenid,guid=auto"));
    let drives = value_of(&b, "-drive");
    assert!(drives[1].starts_with("file=/s/vms/ba9876543210/work.qcow2,format=qcow2"));
}

#[test]
fn overlay_over_a_qcow2_base_records_its_format() {
    let qemu_img = Path::new("/usr/bin/qemu-img");
    if !qemu_img.exists() {
        eprintln!("skipping: qemu-img not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    std::fs::write(&base, vec![7u8; 4 * 1024 * 1024]).unwrap();
    let mid = dir.path().join("template.qcow2");
    create_overlay(qemu_img, &base, &mid).unwrap();
    let top = dir.path().join("clone.qcow2");
    create_overlay_of(qemu_img, &mid, DiskFormat::Qcow2, &top).unwrap();
    let info = Command::new(qemu_img)
        .args(["info", "--output=json", "--backing-chain"])
        .arg(&top)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("\"backing-filename-format\": \"qcow2\""),
        "{text}"
    );
    assert!(
        text.contains(&*base.to_string_lossy()),
        "the chain ends at the base: {text}"
    );
}

#[test]
fn overlay_of_missing_base_fails_and_leaves_nothing() {
    let qemu_img = Path::new("/usr/bin/qemu-img");
    if !qemu_img.exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("root.qcow2");
    assert!(create_overlay(qemu_img, &dir.path().join("nope"), &overlay).is_err());
    assert!(!overlay.exists());
}

#[test]
fn dropped_child_keeps_supplementary_groups() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root to change uid");
        return;
    }
    // root's own groups always include gid 0.
    assert!(owner_groups(0, 0).contains(&0));
    let mut cmd = Command::new("id");
    cmd.arg("-G");
    drop_privileges(&mut cmd, 65534, 65534);
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let groups = String::from_utf8_lossy(&out.stdout);
    assert!(groups.split_whitespace().any(|g| g == "65534"), "{groups}");
    assert!(
        !groups.split_whitespace().any(|g| g == "0"),
        "root group must be dropped: {groups}"
    );
}

#[test]
fn template_cmdline_has_no_address() {
    let c = template_cmdline("banger-template", Some("/usr/local/bin/banger-agent"));
    assert!(c.contains("banger.hostname=banger-template"));
    assert!(c.contains("init=/usr/local/bin/banger-agent"));
    assert!(!c.contains("banger.ip="), "{c}");
    assert!(!c.contains("banger.gw="), "{c}");
    assert!(!template_cmdline("t", Some("/x y")).contains("init="));
}
