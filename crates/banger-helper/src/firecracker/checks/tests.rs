use super::*;
use banger_vmm::jailer::DriveSpec;
use std::os::unix::fs::{symlink, PermissionsExt};

const VM: &str = "0123456789ab";
const OTHER_VM: &str = "ba9876543210";

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
            roots.vm_state_dir(VM),
            roots.vm_state_dir(OTHER_VM),
            roots.images_dir(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in [
            roots.images_dir().join("vmlinux"),
            roots.images_dir().join("initrd.img"),
            roots.vm_state_dir(VM).join("rootfs.ext4"),
            roots.vm_state_dir(VM).join("work.ext4"),
            roots.vm_state_dir(OTHER_VM).join("rootfs.ext4"),
        ] {
            std::fs::write(f, b"x").unwrap();
        }
        Tree { dir, roots }
    }

    fn spec(&self) -> LaunchSpec {
        let s = self.roots.vm_state_dir(VM);
        LaunchSpec {
            vm_id: VM.into(),
            jailer: true,
            kernel: self.roots.images_dir().join("vmlinux"),
            initrd: Some(self.roots.images_dir().join("initrd.img")),
            drives: vec![
                DriveSpec {
                    id: "rootfs".into(),
                    path: s.join("rootfs.ext4"),
                },
                DriveSpec {
                    id: "work".into(),
                    path: s.join("work.ext4"),
                },
            ],
            log: false,
        }
    }
}

#[test]
fn drive_ids() {
    for ok in ["rootfs", "work", "data_1", "d", &"a".repeat(32)] {
        assert!(drive_id(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "1abc",
        "_x",
        "Rootfs",
        "root fs",
        "a/b",
        "..",
        "a.b",
        "a-b",
        &"a".repeat(33),
        "vmlinux",
        "run",
        "dev",
        "lib",
        "usr",
        "firecracker",
    ] {
        assert!(drive_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_good_spec_passes() {
    let t = Tree::new();
    let drives = launch_spec(&t.spec(), &t.roots).unwrap();
    assert_eq!(drives.len(), 2);
    assert!(drives.iter().all(|d| d.kind == DriveKind::File));
    // A kernel in the VM's own state dir is fine too.
    let mut s = t.spec();
    s.kernel = t.roots.vm_state_dir(VM).join("rootfs.ext4");
    s.initrd = None;
    assert!(launch_spec(&s, &t.roots).is_ok());
}

/// A change that makes a good spec bad.
type Mutation<'a> = Box<dyn Fn(&mut LaunchSpec) + 'a>;

#[test]
fn bad_specs_are_refused_naming_the_field() {
    let t = Tree::new();
    let images = t.roots.images_dir();
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|s| s.vm_id = "../etc".into()), "vm id"),
        (Box::new(|s| s.kernel = "/etc/shadow".into()), "kernel"),
        (
            Box::new(|s| s.kernel = t.roots.state_dir.join("state.db")),
            "kernel",
        ),
        (
            Box::new(|s| s.kernel = images.join("missing")),
            "does not exist",
        ),
        (Box::new(|s| s.kernel = images.clone()), "kernel"),
        (
            Box::new(|s| s.initrd = Some(images.join("../../etc/passwd"))),
            "initrd",
        ),
        (Box::new(|s| s.drives.clear()), "drives"),
        (
            Box::new(|s| {
                let d = s.drives[0].clone();
                s.drives = vec![d; 9];
            }),
            "drives",
        ),
        (Box::new(|s| s.drives[1].id = "rootfs".into()), "used twice"),
        (Box::new(|s| s.drives[0].id = "run".into()), "reserved"),
        (
            Box::new(|s| s.drives[0].path = t.roots.vm_state_dir(OTHER_VM).join("rootfs.ext4")),
            "drive rootfs",
        ),
        (
            Box::new(|s| s.drives[0].path = images.join("vmlinux")),
            "drive rootfs",
        ),
        (
            Box::new(|s| s.drives[0].path = "/dev/sda".into()),
            "/dev/mapper/fc-rootfs-",
        ),
        (
            Box::new(|s| s.drives[0].path = "/dev/mapper/control".into()),
            "/dev/mapper/fc-rootfs-",
        ),
        (
            Box::new(|s| s.drives[0].path = "/dev/mapper/fc-rootfs-../../sda".into()),
            "/dev/mapper/fc-rootfs-",
        ),
        (
            Box::new(|s| s.drives[0].path = "/dev/mapper/fc-rootfs-nope".into()),
            "cannot inspect",
        ),
    ];
    for (mutate, needle) in cases {
        let mut s = t.spec();
        mutate(&mut s);
        let e = launch_spec(&s, &t.roots).unwrap_err();
        assert!(e.0.contains(needle), "{e} (wanted {needle:?})");
    }
}

#[test]
fn symlinks_in_source_paths_are_refused() {
    let t = Tree::new();
    let outside = t.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("vmlinux"), b"x").unwrap();
    // Intermediate component.
    symlink(&outside, t.roots.images_dir().join("sub")).unwrap();
    let mut s = t.spec();
    s.kernel = t.roots.images_dir().join("sub/vmlinux");
    let e = launch_spec(&s, &t.roots).unwrap_err();
    assert!(e.0.contains("symlink"), "{e}");
    // Leaf.
    symlink("/etc/passwd", t.roots.vm_state_dir(VM).join("evil.ext4")).unwrap();
    let mut s = t.spec();
    s.drives[0].path = t.roots.vm_state_dir(VM).join("evil.ext4");
    let e = launch_spec(&s, &t.roots).unwrap_err();
    assert!(e.0.contains("symlink"), "{e}");
}

#[test]
fn a_block_device_that_is_not_dm_is_refused() {
    // Shapes first: only /dev/mapper/fc-rootfs-<[a-z0-9-]>.
    for bad in [
        "/dev/loop0",
        "/dev/mapper/control",
        "/dev/mapper/fc-rootfs-",
        "/dev/mapper/fc-rootfs-A",
    ] {
        let e = dm_device("drive", Path::new(bad)).unwrap_err();
        assert!(e.0.contains(DM_PREFIX), "{bad}: {e}");
    }
    let e = dm_device("drive", Path::new("/dev/mapper/fc-rootfs-banger-missing")).unwrap_err();
    assert!(e.0.contains("cannot inspect"), "{e}");

    // A real block device behind a dm-looking name: its sysfs dm/name
    // does not match, so it is refused.
    let loop0 = Path::new("/dev/loop0");
    let is_blk = std::fs::metadata(loop0).is_ok_and(|m| m.file_type().is_block_device());
    let name = format!("fc-rootfs-bangertest{:08x}", rand::random::<u32>());
    let link = Path::new("/dev/mapper").join(&name);
    if !is_blk || symlink(loop0, &link).is_err() {
        eprintln!(
            "skipping the disguised-device case: needs /dev/loop0 and a writable /dev/mapper"
        );
        return;
    }
    struct Rm<'a>(&'a Path);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _rm = Rm(&link);
    let e = dm_device("drive", &link).unwrap_err();
    assert!(e.0.contains("is not the device-mapper device"), "{e}");
}

fn bin_tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fc = bin.join("firecracker");
    std::fs::write(&fc, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, fc)
}

#[test]
fn root_executables() {
    let (dir, fc) = bin_tree();
    let name = Some(FIRECRACKER_NAME);
    root_executable(&fc, name).unwrap();
    root_executable(&fc, None).unwrap();
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

    let err = |p: &Path, n: Option<&str>| root_executable(p, n).unwrap_err();
    assert!(matches!(
        err(&dir.path().join("bin/./firecracker"), name),
        BinaryError::NotNormal(_)
    ));
    assert!(matches!(
        err(Path::new("firecracker"), name),
        BinaryError::NotNormal(_)
    ));
    let other = dir.path().join("bin/firecracker-v1");
    std::fs::copy(&fc, &other).unwrap();
    assert!(matches!(err(&other, name), BinaryError::WrongName(_)));

    // A symlink as the leaf, and as a directory on the way.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    symlink(&fc, links.join("firecracker")).unwrap();
    assert!(matches!(
        err(&links.join("firecracker"), name),
        BinaryError::Symlink(_)
    ));
    symlink(dir.path().join("bin"), dir.path().join("bindir")).unwrap();
    assert!(matches!(
        err(&dir.path().join("bindir/firecracker"), name),
        BinaryError::Symlink(_)
    ));

    chmod(&fc, 0o775);
    assert!(matches!(err(&fc, name), BinaryError::Writable(_)));
    chmod(&fc, 0o757);
    assert!(matches!(err(&fc, name), BinaryError::Writable(_)));
    chmod(&fc, 0o644);
    assert!(matches!(err(&fc, name), BinaryError::NotExecutable(_)));
    chmod(&fc, 0o755);
    // A directory others may write (without the sticky bit).
    chmod(&dir.path().join("bin"), 0o777);
    assert!(matches!(err(&fc, name), BinaryError::Writable(_)));
    chmod(&dir.path().join("bin"), 0o1777);
    root_executable(&fc, name).unwrap();
    chmod(&dir.path().join("bin"), 0o755);
    assert!(matches!(
        err(&dir.path().join("bin/missing"), None),
        BinaryError::Inspect { .. }
    ));
    assert!(matches!(
        err(&dir.path().join("bin"), None),
        BinaryError::NotExecutable(_)
    ));

    if super::super::fsx::euid() == 0 {
        std::os::unix::fs::chown(&fc, Some(4242), None).unwrap();
        assert!(matches!(err(&fc, name), BinaryError::NotRootOwned(_)));
        std::os::unix::fs::chown(&fc, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path().join("bin"), Some(4242), None).unwrap();
        assert!(matches!(err(&fc, name), BinaryError::NotRootOwned(_)));
    } else {
        eprintln!("skipping the ownership cases: needs root to chown");
    }
}
