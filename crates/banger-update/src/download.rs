//! Downloading one release: the signed `SHA256SUMS` first, then the
//! tarball against the hash it lists.

use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, Release};
use crate::signature::{parse_public_key, verify_signature};
use crate::sums::parse_sha256sums;
use crate::{UpdateError, MAX_SIG_BYTES, MAX_SUMS_BYTES, MAX_TARBALL_BYTES};

/// A release tarball whose sha256 matched a signed `SHA256SUMS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedRelease {
    pub version: String,
    /// `staging_dir/<tarball file name>`.
    pub tarball: PathBuf,
    /// The resolved URLs it came from.
    pub tarball_url: String,
    pub sha256sums_url: String,
    /// The verified sha256 of the tarball, lowercase hex.
    pub sha256: String,
}

/// Downloads `release` (from the manifest at `manifest_url`, against which
/// its relative URLs resolve) into `staging_dir`, which must exist:
///
/// 1. fetch `SHA256SUMS` (at most [`MAX_SUMS_BYTES`]) and its signature (at
///    most [`MAX_SIG_BYTES`]);
/// 2. verify the signature with `public_key_pem`, before reading any hash;
/// 3. find the tarball's file name (the last segment of its URL) in the sums;
/// 4. download the tarball through [`banger_fetch::download_verified`] (at
///    most [`MAX_TARBALL_BYTES`]) as `staging_dir/<file name>`.
///
/// `progress(done, total)` follows the tarball download. Nothing is written
/// to `staging_dir` before step 4, and a failed download leaves nothing, so
/// on any error `staging_dir` is as it was.
pub async fn download_release(
    manifest_url: &str,
    release: &Release,
    public_key_pem: &str,
    staging_dir: &Path,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<DownloadedRelease, UpdateError> {
    // A bad key is the caller's problem: say so before any network traffic.
    parse_public_key(public_key_pem)?;
    let resolve = |rel: &str| Manifest::resolve_url(manifest_url, rel);
    let sums_url = resolve(&release.sha256sums_url)?;
    let sig_url = resolve(&release.sha256sums_sig_url)?;
    let tarball_url = resolve(&release.tarball_url)?;
    let name = file_name_of(&tarball_url)?;

    let sums = banger_fetch::fetch_bytes(&sums_url, MAX_SUMS_BYTES).await?;
    let sig = banger_fetch::fetch_bytes(&sig_url, MAX_SIG_BYTES).await?;
    verify_signature(public_key_pem, &sums, &sig)
        .map_err(|e| e.context(format!("checking {sums_url} against {sig_url}")))?;

    // Only now is anything in `sums` trusted.
    let text = std::str::from_utf8(&sums).map_err(|e| {
        let line = 1 + sums[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        UpdateError::Sums {
            line,
            problem: "not UTF-8 text".into(),
        }
        .context(sums_url.clone())
    })?;
    let table = parse_sha256sums(text).map_err(|e| e.context(sums_url.clone()))?;
    let digest_hex = table
        .get(name)
        .ok_or_else(|| UpdateError::NotInSums {
            sums_url: sums_url.clone(),
            name: name.to_string(),
        })?
        .clone();
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&digest_hex, &mut digest).expect("parse_sha256sums returns 64 hex digits");

    let tarball = banger_fetch::download_verified(
        &tarball_url,
        &digest,
        None,
        MAX_TARBALL_BYTES,
        staging_dir,
        name,
        progress,
    )
    .await?;
    Ok(DownloadedRelease {
        version: release.version.clone(),
        tarball,
        tarball_url,
        sha256sums_url: sums_url,
        sha256: digest_hex,
    })
}

/// The last path segment of `url` (query dropped), which must be a plain
/// file name.
fn file_name_of(url: &str) -> Result<&str, UpdateError> {
    let bad = |problem: String| UpdateError::BadUrl {
        url: url.to_string(),
        problem,
    };
    let without_query = url.split_once('?').map_or(url, |(p, _)| p);
    let after_scheme = without_query.find("://").map_or(0, |i| i + 3);
    let path = without_query[after_scheme..]
        .find('/')
        .map(|i| &without_query[after_scheme + i..])
        .ok_or_else(|| bad("no file name in the tarball url".into()))?;
    let name = path.rsplit_once('/').map_or(path, |(_, n)| n);
    banger_fetch::check_file_name(name)
        .map_err(|e| bad(format!("the tarball's file name: {e}")))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{release_entries, tarball, Server, Signer};
    use banger_fetch::testkit::listing;
    use sha2::{Digest, Sha256};

    const TARBALL: &str = "banger-v0.2.0-x86_64-linux.tar.gz";

    fn release(tarball_url: &str) -> Release {
        Release {
            version: "v0.2.0".into(),
            tarball_url: tarball_url.into(),
            sha256sums_url: "SHA256SUMS".into(),
            sha256sums_sig_url: "SHA256SUMS.sig".into(),
            published_at: None,
        }
    }

    /// A signed release served under `/rel/` (manifest at
    /// `/rel/manifest.json`); returns the tarball bytes.
    struct Fixture {
        server: Server,
        signer: Signer,
        tar: Vec<u8>,
        manifest_url: String,
        staging: tempfile::TempDir,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let server = Server::start().await;
            let signer = Signer::new();
            let tar = tarball(&release_entries());
            let sums = format!(
                "{}  {TARBALL}\n{}  banger-v0.2.0-aarch64-linux.tar.gz\n",
                hex::encode(Sha256::digest(&tar)),
                "0".repeat(64)
            );
            server.put(&format!("/rel/{TARBALL}"), tar.clone());
            server.put("/rel/SHA256SUMS.sig", signer.sign(sums.as_bytes()));
            server.put("/rel/SHA256SUMS", sums);
            let manifest_url = format!("{}/rel/manifest.json", server.base);
            let staging = tempfile::tempdir().unwrap();
            Fixture {
                server,
                signer,
                tar,
                manifest_url,
                staging,
            }
        }

        async fn run(&self, release: &Release) -> Result<DownloadedRelease, UpdateError> {
            self.run_with_key(release, &self.signer.public_pem).await
        }

        async fn run_with_key(
            &self,
            release: &Release,
            key: &str,
        ) -> Result<DownloadedRelease, UpdateError> {
            download_release(
                &self.manifest_url,
                release,
                key,
                self.staging.path(),
                |_, _| {},
            )
            .await
        }

        /// The failure left nothing behind and never touched the tarball.
        fn assert_clean(&self, e: &UpdateError) {
            assert!(listing(self.staging.path()).is_empty(), "{e}");
            assert_eq!(self.server.hits(&format!("/rel/{TARBALL}")), 0, "{e}");
        }
    }

    #[tokio::test]
    async fn happy_path_over_http_with_relative_urls() {
        let f = Fixture::new().await;
        let calls = std::sync::Mutex::new(Vec::new());
        let got = download_release(
            &f.manifest_url,
            &release(TARBALL),
            &f.signer.public_pem,
            f.staging.path(),
            |d, t| calls.lock().unwrap().push((d, t)),
        )
        .await
        .unwrap();
        assert_eq!(got.version, "v0.2.0");
        assert_eq!(got.tarball, f.staging.path().join(TARBALL));
        assert_eq!(got.tarball_url, format!("{}/rel/{TARBALL}", f.server.base));
        assert_eq!(
            got.sha256sums_url,
            format!("{}/rel/SHA256SUMS", f.server.base)
        );
        assert_eq!(got.sha256, hex::encode(Sha256::digest(&f.tar)));
        assert_eq!(std::fs::read(&got.tarball).unwrap(), f.tar);
        assert_eq!(listing(f.staging.path()), [TARBALL]);
        let len = f.tar.len() as u64;
        assert_eq!(calls.into_inner().unwrap().last(), Some(&(len, len)));
    }

    #[tokio::test]
    async fn an_absolute_tarball_url_and_a_query_work() {
        let f = Fixture::new().await;
        let url = format!("{}/rel/{TARBALL}?token=1", f.server.base);
        // The test server keys on the whole request target.
        f.server
            .put(&format!("/rel/{TARBALL}?token=1"), f.tar.clone());
        let got = f.run(&release(&url)).await.unwrap();
        assert_eq!(got.tarball, f.staging.path().join(TARBALL));
    }

    #[tokio::test]
    async fn a_tampered_sums_file_is_refused_before_any_hash_is_used() {
        let f = Fixture::new().await;
        // Someone swaps the tarball and its line in SHA256SUMS.
        let evil = b"evil tarball".to_vec();
        f.server.put(&format!("/rel/{TARBALL}"), evil.clone());
        f.server.put(
            "/rel/SHA256SUMS",
            format!("{}  {TARBALL}\n", hex::encode(Sha256::digest(&evil))),
        );
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(matches!(e.innermost(), UpdateError::Signature(_)), "{e}");
        assert!(e.to_string().contains("/rel/SHA256SUMS.sig"), "{e}");
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn a_signature_by_another_key_is_refused() {
        let f = Fixture::new().await;
        let other = Signer::new();
        let e = f
            .run_with_key(&release(TARBALL), &other.public_pem)
            .await
            .unwrap_err();
        assert!(matches!(e.innermost(), UpdateError::Signature(_)), "{e}");
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn a_bad_key_fails_before_fetching() {
        let f = Fixture::new().await;
        let e = f
            .run_with_key(&release(TARBALL), "not a key")
            .await
            .unwrap_err();
        assert!(matches!(e, UpdateError::PublicKey(_)), "{e}");
        assert_eq!(f.server.hits("/rel/SHA256SUMS"), 0);
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn a_tarball_missing_from_the_sums_is_refused() {
        let f = Fixture::new().await;
        f.server
            .put("/rel/banger-v0.2.1-x86_64-linux.tar.gz", f.tar.clone());
        let e = f
            .run(&release("banger-v0.2.1-x86_64-linux.tar.gz"))
            .await
            .unwrap_err();
        assert!(matches!(e, UpdateError::NotInSums { .. }), "{e}");
        assert!(
            e.to_string().contains("banger-v0.2.1-x86_64-linux.tar.gz"),
            "{e}"
        );
        assert_eq!(f.server.hits("/rel/banger-v0.2.1-x86_64-linux.tar.gz"), 0);
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn a_swapped_tarball_fails_its_hash_and_leaves_nothing() {
        let f = Fixture::new().await;
        f.server
            .put(&format!("/rel/{TARBALL}"), b"another tarball".to_vec());
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(
            matches!(
                e,
                UpdateError::Fetch(banger_fetch::FetchError::HashMismatch { .. })
            ),
            "{e}"
        );
        assert!(listing(f.staging.path()).is_empty(), "{e}");
    }

    #[tokio::test]
    async fn a_signed_but_malformed_sums_file_names_the_url_and_line() {
        let f = Fixture::new().await;
        let sums = format!(
            "{}  {TARBALL}\nnonsense\n",
            hex::encode(Sha256::digest(&f.tar))
        );
        f.server
            .put("/rel/SHA256SUMS.sig", f.signer.sign(sums.as_bytes()));
        f.server.put("/rel/SHA256SUMS", sums);
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(
            matches!(e.innermost(), UpdateError::Sums { line: 2, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("/rel/SHA256SUMS: SHA256SUMS line 2"),
            "{e}"
        );
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn oversized_sums_and_signatures_are_refused() {
        let f = Fixture::new().await;
        f.server.put("/rel/SHA256SUMS.sig", vec![b'A'; 5000]);
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(e.to_string().contains("/rel/SHA256SUMS.sig"), "{e}");
        assert!(e.to_string().contains("cap of 4096"), "{e}");
        f.assert_clean(&e);

        f.server.put("/rel/SHA256SUMS", vec![b'#'; 17 * 1024]);
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(e.to_string().contains("cap of 16384"), "{e}");
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn a_signed_sums_file_that_is_not_utf8_names_the_line() {
        let f = Fixture::new().await;
        let mut sums = format!("{}  {TARBALL}\n", hex::encode(Sha256::digest(&f.tar))).into_bytes();
        sums.extend_from_slice(b"\xff\xfe\n");
        f.server.put("/rel/SHA256SUMS.sig", f.signer.sign(&sums));
        f.server.put("/rel/SHA256SUMS", sums);
        let e = f.run(&release(TARBALL)).await.unwrap_err();
        assert!(e.to_string().contains("line 2: not UTF-8"), "{e}");
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn missing_files_are_reported_with_their_url() {
        let f = Fixture::new().await;
        let mut r = release(TARBALL);
        r.sha256sums_sig_url = "nope.sig".into();
        let e = f.run(&r).await.unwrap_err();
        assert!(e.to_string().contains("/rel/nope.sig"), "{e}");
        assert!(e.to_string().contains("404"), "{e}");
        f.assert_clean(&e);
    }

    #[tokio::test]
    async fn file_urls_work_too() {
        let signer = Signer::new();
        let src = tempfile::tempdir().unwrap();
        let tar = tarball(&release_entries());
        let sums = format!("{}  {TARBALL}\n", hex::encode(Sha256::digest(&tar)));
        std::fs::create_dir(src.path().join("v0.2.0")).unwrap();
        std::fs::write(src.path().join("v0.2.0").join(TARBALL), &tar).unwrap();
        std::fs::write(
            src.path().join("SHA256SUMS.sig"),
            signer.sign(sums.as_bytes()),
        )
        .unwrap();
        std::fs::write(src.path().join("SHA256SUMS"), sums).unwrap();
        let manifest_url = format!("file://{}/manifest.json", src.path().display());
        let staging = tempfile::tempdir().unwrap();
        let got = download_release(
            &manifest_url,
            &release(&format!("v0.2.0/{TARBALL}")),
            &signer.public_pem,
            staging.path(),
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(got.tarball).unwrap(), tar);
    }

    #[test]
    fn tarball_file_names() {
        assert_eq!(file_name_of("https://h/a/b.tar.gz").unwrap(), "b.tar.gz");
        assert_eq!(
            file_name_of("https://h/a/b.tar.gz?x=/y").unwrap(),
            "b.tar.gz"
        );
        for bad in [
            "https://h/a/",
            "https://h/a/.hidden",
            "https://h",
            "https://h?x=/y",
            "file:///",
        ] {
            let e = file_name_of(bad).unwrap_err();
            assert!(matches!(e, UpdateError::BadUrl { .. }), "{bad}: {e}");
        }
    }
}
