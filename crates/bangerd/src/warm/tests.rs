use super::*;

fn inputs() -> Inputs {
    Inputs {
        format: FORMAT,
        image: "debian-bookworm".into(),
        image_id: "aa".into(),
        agent: "bb".into(),
        vmm: "qemu".into(),
        vmm_version: "QEMU emulator version 10.0.2".into(),
        accel: "tcg".into(),
        vcpus: 2,
        memory_mib: 1024,
        work_disk_mib: 8192,
    }
}

#[test]
fn the_id_follows_every_input() {
    let base = inputs();
    assert_eq!(base.id(), inputs().id(), "deterministic");
    assert_eq!(base.id().len(), 16);
    type Change = Box<dyn Fn(&mut Inputs)>;
    let changes: Vec<Change> = vec![
        Box::new(|i| i.format += 1),
        Box::new(|i| i.image = "other".into()),
        Box::new(|i| i.image_id = "ab".into()),
        Box::new(|i| i.agent = "bc".into()),
        Box::new(|i| i.vmm_version = "QEMU emulator version 10.1.0".into()),
        Box::new(|i| i.accel = "kvm".into()),
        Box::new(|i| i.vcpus = 4),
        Box::new(|i| i.memory_mib = 2048),
        Box::new(|i| i.work_disk_mib = 4096),
    ];
    for (n, change) in changes.iter().enumerate() {
        let mut i = inputs();
        change(&mut i);
        assert_ne!(i.id(), base.id(), "change {n} must give a new id");
    }
}

#[test]
fn a_stale_snapshot_says_what_changed() {
    let old = inputs();
    let mut new = inputs();
    new.image_id = "cc".into();
    assert!(new.same_shape(&old));
    assert_eq!(new.changed_since(&old), "the image changed");
    new.agent = "dd".into();
    assert_eq!(
        new.changed_since(&old),
        "the image and the guest agent changed"
    );
    let mut q = inputs();
    q.vmm_version = "QEMU emulator version 11".into();
    assert_eq!(q.changed_since(&old), "the VMM version changed");
    let mut other_shape = inputs();
    other_shape.vcpus = 4;
    assert!(!other_shape.same_shape(&old));
}

/// An image of small real files (image_id stats them).
fn image(dir: &Path) -> Image {
    std::fs::write(dir.join("rootfs.ext4"), b"root").unwrap();
    std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    crate::testutil::image(dir, "img", "h1")
}

#[test]
fn the_image_id_changes_with_its_files_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let a = image_id(&img).unwrap();
    assert_eq!(a, image_id(&img).unwrap(), "deterministic");

    // A rootfs replaced by a rebuild (new inode) or edited in place.
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::write(dir.path().join("new"), b"root").unwrap();
    std::fs::rename(dir.path().join("new"), &rootfs).unwrap();
    let b = image_id(&img).unwrap();
    assert_ne!(a, b, "a replaced rootfs");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&rootfs, b"root2").unwrap();
    let c = image_id(&img).unwrap();
    assert_ne!(b, c, "an edited rootfs");

    // The kernel, and the manifest (a forced rebuild with the same recipe
    // has the same build hash but a new created_at).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(dir.path().join("vmlinuz"), b"kernel2").unwrap();
    let e = image_id(&img).unwrap();
    assert_ne!(c, e, "a new kernel");
    let mut img2 = img.clone();
    img2.manifest.created_at = 2;
    assert_ne!(image_id(&img2).unwrap(), e, "a rebuilt image");

    std::fs::remove_file(&rootfs).unwrap();
    assert!(image_id(&img).unwrap_err().contains("rootfs.ext4"));
}

#[test]
fn the_agent_hash_is_cached_but_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("banger-agent");
    std::fs::write(&agent, b"v1").unwrap();
    let a = file_sha256(&agent).unwrap();
    assert_eq!(a, hex::encode(Sha256::digest(b"v1")));
    std::fs::write(&agent, b"v2-longer").unwrap();
    assert_eq!(
        file_sha256(&agent).unwrap(),
        hex::encode(Sha256::digest(b"v2-longer"))
    );
}

#[test]
fn qemu_version_is_the_first_line() {
    let bin = Path::new("/usr/bin/qemu-system-x86_64");
    if !bin.exists() {
        eprintln!("skipping: qemu not installed");
        return;
    }
    let v = qemu_version(bin).unwrap();
    assert!(v.starts_with("QEMU emulator version "), "{v}");
    assert!(qemu_version(Path::new("/nonexistent/qemu")).is_err());
}

#[test]
fn last_lines_skips_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("log");
    std::fs::write(&f, "a\n\nb\nc\n\n").unwrap();
    assert_eq!(last_lines(&f, 2), "b\nc");
    assert_eq!(last_lines(&dir.path().join("none"), 2), "");
}

#[test]
fn discard_removes_read_only_snapshot_files() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("0123456789abcdef");
    std::fs::create_dir(&snap).unwrap();
    for (f, mode) in [(STATE, 0o400), (ROOT, 0o444), (WORK, 0o444), (META, 0o644)] {
        std::fs::write(snap.join(f), b"x").unwrap();
        std::fs::set_permissions(snap.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o755)).unwrap();
    discard(&snap);
    assert!(!snap.exists());
}

/// Publishes a snapshot of `want` from fake files, as `ensure` does after
/// a build.
fn publish_fake(d: &Shared, want: &Inputs) -> Snapshot {
    let build = warm_dir(d).join(format!(".build-{}", want.id()));
    std::fs::create_dir_all(&build).unwrap();
    for f in [STATE, ROOT, WORK] {
        std::fs::write(build.join(f), f).unwrap();
    }
    let meta = Meta {
        id: want.id(),
        inputs: want.clone(),
        created_at: 1,
        build_ms: 2,
    };
    let s = publish(d, &build, &meta).unwrap();
    std::fs::remove_dir_all(&build).unwrap();
    s
}

#[test]
fn lookup_publish_and_staleness() {
    let tmp = tempfile::tempdir().unwrap();
    let d = crate::testutil::daemon(tmp.path());
    let want = inputs();
    match lookup(&d, &want) {
        Lookup::Missing(m) => assert_eq!(
            m,
            "no warm snapshot of debian-bookworm (2 vcpu, 1024 MiB, 8192 MiB disk) yet"
        ),
        _ => panic!("expected Missing"),
    }
    let s = publish_fake(&d, &want);
    assert_eq!(s.dir, warm_dir(&d).join(want.id()));
    for (f, mode) in [(STATE, 0o400), (ROOT, 0o444), (WORK, 0o444)] {
        let md = std::fs::metadata(s.dir.join(f)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, mode, "{f}");
    }
    assert!(matches!(lookup(&d, &want), Lookup::Ready(r) if r.id() == want.id()));
    assert_eq!(all(&d).len(), 1);

    // A new agent: the old snapshot is stale, and says why.
    let mut newer = inputs();
    newer.agent = "cc".into();
    match lookup(&d, &newer) {
        Lookup::Missing(m) => assert_eq!(
            m,
            format!(
                "the warm snapshot {} of debian-bookworm (2 vcpu, 1024 MiB, 8192 MiB disk) is stale: the guest agent changed",
                want.id()
            )
        ),
        _ => panic!("expected Missing"),
    }
    // Another shape is not "stale", just missing.
    let mut other = inputs();
    other.vcpus = 4;
    assert!(matches!(lookup(&d, &other), Lookup::Missing(m) if m.contains("no warm snapshot")));

    // A failed build is remembered until a build succeeds.
    std::fs::write(
        warm_dir(&d).join(format!(".{}.{FAILED}", other.id())),
        "boom\n",
    )
    .unwrap();
    assert!(matches!(lookup(&d, &other), Lookup::Failed(m) if m == "boom"));

    // A half-published directory (no snapshot.json) is never a snapshot.
    std::fs::remove_file(s.dir.join(META)).unwrap();
    assert!(all(&d).is_empty());
    assert!(matches!(lookup(&d, &want), Lookup::Missing(_)));
}

#[test]
fn stale_snapshots_go_unless_a_vm_backs_onto_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = crate::testutil::daemon(tmp.path());
    let old = inputs();
    let old_snap = publish_fake(&d, &old);
    crate::testutil::vm_row(&d, "0123456789ab", "keeper", Some(old_snap.id()));

    let mut new = inputs();
    new.image_id = "changed".into();
    publish_fake(&d, &new);
    collect_stale(&d, &new);
    assert!(old_snap.dir.exists(), "a VM's disks back onto it");
    let err = remove(&d, old_snap.id()).unwrap_err();
    assert!(err.contains("keeper"), "{err}");

    d.store.delete_vm("0123456789ab").unwrap();
    collect_stale(&d, &new);
    assert!(!old_snap.dir.exists());
    assert!(
        warm_dir(&d).join(new.id()).exists(),
        "the current one stays"
    );

    assert!(remove(&d, "../etc")
        .unwrap_err()
        .contains("not a warm snapshot id"));
    assert!(remove(&d, "0000000000000000")
        .unwrap_err()
        .starts_with("no warm snapshot"));
    remove(&d, &new.id()).unwrap();
    assert!(all(&d).is_empty());
}

#[test]
fn deleting_an_image_forgets_its_unused_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    let d = crate::testutil::daemon(tmp.path());
    let used = publish_fake(&d, &inputs());
    crate::testutil::vm_row(&d, "0123456789ab", "keeper", Some(used.id()));
    let mut other_shape = inputs();
    other_shape.vcpus = 4;
    let unused = publish_fake(&d, &other_shape);
    let mut other_image = inputs();
    other_image.image = "alpine".into();
    let alpine = publish_fake(&d, &other_image);
    assert_eq!(forget_image(&d, "debian-bookworm"), [used.id().to_string()]);
    assert!(used.dir.exists() && !unused.dir.exists() && alpine.dir.exists());
}

#[tokio::test]
async fn reconcile_removes_unfinished_publishes_and_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let d = crate::testutil::daemon(tmp.path());
    let keep = publish_fake(&d, &inputs());
    for name in [".tmp-abc-1234", ".build-0123456789ab"] {
        let p = warm_dir(&d).join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join(STATE), b"x").unwrap();
        std::fs::set_permissions(p.join(STATE), std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    reconcile(&d).await;
    let left: Vec<String> = std::fs::read_dir(warm_dir(&d))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [keep.id().to_string()]);
}

#[tokio::test]
async fn a_snapshot_that_failed_to_restore_is_dropped_unless_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let d = crate::testutil::daemon(tmp.path());
    let s = publish_fake(&d, &inputs());
    crate::testutil::vm_row(&d, "0123456789ab", "keeper", Some(s.id()));
    drop_broken(&d, s.id()).await;
    assert!(s.dir.exists(), "a VM backs onto it");
    d.store.delete_vm("0123456789ab").unwrap();
    drop_broken(&d, s.id()).await;
    assert!(!s.dir.exists());
    assert!(
        matches!(lookup(&d, &inputs()), Lookup::Missing(_)),
        "not a failed build"
    );
    drop_broken(&d, "0000000000000000").await; // nothing there: no panic
}
