//! The dm ops against a recording runner (no device-mapper where these
//! were written), plus the loop half for real where root can attach
//! loops. The sequences themselves are pinned in banger-vmm.

use super::*;
use crate::ops::{execute, Helper, HelperConfig};
use crate::proto::{HelperRequest, HelperResponse};
use banger_api::ErrorCode;
use banger_vmm::cow::CmdOutput;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const VM: &str = "0123456789ab";

/// A file outside the state dir, big enough to be attached to a loop.
fn secret() -> Vec<u8> {
    b"secret\n".repeat(1024)
}

use crate::testutil::is_root;

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
        std::fs::create_dir_all(roots.images_dir()).unwrap();
        std::fs::create_dir_all(roots.vm_state_dir(VM)).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let base = File::create(roots.images_dir().join("base.ext4")).unwrap();
        base.set_len(4 << 20).unwrap();
        cow::create_cow_file(
            &roots.vm_state_dir(VM).join("root.cow"),
            &roots.images_dir().join("base.ext4"),
        )
        .unwrap();
        std::fs::write(dir.path().join("outside/secret"), secret()).unwrap();
        Tree { dir, roots }
    }

    fn base(&self) -> PathBuf {
        self.roots.images_dir().join("base.ext4")
    }

    fn cow(&self) -> PathBuf {
        self.roots.vm_state_dir(VM).join("root.cow")
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("outside/secret")
    }

    /// What a compromised daemon might do between validation and losetup.
    fn swap_cow_for_secret(&self) {
        std::fs::rename(self.cow(), self.cow().with_extension("orig")).unwrap();
        std::os::unix::fs::symlink(self.secret(), self.cow()).unwrap();
    }
}

/// Runs ahead of a command, with its argv.
type Hook<'t> = dyn Fn(&[String]) + 't;

/// Behaves like the real tools on a healthy host with device-mapper: each
/// `losetup --find` picks the next loop and, like losetup, follows
/// symlinks to find the file it serves. `before` runs ahead of every
/// command, so a test can change the tree "between validation and use".
struct FakeHost<'t> {
    calls: RefCell<Vec<String>>,
    serves: RefCell<HashMap<String, (u64, u64)>>,
    before: Box<Hook<'t>>,
    dmsetup: CmdOutput,
}

impl<'t> FakeHost<'t> {
    fn new() -> FakeHost<'t> {
        FakeHost {
            calls: RefCell::new(Vec::new()),
            serves: Default::default(),
            before: Box::new(|_| {}),
            dmsetup: CmdOutput {
                code: Some(0),
                ..CmdOutput::default()
            },
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn loop_id(&self, dev: &Path) -> io::Result<Option<(u64, u64)>> {
        Ok(self.serves.borrow().get(dev.to_str().unwrap()).copied())
    }
}

impl CommandRunner for FakeHost<'_> {
    fn run(&self, argv: &[OsString]) -> io::Result<CmdOutput> {
        let a: Vec<String> = argv
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        (self.before)(&a);
        self.calls.borrow_mut().push(a.join(" "));
        let ok = |out: &str| CmdOutput {
            code: Some(0),
            stdout: out.into(),
            stderr: String::new(),
        };
        Ok(match (a[0].as_str(), a[1].as_str()) {
            ("losetup", "--find") => {
                let mut serves = self.serves.borrow_mut();
                let dev = format!("/dev/loop{}", 3 + serves.len());
                let md = std::fs::metadata(a.last().unwrap())?;
                serves.insert(dev.clone(), (md.dev(), md.ino()));
                ok(&format!("{dev}\n"))
            }
            ("blockdev", _) => ok("8192\n"),
            ("dmsetup", "info") => ok("0\n"),
            ("dmsetup", _) => self.dmsetup.clone(),
            _ => ok(""),
        })
    }
}

fn with_host<T>(fake: &FakeHost<'_>, sys_block: &Path, f: impl FnOnce(&DmHost<'_>) -> T) -> T {
    let loop_id = |p: &Path| fake.loop_id(p);
    let host = DmHost {
        runner: fake,
        sys_block,
        loop_id: &loop_id,
    };
    f(&host)
}

#[test]
fn create_verifies_the_loops_serve_the_validated_files() {
    let t = Tree::new();
    let fake = FakeHost::new();
    let snap = with_host(&fake, Path::new("/nonexistent"), |h| {
        create(h, &t.roots, VM, &t.base(), &t.cow())
    })
    .unwrap();
    assert_eq!(snap.name, "fc-rootfs-0123456789ab");
    assert_eq!(
        (snap.base_loop.as_str(), snap.cow_loop.as_str()),
        ("/dev/loop3", "/dev/loop4")
    );
    assert_eq!(snap.dev, "/dev/mapper/fc-rootfs-0123456789ab");
    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(
        calls[3].ends_with("--table 0 8192 snapshot /dev/loop3 /dev/loop4 P 8"),
        "{calls:?}"
    );
}

#[test]
fn create_refuses_a_path_swapped_after_validation() {
    let t = Tree::new();
    let cow_path = t.cow().display().to_string();
    let mut fake = FakeHost::new();
    fake.before = Box::new(|a: &[String]| {
        if a.last() == Some(&cow_path) && a[0] == "losetup" {
            t.swap_cow_for_secret();
        }
    });
    let e = with_host(&fake, Path::new("/nonexistent"), |h| {
        create(h, &t.roots, VM, &t.base(), &t.cow())
    })
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(e.message.contains("does not serve"), "{e}");
    let calls = fake.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("dmsetup") || c.starts_with("blockdev")),
        "{calls:?}"
    );
    assert_eq!(
        calls[calls.len() - 2..],
        ["losetup -d /dev/loop4", "losetup -d /dev/loop3"]
    );
}

#[test]
fn create_validates_before_running_anything() {
    let t = Tree::new();
    std::os::unix::fs::symlink(t.secret(), t.roots.vm_state_dir(VM).join("link.cow")).unwrap();
    let fake = FakeHost::new();
    for (vm, base, cow) in [
        ("nope", t.base(), t.cow()),
        (VM, PathBuf::from("/etc/passwd"), t.cow()),
        (VM, t.base(), t.roots.vm_state_dir(VM).join("link.cow")),
        (VM, t.base(), PathBuf::from("/dev/loop0")),
    ] {
        let e = with_host(&fake, Path::new("/nonexistent"), |h| {
            create(h, &t.roots, vm, &base, &cow)
        })
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    }
    assert!(fake.calls().is_empty());
}

#[test]
fn remove_checks_the_loops_against_sysfs() {
    let t = Tree::new();
    let sys = t.dir.path().join("sys");
    let attach = |n: u32, file: &Path| {
        let d = sys.join(format!("loop{n}/loop"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("backing_file"), format!("{}\n", file.display())).unwrap();
    };
    attach(3, &t.base());
    attach(4, &t.cow());
    attach(5, &t.secret());
    let handle = DmSnapshot {
        name: "fc-rootfs-0123456789ab".into(),
        base_loop: "/dev/loop3".into(),
        cow_loop: "/dev/loop4".into(),
        dev: "/dev/mapper/fc-rootfs-0123456789ab".into(),
    };
    let fake = FakeHost::new();
    with_host(&fake, &sys, |h| remove(h, &t.roots, &handle)).unwrap();
    assert_eq!(
        fake.calls(),
        [
            "dmsetup remove fc-rootfs-0123456789ab",
            "losetup -d /dev/loop4",
            "losetup -d /dev/loop3"
        ]
    );

    // Someone else's loop: refused before anything runs.
    let fake = FakeHost::new();
    let theirs = DmSnapshot {
        cow_loop: "/dev/loop5".into(),
        ..handle.clone()
    };
    let e = with_host(&fake, &sys, |h| remove(h, &t.roots, &theirs)).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(
        e.message.contains("/dev/loop5") && e.message.contains("secret"),
        "{e}"
    );
    assert!(fake.calls().is_empty());

    // Loops no longer attached: only the target is removed.
    let fake = FakeHost::new();
    let stale = DmSnapshot {
        base_loop: "/dev/loop7".into(),
        cow_loop: "/dev/loop8".into(),
        ..handle.clone()
    };
    with_host(&fake, &sys, |h| remove(h, &t.roots, &stale)).unwrap();
    assert_eq!(fake.calls(), ["dmsetup remove fc-rootfs-0123456789ab"]);

    // A failing dmsetup is an operation failure naming the snapshot.
    let mut fake = FakeHost::new();
    fake.dmsetup = CmdOutput {
        code: Some(1),
        stdout: String::new(),
        stderr: "device-mapper: remove ioctl on fc-rootfs-0123456789ab  failed: Invalid argument"
            .into(),
    };
    let e = with_host(&fake, &sys, |h| remove(h, &t.roots, &handle)).unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationFailed, "{e}");
    assert!(
        e.message.contains("remove snapshot fc-rootfs-0123456789ab"),
        "{e}"
    );
}

#[test]
fn fsck_only_touches_our_snapshots() {
    let fake = FakeHost::new();
    let dev = "/dev/mapper/fc-rootfs-0123456789ab";
    let out = with_host(&fake, Path::new("/nonexistent"), |h| fsck(h, dev)).unwrap();
    assert_eq!(out, FsckOutcome::Clean);
    assert_eq!(fake.calls()[1], format!("e2fsck -fy {dev}"));
    let fake = FakeHost::new();
    for bad in [
        "/dev/sda1",
        "/dev/mapper/root",
        "/dev/mapper/fc-rootfs-../../sda1",
        "/dev/loop0",
    ] {
        let e = with_host(&fake, Path::new("/nonexistent"), |h| fsck(h, bad)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{bad}: {e}");
    }
    assert!(fake.calls().is_empty());
}

fn helper(t: &Tree, privileged: bool) -> Arc<Helper> {
    Helper::new(HelperConfig {
        socket: t.dir.path().join("helper.sock"),
        roots: t.roots.clone(),
        owner_uid: 0,
        owner_gid: 0,
        qemu_bin: PathBuf::from("/nonexistent/qemu"),
        privileged,
        launch_timeout: Duration::from_secs(10),
        firecracker: Default::default(),
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn unprivileged_helper_validates_then_refuses_dm_ops() {
    let t = Tree::new();
    let h = helper(&t, false);
    rt().block_on(async {
        for (req, code) in [
            (
                HelperRequest::CreateDmSnapshot {
                    vm_id: VM.into(),
                    base: t.base(),
                    cow: t.cow(),
                },
                ErrorCode::OperationFailed,
            ),
            (
                HelperRequest::CreateDmSnapshot {
                    vm_id: VM.into(),
                    base: "/dev/sda".into(),
                    cow: t.cow(),
                },
                ErrorCode::BadRequest,
            ),
            (
                HelperRequest::RemoveDmSnapshot {
                    handle: DmSnapshot::default(),
                },
                ErrorCode::OperationFailed,
            ),
            (
                HelperRequest::RemoveDmSnapshot {
                    handle: DmSnapshot {
                        base_loop: "/dev/sda".into(),
                        ..DmSnapshot::default()
                    },
                },
                ErrorCode::BadRequest,
            ),
            (
                HelperRequest::FsckSnapshot {
                    dev: "/dev/mapper/fc-rootfs-0123456789ab".into(),
                },
                ErrorCode::OperationFailed,
            ),
            (
                HelperRequest::FsckSnapshot {
                    dev: "/dev/sda1".into(),
                },
                ErrorCode::BadRequest,
            ),
        ] {
            let name = req.op_name();
            let e = execute(&h, req).await.unwrap_err();
            assert_eq!(e.code, code, "{name}: {e}");
            if code == ErrorCode::OperationFailed {
                assert!(e.message.contains("needs root"), "{e}");
            }
        }
    });
}

fn loops_of(file: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The real tools, through the real op. Without device-mapper the create
/// fails at `dmsetup create` and must leave no loop behind; with it, the
/// snapshot is made and removed. A path swapped between validation and
/// `losetup` is caught by the real loop check.
#[test]
fn real_create_through_the_op() {
    if !is_root() {
        eprintln!("SKIPPED: real dm ops need root");
        return;
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        eprintln!("SKIPPED: losetup is not installed");
        return;
    }
    let t = Tree::new();
    let h = helper(&t, true);
    let req = HelperRequest::CreateDmSnapshot {
        vm_id: VM.into(),
        base: t.base(),
        cow: t.cow(),
    };
    let result = rt().block_on(execute(&h, req));
    match (cow::dm_available(), result) {
        (Err(why), Err(e)) => {
            eprintln!("note: no device-mapper here ({why}); checking the unwind only");
            assert_eq!(e.code, ErrorCode::OperationFailed, "{e}");
            assert!(e.message.contains("dmsetup create"), "{e}");
        }
        (Ok(()), Ok(HelperResponse::DmSnapshot(snap))) => {
            let rm = HelperRequest::RemoveDmSnapshot { handle: snap };
            rt().block_on(execute(&h, rm.clone())).unwrap();
            rt().block_on(execute(&h, rm)).unwrap();
        }
        (dm, r) => panic!("device-mapper {dm:?} but create answered {r:?}"),
    }
    assert_eq!(loops_of(&t.base()), "");
    assert_eq!(loops_of(&t.cow()), "");

    // The swap, for real: losetup follows the planted symlink, the check
    // sees a different inode, and both loops are detached again.
    let cow_path = t.cow().display().to_string();
    let swapping = Swapping {
        inner: SystemRunner,
        trigger: cow_path,
        swap: &|| t.swap_cow_for_secret(),
    };
    let host = DmHost {
        runner: &swapping,
        ..DmHost::system()
    };
    let e = create(&host, &t.roots, VM, &t.base(), &t.cow()).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert!(e.message.contains("does not serve"), "{e}");
    assert_eq!(loops_of(&t.secret()), "");
    assert_eq!(loops_of(&t.base()), "");
    assert!(std::fs::read(t.secret()).unwrap() == secret());
}

/// Runs `swap` just before the command whose last argument is `trigger`.
struct Swapping<'a> {
    inner: SystemRunner,
    trigger: String,
    swap: &'a dyn Fn(),
}

impl CommandRunner for Swapping<'_> {
    fn run(&self, argv: &[OsString]) -> io::Result<CmdOutput> {
        if argv
            .last()
            .is_some_and(|a| a.to_string_lossy() == self.trigger)
        {
            (self.swap)();
        }
        self.inner.run(argv)
    }
}

#[test]
fn wire_format_of_the_dm_ops() {
    let req = HelperRequest::CreateDmSnapshot {
        vm_id: VM.into(),
        base: "/s/images/base.ext4".into(),
        cow: "/s/vms/0123456789ab/root.cow".into(),
    };
    let s = serde_json::to_string(&req).unwrap();
    assert_eq!(
        s,
        r#"{"op":"create_dm_snapshot","vm_id":"0123456789ab","base":"/s/images/base.ext4","cow":"/s/vms/0123456789ab/root.cow"}"#
    );
    assert_eq!(serde_json::from_str::<HelperRequest>(&s).unwrap(), req);
    let snap = DmSnapshot {
        name: "fc-rootfs-0123456789ab".into(),
        base_loop: "/dev/loop3".into(),
        cow_loop: "/dev/loop4".into(),
        dev: "/dev/mapper/fc-rootfs-0123456789ab".into(),
    };
    let s = serde_json::to_string(&HelperResponse::DmSnapshot(snap.clone())).unwrap();
    assert_eq!(
        s,
        r#"{"result":"dm_snapshot","name":"fc-rootfs-0123456789ab","base_loop":"/dev/loop3","cow_loop":"/dev/loop4","dev":"/dev/mapper/fc-rootfs-0123456789ab"}"#
    );
    assert_eq!(
        serde_json::from_str::<HelperResponse>(&s).unwrap(),
        HelperResponse::DmSnapshot(snap)
    );
    let s = serde_json::to_string(&HelperResponse::Fscked {
        outcome: FsckOutcome::Fixed,
    })
    .unwrap();
    assert_eq!(s, r#"{"result":"fscked","outcome":"fixed"}"#);
    for bad in [
        r#"{"op":"fsck_snapshot"}"#,
        r#"{"op":"fsck_snapshot","dev":"/dev/mapper/fc-rootfs-0123456789ab","force":true}"#,
        r#"{"op":"remove_dm_snapshot","handle":{"name":"x","table":"0 1 linear /dev/sda 0"}}"#,
        r#"{"op":"create_dm_snapshot","vm_id":"0123456789ab","base":"/a"}"#,
    ] {
        assert!(serde_json::from_str::<HelperRequest>(bad).is_err(), "{bad}");
    }
}
