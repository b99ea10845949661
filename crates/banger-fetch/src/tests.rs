use super::*;

use std::sync::Mutex;

use crate::testkit::{
    chunked, close_delimited, dest, listing, lying_length, ok_with_length, serve, status, Reply,
};

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The catalog's way of downloading: size known, so the cap is the size.
async fn download(url: &str, data: &[u8], dir: &Path) -> Result<PathBuf, FetchError> {
    download_capped(url, data, Some(data.len() as u64), 1 << 20, dir).await
}

async fn download_capped(
    url: &str,
    data: &[u8],
    size: Option<u64>,
    cap: u64,
    dir: &Path,
) -> Result<PathBuf, FetchError> {
    let digest = sha(data);
    let run = download_verified(url, &digest, size, cap, dir, "out.bin", |_, _| {});
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("download must not hang")
}

/// Runs a download that must fail and checks the destination is untouched.
async fn assert_fails_clean(url: &str, data: &[u8], size: Option<u64>, cap: u64) -> FetchError {
    let dir = dest();
    let before = listing(dir.path());
    let e = download_capped(url, data, size, cap, dir.path())
        .await
        .unwrap_err();
    assert_eq!(listing(dir.path()), before, "{url}: {e}");
    e
}

#[tokio::test]
async fn download_happy_path_renames_and_reports_progress() {
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let served = data.clone();
    let base = serve(move |_| ok_with_length(&served)).await;
    let url = format!("{base}/d.tar.zst");
    let dir = dest();
    let calls = Mutex::new(Vec::new());
    let size = Some(data.len() as u64);
    let path = download_verified(
        &url,
        &sha(&data),
        size,
        1 << 30,
        dir.path(),
        "b.zst",
        |d, t| calls.lock().unwrap().push((d, t)),
    )
    .await
    .unwrap();
    assert_eq!(path, dir.path().join("b.zst"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(listing(dir.path()), ["b.zst", "keep.txt"]);
    let calls = calls.into_inner().unwrap();
    assert!(!calls.is_empty());
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        *calls.last().unwrap(),
        (data.len() as u64, data.len() as u64)
    );
}

#[tokio::test]
async fn download_without_a_size_reports_the_advertised_total() {
    let data = vec![7u8; 100_000];
    let served = data.clone();
    let base = serve(move |_| ok_with_length(&served)).await;
    let dir = dest();
    let calls = Mutex::new(Vec::new());
    let url = format!("{base}/x");
    download_verified(&url, &sha(&data), None, 1 << 30, dir.path(), "x", |d, t| {
        calls.lock().unwrap().push((d, t))
    })
    .await
    .unwrap();
    let calls = calls.into_inner().unwrap();
    assert!(calls.iter().all(|&(_, t)| t == 100_000), "{calls:?}");
    assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), data);
}

#[tokio::test]
async fn download_replaces_an_existing_file_of_that_name() {
    let base = serve(|_| ok_with_length(b"new")).await;
    let dir = dest();
    std::fs::write(dir.path().join("out.bin"), b"old").unwrap();
    let path = download(&format!("{base}/x"), b"new", dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"new");
    assert_eq!(listing(dir.path()), ["keep.txt", "out.bin"]);
}

#[tokio::test]
async fn download_sha_mismatch_leaves_dest_as_it_was() {
    let base = serve(|_| ok_with_length(b"evil")).await;
    let e = assert_fails_clean(&format!("{base}/x"), b"good", Some(4), 1 << 20).await;
    assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&hex::encode(sha(b"good"))), "{e}");
    assert!(e.to_string().contains(&hex::encode(sha(b"evil"))), "{e}");
}

#[tokio::test]
async fn download_refuses_advertised_oversize_before_reading_body() {
    // The server advertises 1 MB, sends 4 bytes and then stalls: reading the
    // body at all would hang past the test's timeout.
    let base =
        serve(|_| Reply::Hang(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\ngood".to_vec()))
            .await;
    let url = format!("{base}/x");
    // Capped by the expected size...
    let e = assert_fails_clean(&url, b"good", Some(4), 1 << 30).await;
    assert!(
        matches!(
            e,
            FetchError::AdvertisedTooLarge {
                advertised: 1000000,
                cap: 4,
                ..
            }
        ),
        "{e}"
    );
    // ... or by the cap alone.
    let e = assert_fails_clean(&url, b"good", None, 1000).await;
    assert!(
        matches!(
            e,
            FetchError::AdvertisedTooLarge {
                advertised: 1000000,
                cap: 1000,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn download_refuses_an_expected_size_over_the_cap_without_connecting() {
    // Port 9 (discard) on loopback: nothing listens, but we never get there.
    let e = assert_fails_clean("http://127.0.0.1:9/x", b"good", Some(4), 3).await;
    assert!(
        matches!(
            e,
            FetchError::AdvertisedTooLarge {
                advertised: 4,
                cap: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn download_lying_server_hits_the_cap() {
    let big = vec![b'x'; 100_000];
    let (a, b) = (big.clone(), big.clone());
    let base = serve(move |path| match path {
        "/close" => close_delimited(&a),
        _ => chunked(&b[..10_000], 10),
    })
    .await;
    for path in ["/close", "/chunked"] {
        let url = format!("{base}{path}");
        // Cap from the expected size.
        let e = assert_fails_clean(&url, b"xxxx", Some(4), 1 << 20).await;
        assert!(matches!(e, FetchError::CapExceeded { cap: 4, .. }), "{e}");
        assert!(e.to_string().contains("cap"), "{e}");
        // No expected size: the cap alone stops it.
        let e = assert_fails_clean(&url, &big, None, 50_000).await;
        assert!(
            matches!(e, FetchError::CapExceeded { cap: 50_000, .. }),
            "{e}"
        );
    }
}

#[tokio::test]
async fn download_server_lying_about_content_length() {
    let base = serve(|path| match path {
        // Promises 1000 bytes, sends 10 and closes: a truncated body.
        "/short" => lying_length(1000, b"0123456789"),
        // Promises 4 bytes and sends 100_000: only the promised 4 are read.
        _ => lying_length(4, &[b'x'; 100_000]),
    })
    .await;
    let e = assert_fails_clean(&format!("{base}/short"), b"0123456789", None, 1 << 20).await;
    assert!(matches!(e, FetchError::Http { .. }), "{e}");
    assert!(e.to_string().contains("/short"), "{e}");

    let e = assert_fails_clean(&format!("{base}/long"), &[b'x'; 100_000], None, 1 << 20).await;
    assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");
    let e = assert_fails_clean(
        &format!("{base}/long"),
        &[b'x'; 100_000],
        Some(100_000),
        1 << 20,
    )
    .await;
    assert!(
        matches!(
            e,
            FetchError::SizeMismatch {
                got: 4,
                expected: 100_000,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn download_short_body_is_a_size_mismatch() {
    let base = serve(|_| ok_with_length(b"go")).await;
    let e = assert_fails_clean(&format!("{base}/x"), b"good", Some(4), 1 << 20).await;
    assert!(
        matches!(
            e,
            FetchError::SizeMismatch {
                got: 2,
                expected: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn dropping_a_download_midway_removes_the_partial_file() {
    // Headers promise 1000 bytes; 500 arrive, then the server stalls.
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    head.extend_from_slice(&[b'y'; 500]);
    let base = serve(move |_| Reply::Hang(head.clone())).await;
    let dir = dest();
    let before = listing(dir.path());
    let seen_part = Mutex::new(false);
    let url = format!("{base}/x");
    let run = download_verified(&url, &[0; 32], None, 1 << 20, dir.path(), "x", |_, _| {
        let names = listing(dir.path());
        if names
            .iter()
            .any(|n| n.starts_with(".download-") && n.ends_with(".part"))
        {
            *seen_part.lock().unwrap() = true;
        }
    });
    let r = tokio::time::timeout(Duration::from_millis(500), run).await;
    assert!(r.is_err(), "the download should still be waiting");
    assert!(*seen_part.lock().unwrap(), "a .part file existed midway");
    assert_eq!(listing(dir.path()), before);
}

#[tokio::test]
async fn download_http_error_status_is_reported() {
    let base = serve(|path| match path {
        "/missing" => status(404, ""),
        _ => status(500, ""),
    })
    .await;
    for (path, code) in [("/missing", "404"), ("/broken", "500")] {
        let e = assert_fails_clean(&format!("{base}{path}"), b"good", Some(4), 1 << 20).await;
        assert!(matches!(e, FetchError::Status { .. }), "{e}");
        assert!(e.to_string().contains(code), "{e}");
        assert!(e.to_string().contains(path), "{e}");
    }
}

#[tokio::test]
async fn download_follows_redirects_up_to_the_limit() {
    let base = serve(|path| {
        if let Some(n) = path.strip_prefix("/loop/") {
            let n: u32 = n.parse().unwrap();
            return status(302, &format!("Location: /loop/{}\r\n", n + 1));
        }
        match path {
            "/a/start" => status(302, "Location: next\r\n"), // relative: /a/next
            "/a/next" => status(301, "Location: /data\r\n"),
            "/data" => ok_with_length(b"good"),
            _ => status(404, ""),
        }
    })
    .await;
    let dir = dest();
    let path = download(&format!("{base}/a/start"), b"good", dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"good");

    let e = assert_fails_clean(&format!("{base}/loop/0"), b"good", Some(4), 1 << 20).await;
    assert!(
        matches!(e, FetchError::TooManyRedirects { max: 5, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn download_file_url_happy_and_mismatch() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("k.bin");
    std::fs::write(&file, b"kernel bytes").unwrap();
    let url = format!("file://{}", file.display());

    let dir = dest();
    let path = download(&url, b"kernel bytes", dir.path()).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"kernel bytes");
    assert_eq!(listing(dir.path()), ["keep.txt", "out.bin"]);

    let e = assert_fails_clean(&url, b"kernel bytez", Some(12), 1 << 20).await;
    assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");

    // Larger than expected: refused from the file's size.
    let e = assert_fails_clean(&url, b"kernel", Some(6), 1 << 20).await;
    assert!(matches!(e, FetchError::AdvertisedTooLarge { .. }), "{e}");
    let e = assert_fails_clean(&url, b"kernel bytes", None, 5).await;
    assert!(matches!(e, FetchError::AdvertisedTooLarge { .. }), "{e}");

    // Not a regular file; not an absolute path.
    let dir_url = format!("file://{}", src.path().display());
    let e = assert_fails_clean(&dir_url, b"", None, 1 << 20).await;
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let e = assert_fails_clean("file://host/k.bin", b"", None, 1 << 20).await;
    assert!(matches!(e, FetchError::BadUrl { .. }), "{e}");
}

#[tokio::test]
async fn download_rejects_path_like_final_names_and_bad_schemes() {
    let dir = dest();
    for name in ["../x", "a/b", ".hidden", "", ".", ".."] {
        let e = download_verified(
            "http://127.0.0.1:9/x",
            &[0; 32],
            None,
            1,
            dir.path(),
            name,
            |_, _| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(e, FetchError::BadName { .. }), "{e}");
        assert!(e.to_string().contains("plain file name"), "{e}");
    }
    for url in ["ftp://h/x", "/srv/x", "javascript:alert(1)", ""] {
        let e = download_verified(url, &[0; 32], None, 1, dir.path(), "x", |_, _| {})
            .await
            .unwrap_err();
        assert!(matches!(e, FetchError::BadUrl { .. }), "{url}: {e}");
    }
    assert_eq!(listing(dir.path()), ["keep.txt"]);
}

#[tokio::test]
async fn fetch_bytes_over_http_and_file_with_a_cap() {
    let base = serve(|path| match path {
        "/doc" => ok_with_length(b"{\"a\": 1}"),
        "/chunked" => chunked(b"0123456789", 5),
        _ => close_delimited(&[b'z'; 5000]),
    })
    .await;
    let doc = fetch_bytes(&format!("{base}/doc"), 1024).await.unwrap();
    assert_eq!(doc, b"{\"a\": 1}");
    let e = fetch_bytes(&format!("{base}/doc"), 4).await.unwrap_err();
    assert!(matches!(e, FetchError::AdvertisedTooLarge { .. }), "{e}");
    assert_eq!(
        fetch_bytes(&format!("{base}/chunked"), 50).await.unwrap(),
        b"0123456789".repeat(5)
    );
    let e = fetch_bytes(&format!("{base}/chunked"), 49)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::CapExceeded { cap: 49, .. }), "{e}");
    let e = fetch_bytes(&format!("{base}/close"), 4999)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::CapExceeded { .. }), "{e}");

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("m.json");
    std::fs::write(&file, b"[]").unwrap();
    let url = format!("file://{}", file.display());
    assert_eq!(fetch_bytes(&url, 2).await.unwrap(), b"[]");
    assert!(fetch_bytes(&url, 1).await.is_err());
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_cleanly() {
    // No TLS server here: this checks the rustls client is built (explicit
    // ring provider, no process-default needed) and a handshake failure is
    // an error naming the URL, with the destination left alone.
    let base = serve(|_| ok_with_length(b"good")).await;
    let url = base.replace("http://", "https://") + "/x";
    let e = assert_fails_clean(&url, b"good", Some(4), 1 << 20).await;
    assert!(matches!(e, FetchError::Http { .. }), "{e}");
    assert!(e.to_string().contains(&url), "{e}");
}

#[test]
fn redirects_resolve_and_never_downgrade() {
    let r = |b, l| resolve_redirect(b, l);
    assert_eq!(r("http://h:1/a/b", "c").unwrap(), "http://h:1/a/c");
    assert_eq!(r("http://h:1/a/b", "/c").unwrap(), "http://h:1/c");
    assert_eq!(r("https://h/a", "//g/x").unwrap(), "https://g/x");
    assert_eq!(r("http://h/a", "https://g/x").unwrap(), "https://g/x");
    assert!(r("https://h/a", "http://g/x").is_err());
    assert!(r("http://h/a", "file:///etc/passwd").is_err());
}

#[test]
fn file_names_and_urls() {
    for ok in ["a", "bundle.tar.zst", "banger-v0.2.0-x86_64-linux.tar.gz"] {
        check_file_name(ok).unwrap();
    }
    assert!(check_file_name(&"a".repeat(256)).is_err());
    assert!(check_file_name("a\0b").is_err());
    for ok in ["file:///x", "FILE:///x", "http://h/x", "HTTPS://h/x"] {
        check_url(ok).unwrap();
    }
    for bad in ["ftp://h", "file:/x", "httpx://h", "data:,x"] {
        assert!(check_url(bad).is_err(), "{bad}");
    }
}
