use super::*;
use std::os::unix::fs::symlink;

const VM: &str = "0123456789ab";
const OTHER: &str = "ba9876543210";

#[test]
fn snapshot_names() {
    assert_eq!(dm_name("fc-rootfs-0123456789ab").unwrap(), VM);
    for bad in [
        "",
        "fc-rootfs-",
        "fc-rootfs",
        "rootfs-0123456789ab",
        "xfc-rootfs-0123456789ab",
        "fc-rootfs-0123456789AB",
        "fc-rootfs-0123456789a",
        "fc-rootfs-0123456789abc",
        "fc-rootfs-../../../etc",
        "fc-rootfs-0123456789ab\n",
        "fc-rootfs-0123456789ab/x",
        "/dev/mapper/fc-rootfs-0123456789ab",
        "control",
    ] {
        let e = dm_name(bad).unwrap_err();
        assert!(e.0.contains("snapshot name"), "{bad:?}: {e}");
    }
}

#[test]
fn snapshot_devices() {
    assert_eq!(dm_dev("/dev/mapper/fc-rootfs-0123456789ab").unwrap(), VM);
    for bad in [
        "",
        "/dev/sda1",
        "/dev/dm-0",
        "/dev/mapper/control",
        "/dev/mapper/",
        "/dev/mapper/fc-rootfs-",
        "/dev/mapper/fc-rootfs-0123456789ab/",
        "/dev/mapper//fc-rootfs-0123456789ab",
        "/dev/mapper/../sda1",
        "/dev/mapper/fc-rootfs-../../sda1",
        "/dev/mapper/other-0123456789ab",
        "/dev/mapperfc-rootfs-0123456789ab",
        "/dev/mapper/fc-rootfs-0123456789AB",
        "dev/mapper/fc-rootfs-0123456789ab",
        "fc-rootfs-0123456789ab",
        "/tmp/mapper/fc-rootfs-0123456789ab",
    ] {
        let e = dm_dev(bad).unwrap_err();
        assert!(e.0.contains("snapshot device"), "{bad:?}: {e}");
    }
}

#[test]
fn loop_devices() {
    assert_eq!(loop_dev("f", "/dev/loop0").unwrap(), 0);
    assert_eq!(loop_dev("f", "/dev/loop12").unwrap(), 12);
    for bad in [
        "",
        "/dev/loop",
        "/dev/loop1x",
        "/dev/loopx",
        "/dev/loop01",
        "/dev/loop-1",
        "/dev/loop 1",
        "/dev/loop1 ",
        "/dev/loop/1",
        "/dev/loop1/",
        "/dev/loop99999999999",
        "/dev/sda1",
        "../dev/loop1",
        "/dev/../dev/loop1",
        "loop1",
        "/dev/loop-control",
    ] {
        let e = loop_dev("cow_loop", bad).unwrap_err();
        assert!(e.0.starts_with("cow_loop:"), "{bad:?}: {e}");
    }
}

struct Tree {
    dir: tempfile::TempDir,
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
            roots.images_dir(),
            roots.vm_state_dir(VM),
            roots.vm_state_dir(OTHER),
            dir.path().join("outside"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in [
            roots.images_dir().join("base.ext4"),
            roots.vm_state_dir(VM).join("root.cow"),
            roots.vm_state_dir(OTHER).join("root.cow"),
            dir.path().join("outside/secret"),
        ] {
            std::fs::write(f, b"x").unwrap();
        }
        Tree { dir, roots }
    }

    fn base(&self) -> PathBuf {
        self.roots.images_dir().join("base.ext4")
    }

    fn cow(&self) -> PathBuf {
        self.roots.vm_state_dir(VM).join("root.cow")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }
}

#[test]
fn create_requests() {
    let t = Tree::new();
    let r = &t.roots;
    create_request(VM, &t.base(), &t.cow(), r).unwrap();

    // Planted symlinks: a directory component, and the leaf itself.
    symlink(t.outside(), r.images_dir().join("linked")).unwrap();
    symlink(
        t.outside().join("secret"),
        r.vm_state_dir(VM).join("link.cow"),
    )
    .unwrap();
    // Not regular files.
    std::fs::create_dir(r.vm_state_dir(VM).join("dir.cow")).unwrap();
    nix::unistd::mkfifo(
        &r.vm_state_dir(VM).join("fifo.cow"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();

    let images = r.images_dir();
    let vmdir = r.vm_state_dir(VM);
    let s = |p: &Path| p.to_path_buf();
    for (vm, base, cow, needle) in [
        ("../x", s(&t.base()), s(&t.cow()), "vm id"),
        ("0123456789AB", s(&t.base()), s(&t.cow()), "vm id"),
        (VM, PathBuf::from("/etc/shadow"), s(&t.cow()), "base"),
        (VM, PathBuf::from("/dev/sda1"), s(&t.cow()), "base"),
        (VM, s(&t.cow()), s(&t.cow()), "outside"),
        (VM, images.join("../images/base.ext4"), s(&t.cow()), "'..'"),
        (VM, images.join("linked/secret"), s(&t.cow()), "symlink"),
        (VM, images.join("missing"), s(&t.cow()), "does not exist"),
        (VM, s(&images), s(&t.cow()), "outside"),
        (VM, s(&t.base()), PathBuf::from("/dev/loop0"), "cow"),
        (VM, s(&t.base()), s(&t.base()), "outside"),
        (
            VM,
            s(&t.base()),
            r.vm_state_dir(OTHER).join("root.cow"),
            "outside",
        ),
        (VM, s(&t.base()), vmdir.join("link.cow"), "symlink"),
        (
            VM,
            s(&t.base()),
            vmdir.join("dir.cow"),
            "not a regular file",
        ),
        (
            VM,
            s(&t.base()),
            vmdir.join("fifo.cow"),
            "not a regular file",
        ),
        (VM, s(&t.base()), vmdir.join("./root.cow"), "cow"),
        (
            VM,
            s(&t.base()),
            PathBuf::from(format!("{}/", t.cow().display())),
            "normal form",
        ),
    ] {
        let e = create_request(vm, &base, &cow, r).unwrap_err();
        assert!(
            e.0.contains(needle),
            "{vm} {} {}: {e} (wanted {needle:?})",
            base.display(),
            cow.display()
        );
    }
}

fn handle() -> DmSnapshot {
    DmSnapshot {
        name: "fc-rootfs-0123456789ab".into(),
        base_loop: "/dev/loop3".into(),
        cow_loop: "/dev/loop4".into(),
        dev: "/dev/mapper/fc-rootfs-0123456789ab".into(),
    }
}

#[test]
fn handle_shapes() {
    assert_eq!(handle_shape(&handle()).unwrap(), Some(VM));
    assert_eq!(handle_shape(&DmSnapshot::default()).unwrap(), None);
    let only_dev = DmSnapshot {
        name: String::new(),
        ..handle()
    };
    assert_eq!(handle_shape(&only_dev).unwrap(), Some(VM));
    let with = |f: fn(&mut DmSnapshot)| {
        let mut h = handle();
        f(&mut h);
        h
    };
    for (h, needle) in [
        (with(|h| h.name = "sda".into()), "snapshot name"),
        (with(|h| h.dev = "/dev/sda1".into()), "snapshot device"),
        (
            with(|h| h.dev = "/dev/mapper/fc-rootfs-ba9876543210".into()),
            "differ",
        ),
        (with(|h| h.base_loop = "/dev/sda1".into()), "base_loop"),
        (with(|h| h.cow_loop = "/dev/loop".into()), "cow_loop"),
        (with(|h| h.cow_loop = "/dev/loop1x".into()), "cow_loop"),
        (with(|h| h.cow_loop = "/dev/loop3".into()), "both"),
    ] {
        let e = handle_shape(&h).unwrap_err();
        assert!(e.0.contains(needle), "{h:?}: {e} (wanted {needle:?})");
    }
}

/// A fake `/sys/block` where loop N serves `file` (None: attached to
/// nothing, the `loop/` directory is absent).
fn sys_block(dir: &Path, loops: &[(u32, Option<&str>)]) -> PathBuf {
    let sys = dir.join("sys-block");
    for (n, file) in loops {
        let d = sys.join(format!("loop{n}"));
        std::fs::create_dir_all(&d).unwrap();
        if let Some(f) = file {
            std::fs::create_dir_all(d.join("loop")).unwrap();
            std::fs::write(d.join("loop/backing_file"), format!("{f}\n")).unwrap();
        }
    }
    sys
}

#[test]
fn removal_only_detaches_loops_serving_our_files() {
    let t = Tree::new();
    let r = &t.roots;
    let base = t.base().display().to_string();
    let cow = t.cow().display().to_string();
    let other_cow = r.vm_state_dir(OTHER).join("root.cow").display().to_string();
    let deleted = format!("{cow} (deleted)");

    let sys = sys_block(t.dir.path(), &[(3, Some(&base)), (4, Some(&cow))]);
    assert_eq!(removal(&handle(), r, &sys).unwrap(), handle());

    // A cow deleted before cleanup still counts as ours.
    let sys = sys_block(
        &t.dir.path().join("d"),
        &[(3, Some(&base)), (4, Some(&deleted))],
    );
    assert_eq!(removal(&handle(), r, &sys).unwrap(), handle());

    // Loops that serve nothing (or do not exist) are left alone.
    let sys = sys_block(&t.dir.path().join("e"), &[(3, None)]);
    let todo = removal(&handle(), r, &sys).unwrap();
    assert_eq!((todo.base_loop.as_str(), todo.cow_loop.as_str()), ("", ""));
    assert_eq!(todo.name, handle().name);

    // Without a vm id, the cow may be any VM's.
    let loops_only = DmSnapshot {
        base_loop: "/dev/loop3".into(),
        cow_loop: "/dev/loop4".into(),
        ..DmSnapshot::default()
    };
    let sys = sys_block(
        &t.dir.path().join("f"),
        &[(3, Some(&base)), (4, Some(&other_cow))],
    );
    assert_eq!(removal(&loops_only, r, &sys).unwrap(), loops_only);

    let secret = t.outside().join("secret").display().to_string();
    let climbing = format!("{}/images/../../outside/secret", r.state_dir.display());
    for (i, (b, c, needle)) in [
        (
            Some("/home/someone/disk.img"),
            Some(cow.as_str()),
            "base_loop",
        ),
        (Some(secret.as_str()), Some(cow.as_str()), "base_loop"),
        (Some(cow.as_str()), Some(cow.as_str()), "base_loop"),
        (Some(climbing.as_str()), Some(cow.as_str()), "base_loop"),
        (Some(base.as_str()), Some(base.as_str()), "cow_loop"),
        (Some(base.as_str()), Some(other_cow.as_str()), "cow_loop"),
        (Some(base.as_str()), Some("relative/root.cow"), "cow_loop"),
    ]
    .into_iter()
    .enumerate()
    {
        let sys = sys_block(&t.dir.path().join(format!("bad{i}")), &[(3, b), (4, c)]);
        let e = removal(&handle(), r, &sys).unwrap_err();
        assert!(
            e.0.starts_with(needle) && e.0.contains("not under"),
            "{b:?} {c:?}: {e}"
        );
    }
}

#[test]
fn removal_sees_through_a_symlinked_state_dir() {
    // The admin may configure the state dir through a symlink; the kernel
    // reports resolved paths.
    let t = Tree::new();
    let link = t.dir.path().join("state-link");
    symlink(&t.roots.state_dir, &link).unwrap();
    let roots = Roots {
        state_dir: link,
        runtime_dir: t.roots.runtime_dir.clone(),
    };
    let real_base = t.base().canonicalize().unwrap().display().to_string();
    let real_cow = t.cow().canonicalize().unwrap().display().to_string();
    let sys = sys_block(t.dir.path(), &[(3, Some(&real_base)), (4, Some(&real_cow))]);
    assert_eq!(removal(&handle(), &roots, &sys).unwrap(), handle());
}
