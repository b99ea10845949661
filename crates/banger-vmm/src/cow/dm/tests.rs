//! The command sequences are pinned with a recording runner: there is no
//! device-mapper on the machines these were written on. The real path runs
//! in `real_dm_snapshot_round_trip` wherever device-mapper exists, and the
//! loop-device half runs for real wherever root can attach loops.

use super::*;
use crate::cow::testutil::*;
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;

const VM: &str = "0123456789ab";
const NAME: &str = "fc-rootfs-0123456789ab";
const DEV: &str = "/dev/mapper/fc-rootfs-0123456789ab";
const BASE: &str = "/state/images/base.ext4";
const COW: &str = "/state/vms/0123456789ab/root.cow";

/// Records every argv and answers from a script keyed on the argv.
struct Fake<F: Fn(&[String]) -> CmdOutput> {
    calls: RefCell<Vec<Vec<String>>>,
    reply: F,
}

impl<F: Fn(&[String]) -> CmdOutput> Fake<F> {
    fn new(reply: F) -> Self {
        Fake {
            calls: RefCell::new(Vec::new()),
            reply,
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().iter().map(|a| a.join(" ")).collect()
    }
}

impl<F: Fn(&[String]) -> CmdOutput> CommandRunner for Fake<F> {
    fn run(&self, argv: &[OsString]) -> io::Result<CmdOutput> {
        let a: Vec<String> = argv
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        self.calls.borrow_mut().push(a.clone());
        Ok((self.reply)(&a))
    }
}

fn ok(stdout: &str) -> CmdOutput {
    CmdOutput {
        code: Some(0),
        stdout: stdout.into(),
        stderr: String::new(),
    }
}

fn fail(code: i32, stderr: &str) -> CmdOutput {
    CmdOutput {
        code: Some(code),
        stdout: String::new(),
        stderr: stderr.into(),
    }
}

/// A host where every step of a create succeeds.
fn healthy(a: &[String]) -> CmdOutput {
    match (a[0].as_str(), a.get(1).map(String::as_str)) {
        ("losetup", Some("--find")) if a.contains(&"--read-only".to_string()) => ok("/dev/loop3\n"),
        ("losetup", Some("--find")) => ok("/dev/loop4\n"),
        ("blockdev", _) => ok("2097152\n"),
        _ => ok(""),
    }
}

fn create(f: &dyn CommandRunner) -> Result<DmSnapshot, CowError> {
    create_snapshot(f, VM, Path::new(BASE), Path::new(COW))
}

const ATTACH_BASE: &str = "losetup --find --show --read-only /state/images/base.ext4";
const ATTACH_COW: &str = "losetup --find --show /state/vms/0123456789ab/root.cow";
const GETSZ: &str = "blockdev --getsz /dev/loop3";
const DETACH_COW: &str = "losetup -d /dev/loop4";
const DETACH_BASE: &str = "losetup -d /dev/loop3";

#[test]
fn create_attaches_base_then_cow_and_tables_them_in_that_order() {
    let f = Fake::new(healthy);
    let snap = create(&f).unwrap();
    assert_eq!(
        snap,
        DmSnapshot {
            name: NAME.into(),
            base_loop: "/dev/loop3".into(),
            cow_loop: "/dev/loop4".into(),
            dev: DEV.into(),
        }
    );
    assert_eq!(
        f.calls(),
        [
            ATTACH_BASE,
            ATTACH_COW,
            GETSZ,
            &format!("dmsetup create {NAME} --table 0 2097152 snapshot /dev/loop3 /dev/loop4 P 8")
        ]
    );
    // The table is one argv element, never split or quoted by a shell.
    assert_eq!(
        f.calls.borrow()[3],
        [
            "dmsetup",
            "create",
            NAME,
            "--table",
            "0 2097152 snapshot /dev/loop3 /dev/loop4 P 8"
        ]
    );
}

#[test]
fn create_failures_detach_cow_then_base() {
    // dmsetup create fails: both loops go, cow first.
    let f = Fake::new(|a: &[String]| {
        if a[0] == "dmsetup" {
            fail(
                1,
                "device-mapper: reload ioctl on fc-rootfs-0123456789ab failed: Invalid argument",
            )
        } else {
            healthy(a)
        }
    });
    let e = create(&f).unwrap_err();
    assert!(e.to_string().contains("Invalid argument"), "{e}");
    let calls = f.calls();
    assert_eq!(calls[calls.len() - 2..], [DETACH_COW, DETACH_BASE]);

    // blockdev prints nonsense: unwound before dmsetup.
    for bad in ["", "0\n", "lots\n"] {
        let f = Fake::new(|a: &[String]| {
            if a[0] == "blockdev" {
                ok(bad)
            } else {
                healthy(a)
            }
        });
        let e = create(&f).unwrap_err();
        assert!(matches!(e, CowError::Output { .. }), "{e}");
        assert_eq!(
            f.calls(),
            [ATTACH_BASE, ATTACH_COW, GETSZ, DETACH_COW, DETACH_BASE]
        );
    }

    // The cow cannot be attached: only the base is detached.
    let f = Fake::new(|a: &[String]| {
        if a.last().unwrap() == COW {
            fail(1, "losetup: /state/vms/0123456789ab/root.cow: failed to set up loop device: No such file or directory")
        } else {
            healthy(a)
        }
    });
    create(&f).unwrap_err();
    assert_eq!(f.calls(), [ATTACH_BASE, ATTACH_COW, DETACH_BASE]);

    // The base cannot be attached: nothing else runs.
    let f = Fake::new(|_: &[String]| fail(1, "losetup: cannot find an unused loop device"));
    let e = create(&f).unwrap_err();
    assert!(e.to_string().contains("unused loop device"), "{e}");
    assert_eq!(f.calls(), [ATTACH_BASE]);

    // losetup printing something that is not a loop device is refused.
    let f = Fake::new(|_: &[String]| ok("/dev/sda\n"));
    assert!(matches!(create(&f).unwrap_err(), CowError::Output { .. }));
    assert_eq!(f.calls(), [ATTACH_BASE]);
}

#[test]
fn a_refusing_check_unwinds_before_anything_writes() {
    let f = Fake::new(healthy);
    let mut seen = None;
    let e = create_snapshot_checked(&f, VM, Path::new(BASE), Path::new(COW), &mut |s| {
        seen = Some(s.clone());
        Err("cow loop serves another file".into())
    })
    .unwrap_err();
    assert!(matches!(e, CowError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("another file"), "{e}");
    let seen = seen.unwrap();
    assert_eq!(
        (seen.base_loop.as_str(), seen.cow_loop.as_str()),
        ("/dev/loop3", "/dev/loop4")
    );
    assert_eq!(
        f.calls(),
        [ATTACH_BASE, ATTACH_COW, DETACH_COW, DETACH_BASE]
    );
}

#[test]
fn a_failed_unwind_is_reported_with_the_cause() {
    let f = Fake::new(|a: &[String]| match a[0].as_str() {
        "dmsetup" => fail(1, "create failed"),
        "losetup" if a[1] == "-d" => {
            fail(1, "losetup: /dev/loop4: detach failed: Permission denied")
        }
        _ => healthy(a),
    });
    let e = create(&f).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CowError::Unwind { .. }), "{e}");
    assert!(
        msg.contains("create failed") && msg.contains("Permission denied"),
        "{msg}"
    );
}

#[test]
fn create_refuses_names_it_would_not_make() {
    let f = Fake::new(healthy);
    for bad in ["", "../x", "a b", "ABC", "x/y", &"a".repeat(65)] {
        let e = create_snapshot(&f, bad, Path::new(BASE), Path::new(COW)).unwrap_err();
        assert!(matches!(e, CowError::Invalid(_)), "{bad:?}: {e}");
    }
    assert!(f.calls().is_empty());
}

fn handle() -> DmSnapshot {
    DmSnapshot {
        name: NAME.into(),
        base_loop: "/dev/loop3".into(),
        cow_loop: "/dev/loop4".into(),
        dev: DEV.into(),
    }
}

#[test]
fn remove_takes_the_target_down_before_its_loops() {
    let f = Fake::new(|_: &[String]| ok(""));
    remove_snapshot(&f, &handle()).unwrap();
    assert_eq!(
        f.calls(),
        [&format!("dmsetup remove {NAME}"), DETACH_COW, DETACH_BASE]
    );

    // Without a name, the device path names the target.
    let f = Fake::new(|_: &[String]| ok(""));
    let h = DmSnapshot {
        name: String::new(),
        ..handle()
    };
    remove_snapshot(&f, &h).unwrap();
    assert_eq!(
        f.calls(),
        [&format!("dmsetup remove {DEV}"), DETACH_COW, DETACH_BASE]
    );

    // Only what the handle has is touched.
    let f = Fake::new(|_: &[String]| ok(""));
    let h = DmSnapshot {
        base_loop: "/dev/loop3".into(),
        ..DmSnapshot::default()
    };
    remove_snapshot(&f, &h).unwrap();
    assert_eq!(f.calls(), [DETACH_BASE]);
    let f = Fake::new(|_: &[String]| ok(""));
    remove_snapshot(&f, &DmSnapshot::default()).unwrap();
    assert!(f.calls().is_empty());
}

#[test]
fn remove_is_idempotent_for_parts_already_gone() {
    for (dm_msg, loop_msg) in [
        (
            "device-mapper: remove ioctl on fc-rootfs-0123456789ab  failed: No such device or address\nCommand failed.",
            "losetup: {}: detach failed: No such device or address",
        ),
        (
            "Device fc-rootfs-0123456789ab not found\nCommand failed.",
            "losetup: {}: failed to use device: No such device",
        ),
    ] {
        let f = Fake::new(|a: &[String]| match a[0].as_str() {
            "dmsetup" => fail(1, dm_msg),
            _ => fail(1, &loop_msg.replace("{}", &a[2])),
        });
        remove_snapshot(&f, &handle()).unwrap();
        assert_eq!(f.calls().len(), 3);
    }
}

#[test]
fn remove_surfaces_everything_else() {
    // A dm driver that is missing altogether also says "No such device":
    // not tolerated, and the loops are left alone.
    let f = Fake::new(|a: &[String]| {
        match a[0].as_str() {
        "dmsetup" => fail(
            1,
            "/dev/mapper/control: open failed: No such device\nFailure to communicate with kernel device-mapper driver.\nCommand failed.",
        ),
        _ => ok(""),
    }
    });
    let e = remove_snapshot(&f, &handle()).unwrap_err();
    assert!(e.to_string().contains("device-mapper driver"), "{e}");
    assert_eq!(f.calls().len(), 1);

    // Another device's "not found" is not ours.
    let f = Fake::new(|_: &[String]| fail(1, "Device fc-rootfs-ffffffffffff not found"));
    remove_snapshot(&f, &handle()).unwrap_err();

    // A loop that will not detach is reported; the other is still tried.
    let f = Fake::new(|a: &[String]| match a.get(2).map(String::as_str) {
        Some("/dev/loop4") => fail(1, "losetup: /dev/loop4: detach failed: Permission denied"),
        _ => ok(""),
    });
    let e = remove_snapshot(&f, &handle()).unwrap_err();
    assert!(e.to_string().contains("Permission denied"), "{e}");
    assert_eq!(f.calls().last().unwrap(), DETACH_BASE);
}

#[test]
fn a_busy_target_is_retried_then_reported() {
    let n = RefCell::new(0);
    let f = Fake::new(|a: &[String]| {
        if a[0] == "dmsetup" {
            *n.borrow_mut() += 1;
            if *n.borrow() == 1 {
                return fail(1, "device-mapper: remove ioctl on fc-rootfs-0123456789ab  failed: Device or resource busy");
            }
        }
        ok("")
    });
    remove_snapshot(&f, &handle()).unwrap();
    assert_eq!(
        f.calls()[..2],
        [
            format!("dmsetup remove {NAME}"),
            format!("dmsetup remove {NAME}")
        ]
    );
    assert_eq!(f.calls().len(), 4);
}

fn fsck_with(open: &'static str, code: i32) -> (Result<FsckOutcome, CowError>, Vec<String>) {
    let f = Fake::new(move |a: &[String]| match a[0].as_str() {
        "dmsetup" => ok(open),
        _ => CmdOutput {
            code: Some(code),
            stdout: "Pass 1: Checking inodes\nroot: ***** FILE SYSTEM WAS MODIFIED *****".into(),
            stderr: String::new(),
        },
    });
    let r = fsck_snapshot(&f, DEV);
    (r, f.calls())
}

#[test]
fn fsck_maps_e2fsck_exit_codes() {
    let (r, calls) = fsck_with("0\n", 0);
    assert_eq!(r.unwrap(), FsckOutcome::Clean);
    assert_eq!(
        calls,
        [
            format!("dmsetup info --columns --noheadings -o open {NAME}"),
            format!("e2fsck -fy {DEV}")
        ]
    );
    for code in [1, 2, 3] {
        assert_eq!(
            fsck_with("0", code).0.unwrap(),
            FsckOutcome::Fixed,
            "{code}"
        );
    }
    for (code, needle) in [
        (4, "errors left uncorrected"),
        (8, "operational error"),
        (12, "errors left uncorrected, operational error"),
        (16, "usage or syntax error"),
        (32, "cancelled"),
        (128, "shared library error"),
    ] {
        let e = fsck_with("0", code).0.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle) && msg.contains(DEV), "{code}: {msg}");
        assert!(msg.contains("FILE SYSTEM WAS MODIFIED"), "{msg}");
    }
}

#[test]
fn fsck_refuses_open_snapshots_and_other_devices() {
    let (r, calls) = fsck_with("1\n", 0);
    assert!(matches!(r.unwrap_err(), CowError::InUse { opens: 1, .. }));
    assert_eq!(calls.len(), 1, "e2fsck must not run: {calls:?}");
    assert!(matches!(
        fsck_with("", 0).0.unwrap_err(),
        CowError::Output { .. }
    ));
    let f = Fake::new(|_: &[String]| ok("0"));
    for bad in [
        "/dev/sda1",
        "/dev/mapper/",
        "/dev/mapper/a/b",
        "fc-rootfs-0123456789ab",
    ] {
        assert!(
            matches!(fsck_snapshot(&f, bad).unwrap_err(), CowError::Invalid(_)),
            "{bad}"
        );
    }
    assert!(f.calls().is_empty());
}

#[test]
fn loop_device_shapes() {
    for good in ["/dev/loop0", "/dev/loop7", "/dev/loop12345"] {
        assert!(is_loop_dev(good), "{good}");
    }
    for bad in [
        "",
        "/dev/loop",
        "/dev/loop1x",
        "/dev/loop01",
        "/dev/loop-1",
        "/dev/loop 1",
        "/dev/sda1",
        "loop1",
        "/dev/loop1/",
        "/dev/loop99999999999",
        "/dev/mapper/loop1",
    ] {
        assert!(!is_loop_dev(bad), "{bad:?}");
    }
}

#[test]
fn handles_serialize_for_the_daemons_handles_file() {
    let s = serde_json::to_string(&handle()).unwrap();
    assert_eq!(
        s,
        r#"{"name":"fc-rootfs-0123456789ab","base_loop":"/dev/loop3","cow_loop":"/dev/loop4","dev":"/dev/mapper/fc-rootfs-0123456789ab"}"#
    );
    assert_eq!(serde_json::from_str::<DmSnapshot>(&s).unwrap(), handle());
    // A handle saved halfway (only the base attached) still loads.
    let partial: DmSnapshot = serde_json::from_str(r#"{"base_loop":"/dev/loop3"}"#).unwrap();
    assert_eq!(partial.base_loop, "/dev/loop3");
    assert!(partial.name.is_empty() && partial.cow_loop.is_empty());
    assert!(serde_json::from_str::<DmSnapshot>(r#"{"name":"x","extra":1}"#).is_err());
}

fn loops_of(file: &Path) -> String {
    sh(&["losetup", "-j", file.to_str().unwrap()]).unwrap_or_default()
}

/// The loop half of a create, for real, where root can attach loops but
/// there is no device-mapper: the check sees the loops serving exactly
/// our files, and the failing `dmsetup create` leaves no loop behind.
#[test]
fn real_loops_attach_verify_and_unwind() {
    if !is_root() {
        eprintln!("SKIPPED: real loop devices need root");
        return;
    }
    if dm_available().is_ok() {
        eprintln!("SKIPPED: device-mapper exists here; real_dm_snapshot_round_trip covers this");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    write_sparse(&base, 4 << 20, &[(0, 4096)]);
    let cow = dir.path().join("cow");
    crate::cow::create_cow_file(&cow, &base).unwrap();
    if let Err(e) = sh(&["losetup", "--find", "--show", base.to_str().unwrap()])
        .and_then(|d| sh(&["losetup", "-d", d.trim()]))
    {
        eprintln!("SKIPPED: loop devices do not work here: {e}");
        return;
    }
    let id = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    };
    let mut checked = false;
    let e = create_snapshot_checked(&SystemRunner, VM, &base, &cow, &mut |s| {
        let b = loop_backing_id(Path::new(&s.base_loop)).unwrap();
        let c = loop_backing_id(Path::new(&s.cow_loop)).unwrap();
        assert_eq!((b, c), (Some(id(&base)), Some(id(&cow))));
        let n = s.base_loop.trim_start_matches("/dev/loop");
        let ro = std::fs::read_to_string(format!("/sys/block/loop{n}/ro")).unwrap();
        assert_eq!(ro.trim(), "1", "the base loop must be read-only");
        checked = true;
        Ok(())
    })
    .unwrap_err();
    assert!(checked);
    assert!(e.to_string().contains("dmsetup create"), "{e}");
    assert_eq!(loops_of(&base), "");
    assert_eq!(loops_of(&cow), "");

    // A refusing check detaches both for real, too.
    let mut handle = DmSnapshot::default();
    let e = create_snapshot_checked(&SystemRunner, VM, &base, &cow, &mut |s| {
        handle = s.clone();
        Err("not ours".into())
    })
    .unwrap_err();
    assert!(matches!(e, CowError::Refused { .. }), "{e}");
    assert_eq!(
        (loops_of(&base), loops_of(&cow)),
        (String::new(), String::new())
    );
    assert_eq!(loop_backing_id(Path::new(&handle.cow_loop)).unwrap(), None);

    // Removing stale loops again is fine (the kernel's own "No such device
    // or address"); a missing dm driver is not "already removed".
    let loops_only = DmSnapshot {
        name: String::new(),
        dev: String::new(),
        ..handle.clone()
    };
    remove_snapshot(&SystemRunner, &loops_only).unwrap();
    let e = remove_snapshot(&SystemRunner, &handle).unwrap_err();
    assert!(e.to_string().contains("dmsetup remove"), "{e}");
}

/// The whole thing, for real, wherever device-mapper exists.
#[test]
fn real_dm_snapshot_round_trip() {
    if let Err(why) = dm_available() {
        eprintln!("SKIPPED: device-mapper not available here: {why}");
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: device-mapper not available here: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.ext4");
    File::create(&base).unwrap().set_len(32 << 20).unwrap();
    sh(&["mkfs.ext4", "-q", "-F", base.to_str().unwrap()]).unwrap();
    let before = std::fs::read(&base).unwrap();
    let cow = dir.path().join("root.cow");
    crate::cow::create_cow_file(&cow, &base).unwrap();
    // A name no other run uses.
    let vm = format!("{:012x}", std::process::id() as u64 * 7919 % (1 << 48));
    let snap = create_snapshot(&SystemRunner, &vm, &base, &cow).unwrap();
    let cleanup = |s: &DmSnapshot| remove_snapshot(&SystemRunner, s);
    let result = std::panic::catch_unwind(|| {
        assert_eq!(snap.dev, DmSnapshot::dev_for(&vm));
        assert_eq!(
            fsck_snapshot(&SystemRunner, &snap.dev).unwrap(),
            FsckOutcome::Clean
        );
        // Write through the snapshot; read it back through the snapshot.
        use std::os::unix::fs::FileExt;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&snap.dev)
            .unwrap();
        let data = pattern(64 << 10, 9);
        dev.write_all_at(&data, 20 << 20).unwrap();
        dev.sync_all().unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_exact_at(&mut back, 20 << 20).unwrap();
        assert!(back == data);
        drop(dev);
        assert!(std::fs::read(&base).unwrap() == before, "the base changed");
        assert!(
            allocated(&cow) >= data.len() as u64,
            "the write did not land in the cow"
        );
    });
    cleanup(&snap).unwrap();
    cleanup(&snap).unwrap(); // idempotent for real
    assert!(!Path::new(&snap.dev).exists(), "{} left behind", snap.dev);
    assert_eq!(loops_of(&base), "");
    assert_eq!(loops_of(&cow), "");
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
