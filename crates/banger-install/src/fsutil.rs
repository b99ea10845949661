//! Small file operations shared by the modules: atomic writes, copies into
//! a target's directory, and a tree removal that never crosses a mount.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The directory `path` lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory, so a rename or unlink in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A hidden temp file next to `target` (same directory, so same
/// filesystem). Its name never ends in `.service`/`.conf`, so neither
/// systemd nor tmpfiles.d ever reads a half-written one.
pub(crate) fn temp_beside(target: &Path) -> io::Result<tempfile::NamedTempFile> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(parent_dir(target))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// `mode` set with fchmod (not subject to the umask), fsync, rename, fsync
/// of the directory. Readers see the old file or the new one, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(parent_dir(path))
}

/// Writes `bytes` to a new temp file beside `target` with `mode`, fsynced,
/// and returns its path; the caller renames it into place or removes it.
pub(crate) fn stage_bytes(target: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let mut tmp = temp_beside(target)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    let path = tmp.into_temp_path().keep().map_err(|e| e.error)?;
    Ok(path)
}

/// Copies `src` to a new temp file beside `target` (contents and permission
/// bits, fsynced) and returns its path; the caller renames it into place
/// or removes it.
pub(crate) fn copy_beside(src: &Path, target: &Path, mode: Option<u32>) -> io::Result<PathBuf> {
    let mut from = File::open(src)?;
    let mode = match mode {
        Some(m) => m,
        None => from.metadata()?.permissions().mode() & 0o7777,
    };
    let mut tmp = temp_beside(target)?;
    io::copy(&mut from, tmp.as_file_mut())?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    let path = tmp.into_temp_path().keep().map_err(|e| e.error)?;
    Ok(path)
}

/// Removes `path` when it exists; true when something was removed.
pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo field.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Mount points at or below `dir` in `mountinfo` (the text of
/// `/proc/self/mountinfo`). `dir` must be canonical.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Why [`remove_tree`] stopped.
#[derive(Debug)]
pub(crate) enum TreeError {
    /// Something is mounted at or below the tree (a jail's bind mount, a
    /// loop device): removing through it could delete the host's files.
    Mounted(PathBuf),
    Io(PathBuf, io::Error),
}

/// Removes the directory tree at `dir` (absent is fine), never following a
/// symlink and never crossing into another mount: refuses up front when
/// `/proc/self/mountinfo` lists a mount point inside it, and again for any
/// entry on a different device found while walking.
pub(crate) fn remove_tree(dir: &Path) -> Result<bool, TreeError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(TreeError::Io(dir.to_path_buf(), e)),
    };
    if !meta.is_dir() {
        fs::remove_file(dir).map_err(|e| TreeError::Io(dir.to_path_buf(), e))?;
        return Ok(true);
    }
    let canonical = fs::canonicalize(dir).map_err(|e| TreeError::Io(dir.to_path_buf(), e))?;
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        if let Some(mp) = mounts_under(&info, &canonical).into_iter().next() {
            return Err(TreeError::Mounted(mp));
        }
    }
    remove_walk(dir, meta.dev())?;
    Ok(true)
}

fn remove_walk(dir: &Path, dev: u64) -> Result<(), TreeError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |e| TreeError::Io(p, e)
    };
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        // Directories only: on overlayfs a plain file reports the device of
        // the layer it lives in, not the overlay's. A file bind-mounted over
        // another is in mountinfo (checked up front), and unlinking a mount
        // point fails with EBUSY anyway.
        if meta.is_dir() && meta.dev() != dev {
            return Err(TreeError::Mounted(path));
        }
        if meta.is_dir() {
            remove_walk(&path, dev)?;
        } else {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    fs::remove_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_mode_despite_umask_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn mountinfo_escapes_and_prefixes() {
        let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 22 8:1 / /var/lib/banger/jailer/x/root/lib ro - ext4 /dev/vda rw\n\
                    41 22 8:1 / /var/lib/banger2 rw - ext4 /dev/vda rw\n\
                    42 22 8:1 / /var/lib/banger/a\\040b rw - ext4 /dev/vda rw\n";
        let got = mounts_under(info, Path::new("/var/lib/banger"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/var/lib/banger/jailer/x/root/lib"),
                PathBuf::from("/var/lib/banger/a b"),
            ]
        );
    }

    #[test]
    fn remove_tree_removes_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link")).unwrap();
        assert!(remove_tree(&tree).unwrap());
        assert!(!tree.exists());
        assert!(outside.join("keep").exists());
        assert!(!remove_tree(&tree).unwrap());
    }
}
