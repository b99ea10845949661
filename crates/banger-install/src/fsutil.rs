//! Small file operations shared by the modules: atomic writes and copies
//! into a target's directory.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
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
}
