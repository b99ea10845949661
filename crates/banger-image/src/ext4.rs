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

/// The e2fsprogs tools [`grow`] runs; tests put failing stand-ins here.
struct GrowTools<'a> {
    e2fsck: &'a str,
    resize2fs: &'a str,
}

const E2FSPROGS: GrowTools<'static> = GrowTools {
    e2fsck: "e2fsck",
    resize2fs: "resize2fs",
};

/// Grows the ext4 image file `path` to `new_bytes` in place, keeping what
/// it holds. Returns false when it already has that size.
///
/// The order keeps a failure harmless: `e2fsck -fy` first (resize2fs wants
/// a freshly checked filesystem, and a damaged one is never grown); only
/// then is the file lengthened (sparse) and `resize2fs` run. If resize2fs
/// fails the file is cut back to its old length and checked again, so what
/// is left is the old, valid filesystem. A smaller size is refused: a work
/// disk only grows. The image must not be in use (no VM running on it).
pub fn grow(path: &Path, new_bytes: u64) -> Result<bool, ImageError> {
    grow_with(path, new_bytes, &E2FSPROGS)
}

fn grow_with(path: &Path, new_bytes: u64, tools: &GrowTools<'_>) -> Result<bool, ImageError> {
    let old = std::fs::metadata(path)
        .map_err(ImageError::io(format!("stat {}", path.display())))?
        .len();
    if new_bytes < old {
        return Err(ImageError::Invalid(format!(
            "{} is {old} bytes; it only grows, not to {new_bytes}",
            path.display()
        )));
    }
    if new_bytes == old {
        return Ok(false);
    }
    fsck(path, tools)?;
    set_len(path, new_bytes)?;
    let kib = format!("{}K", new_bytes / 1024);
    let resized = tool::run(
        Command::new(tools.resize2fs)
            .arg(path)
            .arg(&kib)
            .env("LC_ALL", "C"),
    );
    if let Err(e) = resized {
        let restored = set_len(path, old).and_then(|()| fsck(path, tools));
        return Err(ImageError::Invalid(match restored {
            Ok(()) => format!(
                "{e}; {} was left at its old size and checks clean",
                path.display()
            ),
            Err(again) => format!(
                "{e}; cutting {} back to its old size did not leave a clean filesystem: {again}",
                path.display()
            ),
        }));
    }
    Ok(true)
}

/// `e2fsck -fy`: 0 (clean) and 1 (errors corrected) are fine.
fn fsck(path: &Path, tools: &GrowTools<'_>) -> Result<(), ImageError> {
    let out = Command::new(tools.e2fsck)
        .args(["-f", "-y"])
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| tool::ToolError::Spawn {
            tool: tools.e2fsck.to_string(),
            source,
        })?;
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text.trim_end().lines().collect();
            Err(tool::ToolError::Failed {
                tool: tools.e2fsck.to_string(),
                status: out.status.to_string(),
                stderr: lines[lines.len().saturating_sub(20)..].join("\n"),
            }
            .into())
        }
    }
}

fn set_len(path: &Path, len: u64) -> Result<(), ImageError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(ImageError::io(format!(
            "resize {} to {len} bytes",
            path.display()
        )))
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

    fn debugfs(img: &Path, request: &str) -> String {
        tool::run(Command::new("debugfs").args(["-R", request]).arg(img)).unwrap()
    }

    /// Filesystem size in bytes, as the superblock says.
    fn fs_bytes(img: &Path) -> u64 {
        let out = tool::run(Command::new("dumpe2fs").arg("-h").arg(img)).unwrap();
        let field = |k: &str| -> u64 {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        field("Block count:") * field("Block size:")
    }

    /// A 64 MiB image holding /hello, written with debugfs.
    fn small_image(dir: &Path) -> Option<std::path::PathBuf> {
        if Command::new("resize2fs").output().is_err() {
            eprintln!("skipping: e2fsprogs not installed");
            return None;
        }
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let img = dir.join("work.ext4");
        pack_dir(&src, &img, 64, "banger-work").unwrap();
        let data = dir.join("data");
        std::fs::write(&data, b"kept across the resize\n").unwrap();
        let w = format!("write {} hello", data.display());
        tool::run(Command::new("debugfs").args(["-w", "-R", &w]).arg(&img)).unwrap();
        assert_eq!(debugfs(&img, "cat /hello"), "kept across the resize\n");
        Some(img)
    }

    #[test]
    fn grow_keeps_the_data_and_grows_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = small_image(dir.path()) else {
            return;
        };
        assert_eq!(fs_bytes(&img), 64 << 20);
        assert!(grow(&img, 200 << 20).unwrap());
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 200 << 20);
        assert_eq!(fs_bytes(&img), 200 << 20);
        assert_eq!(debugfs(&img, "cat /hello"), "kept across the resize\n");
        // Growing stays sparse: far less allocated than the new length.
        let meta = std::fs::metadata(&img).unwrap();
        assert!(meta.blocks() * 512 < 64 << 20, "{}", meta.blocks());
        // Same size: nothing to do; smaller: refused, nothing touched.
        assert!(!grow(&img, 200 << 20).unwrap());
        let e = grow(&img, 100 << 20).unwrap_err().to_string();
        assert!(e.contains("only grows"), "{e}");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 200 << 20);
    }

    #[test]
    fn a_failed_resize_leaves_the_old_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let Some(img) = small_image(dir.path()) else {
            return;
        };
        let failing = GrowTools {
            e2fsck: "e2fsck",
            resize2fs: "false",
        };
        let e = grow_with(&img, 200 << 20, &failing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("false failed") && e.contains("old size"), "{e}");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
        assert_eq!(fs_bytes(&img), 64 << 20);
        assert_eq!(debugfs(&img, "cat /hello"), "kept across the resize\n");
    }

    #[test]
    fn a_damaged_or_foreign_image_is_not_grown() {
        let dir = tempfile::tempdir().unwrap();
        if Command::new("e2fsck").arg("-V").output().is_err() {
            eprintln!("skipping: e2fsprogs not installed");
            return;
        }
        let img = dir.path().join("junk.ext4");
        std::fs::write(&img, vec![0x5a; 1 << 20]).unwrap();
        let e = grow(&img, 4 << 20).unwrap_err().to_string();
        assert!(e.contains("e2fsck failed"), "{e}");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 20);
        let e = grow(&dir.path().join("missing"), 4 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
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
