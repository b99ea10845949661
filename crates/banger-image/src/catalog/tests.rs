use super::*;

const SHA_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn entry_json(name: &str, url: &str, sha: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "kind": "image", "version": "2025.1",
        "url": url, "sha256": sha, "size": 4,
    })
}

fn catalog_json(version: u32, entries: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "schema_version": version, "entries": entries }))
        .unwrap()
}

#[test]
fn parse_good_catalog() {
    let mut kernel = entry_json("vmlinux-6-1", "file:///srv/k.zst", SHA_A);
    kernel["kind"] = "kernel".into();
    kernel["description"] = "a kernel".into();
    let bytes = catalog_json(
        1,
        vec![
            entry_json("debian-bookworm", "https://example.org/d.tar.zst", SHA_A),
            kernel,
        ],
    );
    let c = parse_catalog(&bytes).unwrap();
    assert_eq!(c.schema_version, 1);
    assert_eq!(c.entries.len(), 2);
    assert_eq!(c.entries[0].kind, EntryKind::Image);
    assert_eq!(c.entries[0].description, "");
    assert_eq!(c.entries[1].kind, EntryKind::Kernel);
    assert_eq!(c.entries[1].description, "a kernel");
}

#[test]
fn parse_future_schema_says_update_banger() {
    // A newer schema may not fit ours at all: the version gate comes first.
    let bytes = br#"{"schema_version": 2, "bundles": {}}"#;
    let e = parse_catalog(bytes).unwrap_err();
    assert!(
        matches!(e, CatalogError::SchemaTooNew { found: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("update banger"), "{e}");
}

#[test]
fn parse_rejects_bad_sha() {
    for sha in ["abc", &SHA_A.replace('9', "g"), &format!("{SHA_A}00")] {
        let e =
            parse_catalog(&catalog_json(1, vec![entry_json("a", "http://h/x", sha)])).unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
    }
}

#[test]
fn parse_rejects_bad_url_scheme() {
    for url in ["ftp://h/x", "/srv/x", "javascript:alert(1)"] {
        let e = parse_catalog(&catalog_json(1, vec![entry_json("a", url, SHA_A)])).unwrap_err();
        assert!(
            matches!(e, CatalogError::Fetch(FetchError::BadUrl { .. })),
            "{e}"
        );
    }
}

#[test]
fn parse_rejects_bad_names_and_zero_size() {
    for name in [
        "",
        "Debian",
        "-a",
        "a-",
        "a/b",
        "..",
        "a.b",
        &"a".repeat(64),
    ] {
        let e = parse_catalog(&catalog_json(
            1,
            vec![entry_json(name, "http://h/x", SHA_A)],
        ))
        .unwrap_err();
        assert!(e.to_string().contains("name must be"), "{name:?}: {e}");
    }
    let mut zero = entry_json("a", "http://h/x", SHA_A);
    zero["size"] = 0.into();
    let e = parse_catalog(&catalog_json(1, vec![zero])).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
}

// ---- downloads (the transfers themselves are tested in banger-fetch) ------

use banger_fetch::testkit::{close_delimited, dest, listing, ok_with_length, serve};
use sha2::{Digest, Sha256};

fn entry_for(url: &str, data: &[u8]) -> CatalogEntry {
    CatalogEntry {
        name: "debian-bookworm".into(),
        kind: EntryKind::Image,
        version: "1".into(),
        url: url.into(),
        sha256: hex::encode(Sha256::digest(data)),
        size: data.len() as u64,
        description: String::new(),
    }
}

async fn download(entry: &CatalogEntry, dir: &Path) -> Result<PathBuf, CatalogError> {
    download_verified(entry, dir, "bundle.tar.zst", |_, _| {}).await
}

#[tokio::test]
async fn download_uses_the_entry_size_and_sha() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("k.bin");
    std::fs::write(&file, b"kernel bytes").unwrap();
    let url = format!("file://{}", file.display());

    let dir = dest();
    let path = download(&entry_for(&url, b"kernel bytes"), dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"kernel bytes");
    assert_eq!(listing(dir.path()), ["bundle.tar.zst", "keep.txt"]);

    let dir = dest();
    let before = listing(dir.path());
    let entry = entry_for(&url, b"kernel bytez");
    let e = download(&entry, dir.path()).await.unwrap_err();
    assert!(
        matches!(e, CatalogError::Fetch(FetchError::HashMismatch { .. })),
        "{e}"
    );
    assert!(e.to_string().contains(&entry.sha256), "{e}");
    assert_eq!(listing(dir.path()), before);

    // Larger than the entry says: refused from the file's size.
    let e = download(&entry_for(&url, b"kernel"), dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Fetch(FetchError::AdvertisedTooLarge { cap: 6, .. })
        ),
        "{e}"
    );
    assert_eq!(listing(dir.path()), before);
}

#[tokio::test]
async fn download_over_http_is_capped_at_the_entry_size() {
    let base = serve(|path| match path {
        "/good" => ok_with_length(b"good"),
        // No length to refuse up front: the entry's size stops the body.
        _ => close_delimited(&[b'x'; 5000]),
    })
    .await;
    let dir = dest();
    let path = download(&entry_for(&format!("{base}/good"), b"good"), dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"good");

    let dir = dest();
    let e = download(&entry_for(&format!("{base}/more"), b"good"), dir.path())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CatalogError::Fetch(FetchError::CapExceeded { cap: 4, .. })
        ),
        "{e}"
    );
    assert_eq!(listing(dir.path()), ["keep.txt"]);
}

#[tokio::test]
async fn download_validates_the_entry_first() {
    let dir = dest();
    let mut entry = entry_for("file:///nonexistent", b"good");
    entry.sha256 = "zz".into();
    let e = download(&entry, dir.path()).await.unwrap_err();
    assert!(matches!(e, CatalogError::InvalidEntry { .. }), "{e}");
    assert!(e.to_string().contains("sha256"), "{e}");
    assert_eq!(listing(dir.path()), ["keep.txt"]);
}

#[tokio::test]
async fn download_rejects_path_like_final_names() {
    let dir = dest();
    for name in ["../x", "a/b", ".hidden", ""] {
        let entry = entry_for("http://127.0.0.1:9/x", b"good");
        let e = download_verified(&entry, dir.path(), name, |_, _| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("plain file name"), "{e}");
    }
}

#[tokio::test]
async fn fetch_catalog_with_a_cap() {
    let doc = catalog_json(1, vec![entry_json("a", "http://h/x", SHA_A)]);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("catalog.json");
    std::fs::write(&file, &doc).unwrap();
    let url = format!("file://{}", file.display());
    let c = fetch_catalog(&url, DEFAULT_CATALOG_MAX_BYTES)
        .await
        .unwrap();
    assert_eq!(c.entries[0].name, "a");
    let e = fetch_catalog(&url, 10).await.unwrap_err();
    assert!(matches!(e, CatalogError::Fetch(_)), "{e}");
    assert!(e.to_string().contains("cap"), "{e}");
}

// ---- unpacking -------------------------------------------------------------

/// A zstd frame of raw (stored) blocks, built by hand from RFC 8878 since
/// ruzstd 0.7 has no encoder: magic, a single-segment header with a 4-byte
/// content size, then blocks of at most 128 KiB.
pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0xA0];
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let chunks: Vec<&[u8]> = data.chunks(128 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let header = last | ((chunk.len() as u32) << 3); // block type 0: raw
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h
}

/// Writes `tar` as a .tar.zst next to the destination and returns its path.
fn bundle_file(dir: &Path, tar: Vec<u8>) -> PathBuf {
    let path = dir.join("bundle.tar.zst");
    std::fs::write(&path, zstd(&tar)).unwrap();
    path
}

fn good_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "boot/", &[][..]).unwrap();
    b.append_data(&mut file_header(6), "boot/vmlinux", &b"kernel"[..])
        .unwrap();
    b.append_data(&mut file_header(6), "./rootfs.ext4", &b"rootfs"[..])
        .unwrap();
    b.into_inner().unwrap()
}

#[test]
fn unpack_good_bundle() {
    let dir = dest();
    let bundle = bundle_file(dir.path(), good_tar());
    let out = unpack_bundle(&bundle, dir.path(), "debian-bookworm", 1024).unwrap();
    assert_eq!(out, dir.path().join("debian-bookworm"));
    assert_eq!(std::fs::read(out.join("boot/vmlinux")).unwrap(), b"kernel");
    assert_eq!(std::fs::read(out.join("rootfs.ext4")).unwrap(), b"rootfs");
    assert_eq!(
        listing(dir.path()),
        ["bundle.tar.zst", "debian-bookworm", "keep.txt"]
    );
    // A second unpack under the same name is refused, not merged.
    let e = unpack_bundle(&bundle, dir.path(), "debian-bookworm", 1024).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

fn assert_refused(tar: Vec<u8>, max_bytes: u64, needle: &str) {
    let dir = dest();
    let bundle = bundle_file(dir.path(), tar);
    let before = listing(dir.path());
    let e = unpack_bundle(&bundle, dir.path(), "img", max_bytes).unwrap_err();
    assert!(matches!(e, CatalogError::Bundle { .. }), "{e}");
    assert!(e.to_string().contains(needle), "{e}");
    assert_eq!(listing(dir.path()), before);
}

#[test]
fn unpack_refuses_dotdot_and_absolute_names() {
    for name in [&b"../x"[..], b"a/../../x", b"/etc/x"] {
        // tar::Builder refuses such names, so write them into the header.
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut file_header(2), "ok", &b"ok"[..])
            .unwrap();
        let mut h = file_header(4);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        assert_refused(b.into_inner().unwrap(), 1024, "absolute or has '..'");
    }
}

#[test]
fn unpack_refuses_symlinks_and_hardlinks() {
    for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut file_header(2), "ok", &b"ok"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "escape", "/etc/passwd").unwrap();
        assert_refused(
            b.into_inner().unwrap(),
            1024,
            "only regular files and directories",
        );
    }
}

#[test]
fn unpack_refuses_content_over_the_cap() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut file_header(600), "a", &[0u8; 600][..])
        .unwrap();
    b.append_data(&mut file_header(600), "b", &[0u8; 600][..])
        .unwrap();
    assert_refused(b.into_inner().unwrap(), 1000, "cap of 1000 bytes");
}

#[test]
fn unpack_refuses_a_non_zstd_file() {
    let dir = dest();
    let bundle = dir.path().join("bundle.tar.zst");
    std::fs::write(&bundle, b"plain text").unwrap();
    let before = listing(dir.path());
    let e = unpack_bundle(&bundle, dir.path(), "img", 1024).unwrap_err();
    assert!(e.to_string().contains("zstd"), "{e}");
    assert_eq!(listing(dir.path()), before);
}
