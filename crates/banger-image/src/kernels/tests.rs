use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::catalog::tests::zstd;
use crate::catalog::FetchError;

/// A minimal bzImage: "HdrS" at 0x202 and, optionally, a version string
/// that the header's `kernel_version` field (0x20e) points at.
fn fake_bzimage(version: Option<&str>) -> Vec<u8> {
    let mut data = vec![0u8; 0x2000];
    data[0x202..0x206].copy_from_slice(b"HdrS");
    if let Some(v) = version {
        let at = 0x1000usize;
        data[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        let text = format!("{v} (builder@host) #1 SMP\0");
        data[at..at + text.len()].copy_from_slice(text.as_bytes());
    }
    data
}

fn fake_elf() -> Vec<u8> {
    let mut data = b"\x7fELF\x02\x01\x01".to_vec();
    data.resize(4096, 0);
    data
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A store in a temp dir, and a second temp dir for source files.
fn setup() -> (tempfile::TempDir, KernelStore, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let store = KernelStore::new(state.path().join("kernels"));
    (state, store, tempfile::tempdir().unwrap())
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

// ---- import ----------------------------------------------------------------

#[test]
fn import_bzimage_with_initrd_round_trips() {
    let (_s, store, src) = setup();
    let kernel = fake_bzimage(Some("6.1.0-50-amd64"));
    let vmlinuz = write(src.path(), "bzImage", &kernel);
    let initrd = write(src.path(), "initrd", b"initrd-bytes");
    let m = store
        .import("deb-6.1", &vmlinuz, Some(&initrd), Existing::Refuse)
        .unwrap();
    assert_eq!(m.name, "deb-6.1");
    assert_eq!(m.version, "6.1.0-50-amd64");
    assert_eq!(m.source, format!("import:{}", vmlinuz.display()));
    assert_eq!(m.sha256, hex::encode(Sha256::digest(&kernel)));
    assert_eq!(m.vmlinuz, "vmlinuz");
    assert_eq!(m.vmlinux, None);
    assert_eq!(m.initrd.as_deref(), Some("initrd.img"));
    assert_eq!(m.bytes, kernel.len() as u64 + 12);

    assert_eq!(store.get("deb-6.1").unwrap(), Some(m.clone()));
    let paths = store.path_of(&m);
    assert!(paths.vmlinuz.is_absolute());
    assert_eq!(std::fs::read(&paths.vmlinuz).unwrap(), kernel);
    assert_eq!(
        std::fs::read(paths.initrd.unwrap()).unwrap(),
        b"initrd-bytes"
    );
    assert_eq!(paths.vmlinux, None);
    assert_eq!(names_in(store.dir()), ["deb-6.1"]);
    assert_eq!(
        names_in(&paths.dir),
        ["initrd.img", "kernel.json", "vmlinuz"]
    );
}

#[test]
fn import_elf_is_recorded_as_vmlinux() {
    let (_s, store, src) = setup();
    let elf = write(src.path(), "vmlinux", &fake_elf());
    let m = store
        .import("fc-5.10", &elf, None, Existing::Refuse)
        .unwrap();
    assert_eq!(
        (m.vmlinuz.as_str(), m.vmlinux.as_deref()),
        ("vmlinux", Some("vmlinux"))
    );
    assert_eq!(m.version, "unknown");
    let paths = store.path_of(&m);
    assert_eq!(paths.vmlinux.as_ref(), Some(&paths.vmlinuz));
    assert!(paths.vmlinuz.is_file());
}

#[test]
fn import_refuses_what_is_not_a_kernel_and_leaves_no_temps() {
    let (_s, store, src) = setup();
    let random: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let junk = write(src.path(), "junk", &random);
    let e = store
        .import("k", &junk, None, Existing::Refuse)
        .unwrap_err();
    assert!(matches!(e, KernelError::NotAKernel { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("junk") && msg.contains("HdrS"), "{msg}");

    let e = store
        .import("k", src.path(), None, Existing::Refuse)
        .unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = store
        .import("k", &src.path().join("missing"), None, Existing::Refuse)
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");

    let good = write(src.path(), "bz", &fake_bzimage(None));
    let e = store
        .import("k", &good, Some(src.path()), Existing::Refuse)
        .unwrap_err();
    assert!(e.to_string().contains("initrd"), "{e}");

    assert_eq!(names_in(store.dir()), Vec::<String>::new());
    assert!(store.list().unwrap().kernels.is_empty());
}

#[test]
fn names_are_validated_everywhere() {
    let (_s, store, src) = setup();
    let good = write(src.path(), "bz", &fake_bzimage(None));
    for bad in [
        "",
        "K",
        "-a",
        ".a",
        "_a",
        "a/b",
        "a..b",
        "..",
        "a b",
        "ä",
        &"a".repeat(64),
    ] {
        let e = store
            .import(bad, &good, None, Existing::Refuse)
            .unwrap_err();
        assert!(matches!(e, KernelError::InvalidName { .. }), "{bad:?}: {e}");
        assert!(
            matches!(store.get(bad), Err(KernelError::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(store.delete(bad, &[]), Err(KernelError::InvalidName { .. })),
            "{bad:?}"
        );
    }
    for ok in ["a", "0", "vmlinux-6.1_fc", &"a".repeat(63)] {
        validate_name(ok).unwrap();
    }
    assert_eq!(names_in(store.dir()), Vec::<String>::new());
}

#[test]
fn import_duplicate_refused_unless_replace() {
    let (_s, store, src) = setup();
    let one = write(src.path(), "one", &fake_bzimage(Some("6.1.0")));
    let two = write(src.path(), "two", &fake_bzimage(Some("6.6.0")));
    store.import("k", &one, None, Existing::Refuse).unwrap();
    let e = store.import("k", &two, None, Existing::Refuse).unwrap_err();
    assert!(matches!(e, KernelError::Exists { .. }), "{e}");
    assert!(e.to_string().contains("kernel k already exists"), "{e}");
    assert_eq!(store.get("k").unwrap().unwrap().version, "6.1.0");

    let m = store.import("k", &two, None, Existing::Replace).unwrap();
    assert_eq!(m.version, "6.6.0");
    assert_eq!(store.get("k").unwrap(), Some(m));
    assert_eq!(names_in(store.dir()), ["k"]);
}

// ---- list / get / delete ---------------------------------------------------

#[test]
fn list_sorts_and_skips_what_is_not_a_kernel() {
    let (_s, store, src) = setup();
    let bz = write(src.path(), "bz", &fake_bzimage(None));
    store.import("zeta", &bz, None, Existing::Refuse).unwrap();
    store.import("alpha", &bz, None, Existing::Refuse).unwrap();
    // Debris: a crash mid-pull, a dir without kernel.json, one with garbage,
    // one whose manifest names another kernel, a stray file.
    std::fs::create_dir_all(store.dir().join(".tmp-pull-x-123/x")).unwrap();
    std::fs::create_dir(store.dir().join("empty")).unwrap();
    std::fs::create_dir(store.dir().join("garbage")).unwrap();
    write(&store.dir().join("garbage"), MANIFEST_FILE, b"{nope");
    let alpha = std::fs::read(store.dir().join("alpha").join(MANIFEST_FILE)).unwrap();
    std::fs::create_dir(store.dir().join("impostor")).unwrap();
    write(&store.dir().join("impostor"), MANIFEST_FILE, &alpha);
    write(store.dir(), "notes.txt", b"hi");

    let listing = store.list().unwrap();
    let names: Vec<&str> = listing.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let skipped: Vec<(String, &str)> = listing
        .skipped
        .iter()
        .map(|s| {
            let n = s.path.file_name().unwrap().to_string_lossy().into_owned();
            (n, s.problem.as_str())
        })
        .collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert_eq!(skipped[0], ("empty".into(), "no kernel.json"));
    assert!(skipped[1].0 == "garbage" && skipped[1].1.contains("bad kernel.json"));
    assert!(skipped[2].0 == "impostor" && skipped[2].1.contains("\"alpha\""));
    assert_eq!(skipped[3], ("notes.txt".into(), "not a directory"));

    // get: a broken dir is an error naming it, with the fix.
    let e = store.get("empty").unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("delete it"), "{e}");
    assert_eq!(store.get("missing").unwrap(), None);

    // cleanup_temps removes only the temp debris.
    let removed = store.cleanup_temps().unwrap();
    assert_eq!(removed, [store.dir().join(".tmp-pull-x-123")]);
    assert_eq!(
        names_in(store.dir()),
        ["alpha", "empty", "garbage", "impostor", "notes.txt", "zeta"]
    );
}

#[test]
fn list_of_a_store_never_written_is_empty() {
    let (_s, store, _src) = setup();
    let listing = store.list().unwrap();
    assert!(listing.kernels.is_empty() && listing.skipped.is_empty());
    assert!(store.cleanup_temps().unwrap().is_empty());
}

#[test]
fn list_skips_a_kernel_missing_a_file_its_manifest_names() {
    let (_s, store, src) = setup();
    let bz = write(src.path(), "bz", &fake_bzimage(None));
    let initrd = write(src.path(), "initrd", b"i");
    store
        .import("k", &bz, Some(&initrd), Existing::Refuse)
        .unwrap();
    std::fs::remove_file(store.dir().join("k/initrd.img")).unwrap();
    let listing = store.list().unwrap();
    assert!(listing.kernels.is_empty());
    assert_eq!(listing.skipped[0].problem, "initrd.img is missing");
}

#[test]
fn delete_refused_while_in_use_then_removes() {
    let (_s, store, src) = setup();
    let bz = write(src.path(), "bz", &fake_bzimage(None));
    store.import("k", &bz, None, Existing::Refuse).unwrap();
    let users = vec!["debian-bookworm".to_string(), "alpine".to_string()];
    let e = store.delete("k", &users).unwrap_err();
    assert!(matches!(e, KernelError::InUse { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("debian-bookworm, alpine"), "{msg}");
    assert!(store.get("k").unwrap().is_some());

    store.delete("k", &[]).unwrap();
    assert_eq!(store.get("k").unwrap(), None);
    assert_eq!(names_in(store.dir()), Vec::<String>::new());
    let e = store.delete("k", &[]).unwrap_err();
    assert!(matches!(e, KernelError::NotFound { .. }), "{e}");
}

#[test]
fn delete_removes_a_broken_kernel_dir() {
    let (_s, store, _src) = setup();
    std::fs::create_dir_all(store.dir().join("k/sub")).unwrap();
    store.delete("k", &[]).unwrap();
    assert_eq!(names_in(store.dir()), Vec::<String>::new());
}

// ---- pull / ensure ---------------------------------------------------------

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h
}

fn kernel_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        b.append_data(&mut file_header(data.len() as u64), name, *data)
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn good_bundle_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("vmlinuz", fake_bzimage(Some("6.1.0-50-amd64"))),
        ("vmlinux", fake_elf()),
        ("initrd.img", b"initrd".to_vec()),
        (
            "kernel.json",
            br#"{"name": "deb-6-1", "version": "6.1.0", "cmdline": "console=ttyS0"}"#.to_vec(),
        ),
    ]
}

/// Writes the files as a .tar.zst in `dir`; returns a catalog entry for it.
fn bundle_entry(dir: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> CatalogEntry {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    let data = zstd(&kernel_tar(&refs));
    let path = dir.join(format!("{name}.tar.zst"));
    std::fs::write(&path, &data).unwrap();
    CatalogEntry {
        name: name.into(),
        kind: EntryKind::Kernel,
        version: "6.1.0".into(),
        url: format!("file://{}", path.display()),
        sha256: hex::encode(Sha256::digest(&data)),
        size: data.len() as u64,
        description: String::new(),
    }
}

#[tokio::test]
async fn pull_installs_a_bundle() {
    let (_s, store, src) = setup();
    let files = good_bundle_files();
    let entry = bundle_entry(src.path(), "deb-6-1", &files);
    let locks = NameLocks::new();
    let mut last = (0, 0);
    let m = store
        .pull(&entry, &locks, |done, total| last = (done, total))
        .await
        .unwrap();
    assert_eq!(last, (entry.size, entry.size));
    assert_eq!(m.name, "deb-6-1");
    assert_eq!(m.version, "6.1.0");
    assert_eq!(m.source, format!("catalog:{}", entry.url));
    assert_eq!(m.sha256, hex::encode(Sha256::digest(&files[0].1)));
    assert_eq!(m.vmlinux.as_deref(), Some("vmlinux"));
    assert_eq!(m.initrd.as_deref(), Some("initrd.img"));
    let total: usize = files[..3].iter().map(|(_, d)| d.len()).sum();
    assert_eq!(m.bytes, total as u64);
    assert_eq!(store.get("deb-6-1").unwrap(), Some(m.clone()));

    let paths = store.path_of(&m);
    assert_eq!(std::fs::read(&paths.vmlinuz).unwrap(), files[0].1);
    assert_eq!(std::fs::read(paths.vmlinux.unwrap()).unwrap(), files[1].1);
    assert_eq!(
        names_in(&paths.dir),
        ["initrd.img", "kernel.json", "vmlinux", "vmlinuz"]
    );
    // No bundle, no temps left behind.
    assert_eq!(names_in(store.dir()), ["deb-6-1"]);

    // Pulling again is refused: it is installed.
    let e = store.pull(&entry, &locks, |_, _| {}).await.unwrap_err();
    assert!(matches!(e, KernelError::Exists { .. }), "{e}");
}

#[tokio::test]
async fn pull_with_sha_mismatch_leaves_the_store_unchanged() {
    let (_s, store, src) = setup();
    let bz = write(src.path(), "bz", &fake_bzimage(None));
    store.import("other", &bz, None, Existing::Refuse).unwrap();
    let mut entry = bundle_entry(src.path(), "deb-6-1", &good_bundle_files());
    entry.sha256 = "0".repeat(64);
    let e = store
        .pull(&entry, &NameLocks::new(), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Pull {
                source: CatalogError::Fetch(FetchError::HashMismatch { .. }),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with("pulling kernel deb-6-1: "), "{e}");
    assert_eq!(names_in(store.dir()), ["other"]);
}

#[tokio::test]
async fn pull_refuses_bad_bundles_and_leaves_no_temps() {
    let (_s, store, src) = setup();
    let locks = NameLocks::new();
    let json = |s: &str| ("kernel.json", s.as_bytes().to_vec());
    type Files = Vec<(&'static str, Vec<u8>)>;
    let cases: Vec<(Files, &str)> = vec![
        (vec![json("{}")], "has no vmlinuz"),
        (vec![("vmlinuz", fake_bzimage(None))], "kernel.json"),
        (
            vec![("vmlinuz", b"not a kernel at all".to_vec()), json("{}")],
            "is not a kernel",
        ),
        (
            vec![
                ("vmlinuz", fake_bzimage(None)),
                ("vmlinux", fake_bzimage(None)),
                json("{}"),
            ],
            "expected an ELF vmlinux",
        ),
        (
            vec![
                ("vmlinuz", fake_bzimage(None)),
                json(r#"{"name": "other"}"#),
            ],
            "says name \"other\"",
        ),
        (
            vec![("vmlinuz", fake_bzimage(None)), json(r#"{"version": "9"}"#)],
            "says version",
        ),
        (
            vec![("vmlinuz", fake_bzimage(None)), json("[1]")],
            "not a json object",
        ),
    ];
    for (files, needle) in cases {
        let entry = bundle_entry(src.path(), "k", &files);
        let e = store.pull(&entry, &locks, |_, _| {}).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle), "{needle:?}: {msg}");
        assert!(msg.contains("kernel bundle for k"), "{msg}");
        assert_eq!(names_in(store.dir()), Vec::<String>::new(), "{needle}");
    }

    let mut image = bundle_entry(src.path(), "k", &good_bundle_files());
    image.kind = EntryKind::Image;
    let e = store.pull(&image, &locks, |_, _| {}).await.unwrap_err();
    assert!(matches!(e, KernelError::NotAKernelEntry { .. }), "{e}");
}

fn catalog_of(entries: Vec<CatalogEntry>) -> Catalog {
    Catalog {
        schema_version: catalog::SCHEMA_VERSION,
        entries,
    }
}

#[tokio::test]
async fn ensure_pulls_once_for_concurrent_callers() {
    let (_s, store, src) = setup();
    let entry = bundle_entry(src.path(), "deb-6-1", &good_bundle_files());
    let size = entry.size;
    let catalog = catalog_of(vec![entry]);
    let locks = NameLocks::new();
    let pulls = AtomicUsize::new(0);
    let count = |done: u64, total: u64| {
        if done == total && total == size {
            pulls.fetch_add(1, Ordering::SeqCst);
        }
    };
    let (a, b) = tokio::join!(
        ensure(&store, &locks, "deb-6-1", &catalog, count),
        ensure(&store, &locks, "deb-6-1", &catalog, count),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(pulls.load(Ordering::SeqCst), 1);
    // Installed now: no more pulls.
    let c = ensure(&store, &locks, "deb-6-1", &catalog, count)
        .await
        .unwrap();
    assert_eq!(c, a);
    assert_eq!(pulls.load(Ordering::SeqCst), 1);
    assert_eq!(names_in(store.dir()), ["deb-6-1"]);
}

#[tokio::test]
async fn a_waiter_giving_up_does_not_disturb_the_pull() {
    let (_s, store, src) = setup();
    let entry = bundle_entry(src.path(), "deb-6-1", &good_bundle_files());
    let catalog = Arc::new(catalog_of(vec![entry]));
    let store = Arc::new(store);
    let locks = Arc::new(NameLocks::new());
    let started = Arc::new(tokio::sync::Notify::new());

    // The holder runs on its own thread and runtime (a download future is
    // not Send), and its download stalls after the first chunk.
    let holder = {
        let (store, locks, catalog, started) = (
            store.clone(),
            locks.clone(),
            catalog.clone(),
            started.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut first = true;
            rt.block_on(ensure(&store, &locks, "deb-6-1", &catalog, move |_, _| {
                if std::mem::take(&mut first) {
                    started.notify_one();
                    std::thread::sleep(Duration::from_millis(500));
                }
            }))
        })
    };
    started.notified().await;

    // Both ways of giving up: a deadline on the lock, and dropping ensure.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(locks.lock_until("deb-6-1", deadline).await.is_none());
    let waiter = tokio::time::timeout(
        Duration::from_millis(50),
        ensure(&store, &locks, "deb-6-1", &catalog, |_, _| {
            panic!("the waiter must not download")
        }),
    )
    .await;
    assert!(waiter.is_err(), "the waiter should still be waiting");
    // Another name is not blocked.
    let other = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(locks.lock_until("other", other).await.is_some());

    let m = holder.join().unwrap().unwrap();
    assert_eq!(store.get("deb-6-1").unwrap(), Some(m));
    assert_eq!(names_in(store.dir()), ["deb-6-1"]);
    // The lock is free again.
    let soon = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(locks.lock_until("deb-6-1", soon).await.is_some());
}

#[tokio::test]
async fn ensure_names_what_the_catalog_offers() {
    let (_s, store, src) = setup();
    let mut image = bundle_entry(src.path(), "debian-bookworm", &good_bundle_files());
    image.kind = EntryKind::Image;
    let catalog = catalog_of(vec![
        bundle_entry(src.path(), "vmlinux-6-1", &good_bundle_files()),
        bundle_entry(src.path(), "deb-6-1", &good_bundle_files()),
        image,
    ]);
    let e = ensure(&store, &NameLocks::new(), "missing", &catalog, |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(e, KernelError::NotInCatalog { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("kernel missing is not installed"), "{msg}");
    assert!(msg.contains("offers: deb-6-1, vmlinux-6-1)"), "{msg}");
    assert!(msg.contains("banger kernel import"), "{msg}");

    let e = ensure(
        &store,
        &NameLocks::new(),
        "x",
        &catalog_of(vec![]),
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("offers: none"), "{e}");

    // An installed kernel needs no catalog at all.
    let bz = write(src.path(), "bz", &fake_bzimage(None));
    let m = store.import("local", &bz, None, Existing::Refuse).unwrap();
    let got = ensure(
        &store,
        &NameLocks::new(),
        "local",
        &catalog_of(vec![]),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(got, m);
}

#[test]
fn bzimage_version_is_read_from_the_header() {
    assert_eq!(
        bzimage_version(&fake_bzimage(Some("6.6.1"))).as_deref(),
        Some("6.6.1")
    );
    assert_eq!(bzimage_version(&fake_bzimage(None)), None);
    let mut wild = fake_bzimage(None);
    wild[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
    assert_eq!(bzimage_version(&wild), None);
}

/// The daemon runs `ensure` inside spawned tasks and axum handlers, which
/// need `Send` futures; this stops compiling if that is lost.
#[allow(dead_code)]
fn ensure_is_send(store: &KernelStore, locks: &NameLocks, catalog: &crate::catalog::Catalog) {
    fn send<T: Send>(_: T) {}
    send(ensure(store, locks, "k", catalog, |_, _| {}));
}
