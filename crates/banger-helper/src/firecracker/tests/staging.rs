//! Chroot staging and removal: real bind mounts, hard links, a tmpfs for
//! the cross-device case, planted symlinks.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// The mount options (`ro`/`rw`...) of the mount at `path`, per mountinfo.
fn mount_opts(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (fsx::parse_mount_points(l).first().map(PathBuf::as_path) == Some(path))
            .then(|| f[5].to_string())
    })
}

fn mount_tmpfs(at: &Path) {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(at).unwrap();
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=4m,mode=0755"),
    )
    .unwrap();
}

fn checked(env: &Env, spec: &LaunchSpec) -> Vec<checks::CheckedDrive> {
    checks::launch_spec(spec, env.roots()).unwrap()
}

#[test]
fn stage_mounts_and_links_then_removal_leaves_nothing() {
    if skip_unless_root("stage_mounts_and_links_then_removal_leaves_nothing") {
        return;
    }
    let env = Env::new();
    let spec = env.spec(true);
    stage::stage(env.roots(), &spec, &checked(&env, &spec), OWNER).unwrap();
    let l = env.layout();
    let chroot = l.chroot(&env.vm);

    // The chroot is a mount of its own; the library dirs are read-only binds.
    let mounts = env.mounts();
    assert!(mounts.contains(&chroot), "{mounts:?}");
    let opts = mount_opts(&chroot).unwrap();
    let has = |o: &str| opts.split(',').any(|x| x == o);
    assert!(
        has("rw") && has("nosuid") && !has("nodev") && !has("noexec"),
        "{opts}"
    );
    for lib in stage::HOST_LIB_DIRS {
        if Path::new(lib).is_dir() {
            let at = chroot.join(&lib[1..]);
            assert!(mounts.contains(&at), "{at:?} not in {mounts:?}");
            let opts = mount_opts(&at).unwrap();
            assert!(opts.split(',').any(|o| o == "ro"), "{at:?}: {opts}");
        }
    }
    let e = std::fs::write(chroot.join("usr/lib/banger-test-write"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    // Hard links, not copies: same inode as the originals.
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let images = env.roots().images_dir();
    let vm_state = env.roots().vm_state_dir(&env.vm);
    assert_eq!(ino(&chroot.join("vmlinux")), ino(&images.join("vmlinux")));
    assert_eq!(
        ino(&chroot.join("initrd.img")),
        ino(&images.join("initrd.img"))
    );
    assert_eq!(
        ino(&chroot.join("rootfs")),
        ino(&vm_state.join("rootfs.ext4"))
    );
    assert_eq!(ino(&chroot.join("work")), ino(&vm_state.join("work.ext4")));
    // jailer copies the binary in itself.
    assert!(!chroot.join("firecracker").exists());

    // Ownership and modes.
    let md = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    for d in [l.base().to_path_buf(), l.vm_dir(&env.vm), chroot.clone()] {
        let m = md(&d);
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, OWNER.1, 0o750),
            "{d:?}"
        );
    }
    let run = md(&chroot.join("run"));
    assert_eq!(
        (run.uid(), run.gid(), run.mode() & 0o7777),
        (OWNER.0, OWNER.1, 0o700)
    );
    let log = md(&chroot.join("firecracker.log"));
    assert!(log.is_file());
    assert_eq!((log.uid(), log.mode() & 0o7777), (OWNER.0, 0o600));

    // Removal: nothing mounted, nothing on disk, the originals intact.
    stage::remove_chroot(env.roots(), &env.vm).unwrap();
    assert_eq!(env.mounts(), Vec::<PathBuf>::new());
    assert!(!l.vm_dir(&env.vm).exists());
    assert_eq!(
        std::fs::metadata(images.join("vmlinux")).unwrap().nlink(),
        1
    );
    assert_eq!(
        std::fs::read(vm_state.join("rootfs.ext4")).unwrap(),
        b"disk"
    );
    // Idempotent.
    stage::remove_chroot(env.roots(), &env.vm).unwrap();
    // Staging again works (nothing left over).
    stage::stage(env.roots(), &spec, &checked(&env, &spec), OWNER).unwrap();
    stage::remove_chroot(env.roots(), &env.vm).unwrap();
    assert_eq!(env.mounts(), Vec::<PathBuf>::new());
}

#[test]
fn kernel_is_copied_across_filesystems_drives_are_not() {
    if skip_unless_root("kernel_is_copied_across_filesystems_drives_are_not") {
        return;
    }
    let env = Env::new();
    let images = env.roots().images_dir();
    mount_tmpfs(&images);
    for (f, text) in [("vmlinux", "kernel on tmpfs"), ("initrd.img", "initrd")] {
        let p = images.join(f);
        std::fs::write(&p, text).unwrap();
        std::os::unix::fs::chown(&p, Some(OWNER.0), Some(OWNER.1)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let spec = env.spec(true);
    stage::stage(env.roots(), &spec, &checked(&env, &spec), OWNER).unwrap();
    let chroot = env.layout().chroot(&env.vm);
    let k = std::fs::metadata(chroot.join("vmlinux")).unwrap();
    assert_eq!(k.nlink(), 1, "a copy, not a link");
    assert_ne!(
        k.ino(),
        std::fs::metadata(images.join("vmlinux")).unwrap().ino()
    );
    // The copy keeps the source's owner and mode: root grants nothing new.
    assert_eq!(
        (k.uid(), k.gid(), k.mode() & 0o7777),
        (OWNER.0, OWNER.1, 0o640)
    );
    assert_eq!(
        std::fs::read(chroot.join("vmlinux")).unwrap(),
        b"kernel on tmpfs"
    );
    assert_eq!(std::fs::read(chroot.join("initrd.img")).unwrap(), b"initrd");
    stage::remove_chroot(env.roots(), &env.vm).unwrap();

    // A drive on another filesystem is refused, and removal cleans up.
    let disks = env.roots().vm_state_dir(&env.vm).join("disks");
    mount_tmpfs(&disks);
    std::fs::write(disks.join("rootfs.ext4"), b"disk").unwrap();
    let mut spec = env.spec(true);
    spec.drives[0].path = disks.join("rootfs.ext4");
    let e = stage::stage(env.roots(), &spec, &checked(&env, &spec), OWNER).unwrap_err();
    assert!(e.to_string().contains("another filesystem"), "{e}");
    assert!(e.to_string().contains("rootfs.ext4"), "{e}");
    stage::remove_chroot(env.roots(), &env.vm).unwrap();
    let left = fsx::mounts_under(&fsx::mount_points().unwrap(), env.layout().base());
    assert!(left.is_empty(), "{left:?}");
    assert!(!env.layout().vm_dir(&env.vm).exists());
}

#[test]
fn symlinks_on_the_way_to_the_chroot_are_refused() {
    if skip_unless_root("symlinks_on_the_way_to_the_chroot_are_refused") {
        return;
    }
    let env = Env::new();
    let roots = env.roots().clone();
    let l = env.layout();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    let untouched = |outside: &Path| {
        let names: Vec<_> = std::fs::read_dir(outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep"], "something was created outside");
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep");
        let m = fsx::mounts_under(&fsx::mount_points().unwrap(), outside);
        assert!(m.is_empty(), "{m:?}");
    };
    let spec = env.spec(true);
    let drives = checked(&env, &spec);

    // <state>/jailer itself a symlink.
    std::os::unix::fs::symlink(&outside, l.base()).unwrap();
    let e = cleanup(&roots, &env.vm).unwrap_err();
    assert_eq!(e.code, banger_api::ErrorCode::BadRequest, "{e:?}");
    assert!(e.message.contains("symlink"), "{e:?}");
    let e = stage::stage(&roots, &spec, &drives, OWNER).unwrap_err();
    assert!(matches!(e, fsx::FsError::NotADir(_)), "{e}");
    untouched(&outside);
    std::fs::remove_file(l.base()).unwrap();

    // <base>/firecracker, then <base>/firecracker/<vm>, then the chroot.
    std::fs::create_dir(l.base()).unwrap();
    for (link, parent) in [
        (l.exec_dir(), None),
        (l.vm_dir(&env.vm), Some(l.exec_dir())),
        (l.chroot(&env.vm), Some(l.vm_dir(&env.vm))),
    ] {
        if let Some(p) = parent {
            std::fs::create_dir_all(p).unwrap();
        }
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let e = cleanup(&roots, &env.vm).unwrap_err();
        assert_eq!(e.code, banger_api::ErrorCode::BadRequest, "{link:?}: {e:?}");
        assert!(
            stage::stage(&roots, &spec, &drives, OWNER).is_err(),
            "{link:?}"
        );
        untouched(&outside);
        std::fs::remove_file(&link).unwrap();
    }
    // With the links gone, the leftovers are ordinary and go away.
    cleanup(&roots, &env.vm).unwrap();
    assert!(!l.vm_dir(&env.vm).exists());
}

#[test]
fn socket_links_point_into_the_chroot_and_replace_stale_entries() {
    if skip_unless_root("socket_links_point_into_the_chroot_and_replace_stale_entries") {
        return;
    }
    let env = Env::new();
    let rt = env.roots().vm_runtime_dir(&env.vm);
    std::fs::write(rt.join("fc.sock"), b"stale").unwrap();
    stage::link_sockets(env.roots(), &env.vm).unwrap();
    let l = env.layout();
    assert_eq!(
        std::fs::read_link(rt.join("fc.sock")).unwrap(),
        l.api_socket(&env.vm)
    );
    assert_eq!(
        std::fs::read_link(rt.join("vsock.sock")).unwrap(),
        l.vsock(&env.vm)
    );
    stage::remove_runtime_entries(env.roots(), &env.vm).unwrap();
    assert!(!rt.join("fc.sock").exists() && !rt.join("vsock.sock").exists());
    // A directory in the way is not removed.
    std::fs::create_dir(rt.join("fc.sock")).unwrap();
    assert!(stage::link_sockets(env.roots(), &env.vm).is_err());
    assert!(rt.join("fc.sock").is_dir());
}

#[test]
fn block_device_drives_are_recreated_for_the_owner() {
    if skip_unless_root("block_device_drives_are_recreated_for_the_owner") {
        return;
    }
    // No device-mapper here, so the drive is given as already checked, with
    // the device number of a real block device (never opened).
    let Ok(md) = std::fs::metadata("/dev/loop0") else {
        eprintln!("skipping: no /dev/loop0 to borrow a device number from");
        return;
    };
    let env = Env::new();
    let spec = env.spec(true);
    let mut drives = checked(&env, &spec);
    drives[0].kind = checks::DriveKind::Block { rdev: md.rdev() };
    stage::stage(env.roots(), &spec, &drives, OWNER).unwrap();
    let node = env.layout().chroot(&env.vm).join("rootfs");
    let n = std::fs::symlink_metadata(&node).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(n.file_type().is_block_device());
    assert_eq!(n.rdev(), md.rdev());
    assert_eq!(
        (n.uid(), n.gid(), n.mode() & 0o7777),
        (OWNER.0, OWNER.1, 0o600)
    );
    stage::remove_chroot(env.roots(), &env.vm).unwrap();
    assert!(!node.exists());
    assert!(std::fs::metadata("/dev/loop0").is_ok());
}

#[test]
fn chroot_allows_dev_and_exec_on_a_nodev_noexec_state_fs() {
    if skip_unless_root("chroot_allows_dev_and_exec_on_a_nodev_noexec_state_fs") {
        return;
    }
    use nix::mount::{mount, MsFlags};
    let env = Env::new();
    let mut roots = env.roots().clone();
    roots.state_dir = env.dir.path().join("nstate");
    std::fs::create_dir(&roots.state_dir).unwrap();
    let strict = MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID;
    mount(
        Some("tmpfs"),
        &roots.state_dir,
        Some("tmpfs"),
        strict,
        Some("size=4m,mode=0755"),
    )
    .unwrap();
    std::fs::create_dir_all(roots.vm_state_dir(&env.vm)).unwrap();
    std::fs::create_dir_all(roots.images_dir()).unwrap();
    std::fs::write(roots.images_dir().join("vmlinux"), b"k").unwrap();
    std::fs::write(roots.vm_state_dir(&env.vm).join("rootfs.ext4"), b"d").unwrap();
    let spec = LaunchSpec {
        vm_id: env.vm.clone(),
        jailer: true,
        kernel: roots.images_dir().join("vmlinux"),
        initrd: None,
        drives: vec![DriveSpec {
            id: "rootfs".into(),
            path: roots.vm_state_dir(&env.vm).join("rootfs.ext4"),
        }],
        log: false,
    };
    let drives = checks::launch_spec(&spec, &roots).unwrap();
    stage::stage(&roots, &spec, &drives, OWNER).unwrap();
    let chroot = JailerLayout::new(&roots.state_dir).chroot(&env.vm);
    let opts = mount_opts(&chroot).unwrap();
    let has = |o: &str| opts.split(',').any(|x| x == o);
    assert!(has("nosuid") && !has("nodev") && !has("noexec"), "{opts}");
    stage::remove_chroot(&roots, &env.vm).unwrap();
    let left = fsx::mounts_under(&fsx::mount_points().unwrap(), &chroot);
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cleanup_without_any_tree_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let roots = Roots {
        state_dir: dir.path().join("no-state"),
        runtime_dir: dir.path().join("no-run"),
    };
    let vm = vm_id();
    cleanup(&roots, &vm).unwrap();
    stage::remove_chroot(&roots, &vm).unwrap();
    stage::remove_runtime_entries(&roots, &vm).unwrap();
    assert!(!roots.state_dir.exists() && !roots.runtime_dir.exists());
}
