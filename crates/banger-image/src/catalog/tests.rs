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
        assert!(matches!(e, CatalogError::BadUrl { .. }), "{e}");
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
