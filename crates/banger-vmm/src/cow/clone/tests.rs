use super::*;
use crate::cow::testutil::*;
use std::os::unix::fs::MetadataExt;

const MIB: u64 = 1 << 20;

/// A 64 MiB image with data at the start, in the middle at an unaligned
/// offset, across a 1 MiB stretch, and a trailing hole of ~40 MiB.
fn islands() -> Vec<(u64, usize)> {
    vec![
        (0, 4096),
        (5 * MIB, MIB as usize),
        (20 * MIB + 123, 10_000),
        (23 * MIB - 1, 2),
    ]
}

/// Whether `dir`'s filesystem reflinks, according to an implementation
/// other than ours (coreutils), so the test does not grade itself.
fn fs_reflinks(dir: &Path) -> bool {
    let a = dir.join(".probe-a");
    let b = dir.join(".probe-b");
    std::fs::write(&a, b"probe").unwrap();
    let ok = sh(&[
        "cp",
        "--reflink=always",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ])
    .is_ok();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

fn check_clone(dir: &Path, src: &Path, dst: &Path, want: CowKind) {
    let kind = clone_file(src, dst).unwrap();
    assert_eq!(kind, want);
    assert_same_bytes(src, dst);
    let md = std::fs::metadata(dst).unwrap();
    assert_eq!(md.mode() & 0o777, 0o600);
    if kind == CowKind::SparseCopy {
        // 1 MiB + a few KiB of data in 64 MiB: a dense copy would be 64 MiB.
        let used = allocated(dst);
        assert!(used < 4 * MIB, "copy occupies {used} bytes of {}", md.len());
    }
    let names = listing(dir);
    assert!(
        !names.iter().any(|n| n.ends_with(".partial")),
        "temporary file left behind: {names:?}"
    );
}

#[test]
fn clone_keeps_data_and_holes_and_reports_what_the_fs_did() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base.ext4");
    write_sparse(&src, 64 * MIB, &islands());
    assert!(allocated(&src) < 4 * MIB, "fixture is not sparse here");
    let want = if fs_reflinks(dir.path()) {
        CowKind::Reflink
    } else {
        eprintln!(
            "note: {} does not reflink (cp --reflink=always fails); expecting a sparse copy here; \
             the reflink branch is exercised by clone_on_xfs_reflinks_and_copies_across_filesystems",
            dir.path().display()
        );
        CowKind::SparseCopy
    };
    check_clone(dir.path(), &src, &dir.path().join("root.ext4"), want);

    // Edge shapes: empty, all hole, all data (not a multiple of 4 KiB).
    for (name, size, isl) in [
        ("empty", 0, vec![]),
        ("hole", 16 * MIB, vec![]),
        ("dense", 3 * 4096 + 7, vec![(0, 3 * 4096 + 7)]),
    ] {
        let s = dir.path().join(format!("{name}.src"));
        write_sparse(&s, size, &isl);
        check_clone(
            dir.path(),
            &s,
            &dir.path().join(format!("{name}.dst")),
            want,
        );
    }
    assert!(allocated(&dir.path().join("hole.dst")) <= 4096);
}

#[test]
fn read_write_fallback_is_also_sparse_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base");
    write_sparse(&src, 64 * MIB, &islands());
    // A data extent with an all-zero block inside is written around.
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&[0u8; 8192], 5 * MIB + 8192).unwrap();
    drop(f);
    let dst = dir.path().join("copy");
    let out = File::create(&dst).unwrap();
    let len = std::fs::metadata(&src).unwrap().len();
    sparse_copy(&File::open(&src).unwrap(), &out, len, false).unwrap();
    drop(out);
    assert_same_bytes(&src, &dst);
    assert!(allocated(&dst) < allocated(&src) + 4096);
}

#[test]
fn never_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base");
    write_sparse(&src, MIB, &[(0, 100)]);
    let dst = dir.path().join("root");
    std::fs::write(&dst, b"a VM's disk").unwrap();
    let e = clone_file(&src, &dst).unwrap_err();
    assert!(matches!(e, CowError::Exists(_)), "{e}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"a VM's disk");
    assert_eq!(listing(dir.path()), ["base", "root"]);
}

#[test]
fn bad_sources_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let e = clone_file(&dir.path().join("missing"), &dir.path().join("a")).unwrap_err();
    assert!(
        e.to_string().contains("open") && e.to_string().contains("missing"),
        "{e}"
    );
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let e = clone_file(&sub, &dir.path().join("b")).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let src = dir.path().join("base");
    write_sparse(&src, MIB, &[(0, 100)]);
    let e = clone_file(&src, &dir.path().join("nodir/c")).unwrap_err();
    assert!(e.to_string().contains("create a temporary file in"), "{e}");
    assert_eq!(listing(dir.path()), ["base", "sub"]);
}

#[test]
fn a_failure_mid_copy_leaves_no_temporary_file() {
    if !is_root() {
        eprintln!("SKIPPED: mid-copy failure test needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base");
    write_sparse(&src, 64 * MIB, &[(0, 6 * MIB as usize)]);
    let small = match Mount::tmpfs("2m", &dir.path().join("small")) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let e = clone_file(&src, &small.dir.join("root")).unwrap_err();
    assert!(e.to_string().contains("space"), "{e}");
    assert!(listing(&small.dir).is_empty(), "{:?}", listing(&small.dir));
}

#[test]
fn clone_on_xfs_reflinks_and_copies_across_filesystems() {
    let skip = |why: &str| eprintln!("SKIPPED: reflink branch not tested here: {why}");
    if !is_root() {
        return skip("needs root to mount an XFS image");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("xfs.img");
    File::create(&img).unwrap().set_len(320 * MIB).unwrap();
    if let Err(e) = sh(&["mkfs.xfs", "-q", "-m", "reflink=1", img.to_str().unwrap()]) {
        return skip(&format!("{e} (mkfs.xfs is in the xfsprogs package)"));
    }
    let xfs = match Mount::image(&img, &dir.path().join("mnt")) {
        Ok(m) => m,
        Err(e) => return skip(&e),
    };
    assert!(fs_reflinks(&xfs.dir), "XFS with reflink=1 should reflink");
    let src = xfs.dir.join("base");
    write_sparse(&src, 64 * MIB, &islands());
    let dst = xfs.dir.join("root");
    check_clone(&xfs.dir, &src, &dst, CowKind::Reflink);

    // Copy-on-write, not shared writes: changing the clone leaves the base.
    let before = std::fs::read(&src).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
    f.write_all_at(b"guest wrote here", 5 * MIB).unwrap();
    drop(f);
    assert_eq!(std::fs::read(&src).unwrap(), before);

    // Across filesystems FICLONE says EXDEV: a sparse copy.
    let outside = dir.path().join("outside-base");
    write_sparse(&outside, 64 * MIB, &islands());
    check_clone(
        &xfs.dir,
        &outside,
        &xfs.dir.join("from-ext4"),
        CowKind::SparseCopy,
    );
}

#[test]
fn sparse_files_and_cow_store_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cow");
    create_sparse_file(&p, 8 * MIB).unwrap();
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!((md.len(), md.mode() & 0o777), (8 * MIB, 0o600));
    assert_eq!(allocated(&p), 0);
    assert!(matches!(
        create_sparse_file(&p, MIB).unwrap_err(),
        CowError::Exists(_)
    ));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8 * MIB);

    // Header + one exception chunk per 256 data chunks + one spare.
    assert_eq!(cow_store_size(0), 2 * COW_CHUNK);
    assert_eq!(cow_store_size(1), (1 + 2 + 1) * COW_CHUNK);
    assert_eq!(cow_store_size(256 * COW_CHUNK), (256 + 2 + 1) * COW_CHUNK);
    assert_eq!(cow_store_size(257 * COW_CHUNK), (257 + 3 + 1) * COW_CHUNK);
    let gib = 1 << 30;
    assert!(cow_store_size(gib) > gib && cow_store_size(gib) < gib + gib / 100);

    let base = dir.path().join("base");
    write_sparse(&base, 10 * MIB + 1, &[]);
    let cow = dir.path().join("vm.cow");
    assert_eq!(
        create_cow_file(&cow, &base).unwrap(),
        cow_store_size(10 * MIB + 1)
    );
    assert_eq!(
        std::fs::metadata(&cow).unwrap().len(),
        cow_store_size(10 * MIB + 1)
    );
}
