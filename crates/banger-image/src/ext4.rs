//! ext4 images built from directories with `mkfs.ext4 -d`, no mount needed.

use std::path::Path;
use std::process::Command;

use crate::{tool, ImageError};

/// Packs `src_dir` into a fresh sparse ext4 image of `size_mib` at `out`.
/// Ownership inside the image follows the files in `src_dir`.
pub fn pack_dir(src_dir: &Path, out: &Path, size_mib: u64, label: &str) -> Result<(), ImageError> {
    if label.len() > 16 {
        return Err(ImageError::Invalid(format!(
            "ext4 label {label:?} is longer than 16 bytes"
        )));
    }
    let _ = std::fs::remove_file(out);
    let file =
        std::fs::File::create(out).map_err(ImageError::io(format!("create {}", out.display())))?;
    file.set_len(size_mib * 1024 * 1024)
        .map_err(ImageError::io(format!("size {}", out.display())))?;
    drop(file);
    let res = tool::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-m", "0"])
            .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg("-d")
            .arg(src_dir)
            .arg(out),
    );
    if let Err(e) = res {
        let _ = std::fs::remove_file(out);
        return Err(e.into());
    }
    Ok(())
}

/// Apparent size of a directory tree in bytes (files, symlinks, dirs).
pub fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += meta.len().max(4096);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// A root filesystem size with room to work: twice the tree, at least 2 GiB,
/// rounded up to 256 MiB. The file is sparse, so the slack costs nothing
/// until the guest writes.
pub fn rootfs_size_mib(tree_bytes: u64) -> u64 {
    let want = (tree_bytes * 2).div_ceil(1024 * 1024).max(2048);
    want.div_ceil(256) * 256
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn size_policy() {
        assert_eq!(rootfs_size_mib(0), 2048);
        assert_eq!(rootfs_size_mib(800 * 1024 * 1024), 2048);
        assert_eq!(rootfs_size_mib(1500 * 1024 * 1024), 3072);
    }

    /// Packs a real tree with mkfs.ext4 and reads a file back with debugfs.
    #[test]
    fn packs_a_tree_readable_by_debugfs() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: e2fsprogs not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hello"), b"world\n").unwrap();
        let img = dir.path().join("img.ext4");
        pack_dir(&src, &img, 64, "banger-test").unwrap();
        let meta = std::fs::metadata(&img).unwrap();
        assert_eq!(meta.len(), 64 * 1024 * 1024);
        assert!(meta.blocks() * 512 < meta.len(), "image should be sparse");
        let out = tool::run(
            Command::new("debugfs")
                .args(["-R", "cat /etc/hello"])
                .arg(&img),
        )
        .unwrap();
        assert_eq!(out, "world\n");
    }

    #[test]
    fn failed_pack_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img.ext4");
        let err = pack_dir(&dir.path().join("missing"), &img, 64, "x");
        assert!(err.is_err());
        assert!(!img.exists());
    }
}
