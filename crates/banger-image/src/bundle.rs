//! Prebuilt images from the catalog: a `.tar.zst` bundle holding
//! `manifest.json`, `rootfs.ext4` and `work-seed/`.
//!
//! The bundle is downloaded through the catalog's capped, hashed download
//! into a staging directory, unpacked there (regular files and directories
//! only), and its manifest is checked as untrusted input before the image is
//! published: file names must be plain names inside the image directory,
//! the kernel a valid kernel-store name, and `init` a plain absolute path
//! (it goes on the kernel command line).

use std::path::Path;

use crate::catalog::{self, CatalogEntry, EntryKind};
use crate::staged::StagedImage;
use crate::{kernels, ImageError, Manifest};

/// Most bytes an image bundle may unpack to.
pub const MAX_IMAGE_CONTENT: u64 = 64 * 1024 * 1024 * 1024;
/// Name of the unpacked image inside the staging directory.
const UNPACKED: &str = "image";

/// Downloads, verifies and unpacks the catalog image `entry` as image
/// `name`, ready to publish. `progress(done, total)` follows the download.
pub async fn pull(
    entry: &CatalogEntry,
    images_dir: &Path,
    name: &str,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<StagedImage, ImageError> {
    if entry.kind != EntryKind::Image {
        return Err(ImageError::Invalid(format!(
            "catalog entry {:?} is a {:?}, not an image",
            entry.name, entry.kind
        )));
    }
    let staged = StagedImage::new(images_dir, name)?;
    let bundle = catalog::download_verified(entry, staged.path(), "bundle.tar.zst", progress)
        .await
        .map_err(|e| ImageError::Invalid(format!("image {:?}: {e}", entry.name)))?;
    let source = format!("catalog:{}", entry.url);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || install(staged, &bundle, &name, &source))
        .await
        .map_err(|e| ImageError::Invalid(format!("unpack task failed: {e}")))?
}

fn install(
    mut staged: StagedImage,
    bundle: &Path,
    name: &str,
    source: &str,
) -> Result<StagedImage, ImageError> {
    let dir = catalog::unpack_bundle(bundle, staged.path(), UNPACKED, MAX_IMAGE_CONTENT)
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let _ = std::fs::remove_file(bundle);
    let mut m = Manifest::load(&dir)?;
    check_manifest(&m)?;
    let seed = m.work_seed_path(&dir);
    if !seed.exists() {
        std::fs::create_dir(&seed).map_err(ImageError::io(format!("create {}", seed.display())))?;
    }
    m.check_complete(&dir)?;
    m.name = name.to_string();
    m.source = source.to_string();
    m.write(&dir)?;
    staged.set_image_dir(UNPACKED);
    Ok(staged)
}

/// A bundle's manifest is untrusted: every file it names must be a plain
/// name inside the image directory.
pub fn check_manifest(m: &Manifest) -> Result<(), ImageError> {
    let bad = |what: &str, v: &str| {
        Err(ImageError::Invalid(format!(
            "bundle manifest: {what} {v:?} must be a plain file name inside the image"
        )))
    };
    let plain =
        |v: &str| !v.is_empty() && v != "." && v != ".." && !v.contains('/') && !v.contains('\0');
    if !plain(&m.rootfs) {
        return bad("rootfs", &m.rootfs);
    }
    if !plain(&m.work_seed) {
        return bad("work_seed", &m.work_seed);
    }
    if !m.kernel.is_empty() && !plain(&m.kernel) {
        return bad("kernel", &m.kernel);
    }
    if let Some(i) = &m.initrd {
        if !plain(i) {
            return bad("initrd", i);
        }
    }
    if let Some(k) = &m.kernel_name {
        kernels::validate_name(k)
            .map_err(|e| ImageError::Invalid(format!("bundle manifest: {e}")))?;
    }
    if let Some(init) = &m.init {
        check_init(init)?;
    }
    Ok(())
}

/// `init` goes on the kernel command line: an absolute path of plain
/// characters, so it cannot add or change other parameters.
pub fn check_init(init: &str) -> Result<(), ImageError> {
    let ok = init.starts_with('/')
        && init.len() <= 200
        && init
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        && !init.split('/').any(|c| c == "..");
    if ok {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "init {init:?} must be an absolute path of letters, digits, '/', '.', '_' and '-'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_fetch::testkit::listing;

    fn manifest() -> Manifest {
        Manifest {
            name: "x".into(),
            source: "s".into(),
            build_hash: "h".into(),
            rootfs: "rootfs.ext4".into(),
            kernel: String::new(),
            initrd: None,
            work_seed: "work-seed".into(),
            kernel_version: String::new(),
            rootfs_bytes: 1,
            created_at: 1,
            kernel_name: Some("debian-6.1".into()),
            init: Some("/usr/local/bin/banger-agent".into()),
        }
    }

    fn file_entry(h: &mut tar::Header, size: u64) {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
    }

    /// A bundle as a catalog would serve it, with a `file://` entry.
    fn bundle(dir: &Path, m: &Manifest, rootfs: &[u8], sha_ok: bool) -> CatalogEntry {
        let mut b = tar::Builder::new(Vec::new());
        let json = serde_json::to_vec(m).unwrap();
        for (name, data) in [("manifest.json", json.as_slice()), ("rootfs.ext4", rootfs)] {
            let mut h = tar::Header::new_gnu();
            file_entry(&mut h, data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
        let data = crate::catalog::tests::zstd(&b.into_inner().unwrap());
        let path = dir.join("img.tar.zst");
        std::fs::write(&path, &data).unwrap();
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(&data));
        CatalogEntry {
            name: "img".into(),
            kind: EntryKind::Image,
            version: "1".into(),
            url: format!("file://{}", path.display()),
            sha256: if sha_ok { sha } else { "0".repeat(64) },
            size: data.len() as u64,
            description: String::new(),
        }
    }

    #[tokio::test]
    async fn a_catalog_bundle_becomes_a_published_image_with_a_sparse_rootfs() {
        let src = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        // 4 MiB of zeros around one byte of data: must come out sparse.
        let mut rootfs = vec![0u8; 4 * 1024 * 1024];
        rootfs[1024 * 1024] = 7;
        let entry = bundle(src.path(), &manifest(), &rootfs, true);
        let staged = pull(&entry, images.path(), "mine", |_, _| {})
            .await
            .unwrap();
        let dest = staged.publish(images.path(), "mine").unwrap();
        assert_eq!(listing(images.path()), ["mine"], "no scratch left");
        let m = Manifest::load(&dest).unwrap();
        assert_eq!(m.name, "mine");
        assert_eq!(m.source, format!("catalog:{}", entry.url));
        assert!(
            dest.join("work-seed").is_dir(),
            "a missing work seed is made"
        );
        let got = std::fs::read(dest.join("rootfs.ext4")).unwrap();
        assert_eq!(got, rootfs);
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dest.join("rootfs.ext4")).unwrap();
        assert!(
            meta.blocks() * 512 < 1024 * 1024,
            "{} blocks",
            meta.blocks()
        );
    }

    #[tokio::test]
    async fn a_bad_bundle_leaves_the_images_dir_clean() {
        let src = tempfile::tempdir().unwrap();
        let images = tempfile::tempdir().unwrap();
        let entry = bundle(src.path(), &manifest(), b"x", false);
        let e = pull(&entry, images.path(), "bad", |_, _| {})
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("sha256"), "{e}");
        assert!(listing(images.path()).is_empty());
        let mut evil = manifest();
        evil.rootfs = "/etc/passwd".into();
        let entry = bundle(src.path(), &evil, b"x", true);
        let e = pull(&entry, images.path(), "bad", |_, _| {})
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("plain file name"), "{e}");
        assert!(listing(images.path()).is_empty());
    }

    #[test]
    fn a_sane_manifest_passes() {
        check_manifest(&manifest()).unwrap();
    }

    #[test]
    fn paths_leaving_the_image_are_refused() {
        for bad in ["/etc/shadow", "../x", "a/b", "..", ""] {
            let mut m = manifest();
            m.rootfs = bad.into();
            assert!(check_manifest(&m).is_err(), "rootfs {bad:?}");
            let mut m = manifest();
            m.work_seed = bad.into();
            assert!(check_manifest(&m).is_err(), "work_seed {bad:?}");
        }
        let mut m = manifest();
        m.initrd = Some("/boot/initrd".into());
        assert!(check_manifest(&m).is_err());
        let mut m = manifest();
        m.kernel_name = Some("../evil".into());
        assert!(check_manifest(&m).is_err());
    }

    #[test]
    fn an_init_that_would_smuggle_kernel_parameters_is_refused() {
        for bad in [
            "/bin/sh rw",
            "/bin/sh\tinit=/x",
            "sbin/init",
            "/a/../b",
            "/bin/sh\"",
        ] {
            let mut m = manifest();
            m.init = Some(bad.into());
            let e = check_manifest(&m).unwrap_err().to_string();
            assert!(e.contains("absolute path"), "{bad:?}: {e}");
        }
    }
}
