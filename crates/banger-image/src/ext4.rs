//! ext4 images built from directories with `mkfs.ext4 -d`, no mount needed.

use std::path::Path;
use std::process::Command;

use crate::{tool, ImageError};

/// Packs `src_dir` into a fresh sparse ext4 image of `size_mib` at `out`.
///
/// Files owned by the calling user land in the image owned by root: run as
/// root, ownership follows `src_dir` as it is; run as anyone else (the owner
/// daemon of a system install), mkfs.ext4 runs in a user namespace that maps
/// the caller to root, so a tree the daemon wrote itself becomes root's,
/// which is what a guest expects of `/root/.ssh` or `/etc`.
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    let map_root = unsafe { libc::geteuid() } != 0;
    let argv = mkfs_argv(src_dir, out, label, map_root);
    let res = tool::run(Command::new(&argv[0]).args(&argv[1..]));
    if let Err(e) = res {
        let _ = std::fs::remove_file(out);
        return Err(e.into());
    }
    Ok(())
}

/// mkfs.ext4's argv; with `map_root`, behind `unshare --user
/// --map-root-user` (util-linux), so the caller's files read as root's.
fn mkfs_argv(src_dir: &Path, out: &Path, label: &str, map_root: bool) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if map_root {
        argv.extend(["unshare", "--user", "--map-root-user", "--"].map(Into::into));
    }
    argv.extend(["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0"].map(Into::into));
    argv.extend(["-E", "lazy_itable_init=1,lazy_journal_init=1", "-d"].map(Into::into));
    argv.push(src_dir.into());
    argv.push(out.into());
    argv
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

    /// What the owner daemon of a system install gets: a tree written by an
    /// unprivileged user is root's inside the image. Runs mkfs as uid 4242
    /// (setpriv) when this test runs as root; skipped otherwise.
    #[test]
    fn an_unprivileged_pack_makes_the_callers_files_roots() {
        use std::os::unix::fs::chown;
        if unsafe_euid() != 0 || Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("skipping: needs root and setpriv to act as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join(".ssh")).unwrap();
        std::fs::write(src.join(".ssh/authorized_keys"), b"key\n").unwrap();
        for p in [&src, &src.join(".ssh"), &src.join(".ssh/authorized_keys")] {
            chown(p, Some(4242), Some(4242)).unwrap();
        }
        let img = dir.path().join("img.ext4");
        std::fs::write(&img, b"").unwrap();
        chown(&img, Some(4242), Some(4242)).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let argv = mkfs_argv(&src, &img, "t", true);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=4242", "--regid=4242", "--clear-groups", "--"])
            .args(&argv);
        tool::run(&mut cmd).unwrap();
        let out = tool::run(
            Command::new("debugfs")
                .args(["-R", "stat /.ssh/authorized_keys"])
                .arg(&img),
        )
        .unwrap();
        assert!(out.contains("User:     0   Group:     0"), "{out}");
    }

    fn unsafe_euid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
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
