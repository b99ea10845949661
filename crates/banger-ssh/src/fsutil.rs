//! Replacing files atomically: write a temporary file in the same directory,
//! fsync it, rename it over the target, fsync the directory. A crash leaves
//! either the old file or the new one, never a half-written one.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tempfile::NamedTempFile;

use crate::SshError;

/// Writes `path` atomically (temporary file in the same directory, then
/// rename), mode 0600, creating missing parent directories with mode 0700.
///
/// Used for the ssh_config include file and for known_hosts files.
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), SshError> {
    create_private_dir_all(parent_of(path))?;
    replace_file(path, contents.as_bytes(), 0o600, None)
}

/// The directory `path` lives in (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents with mode 0700. An existing
/// directory is left as it is.
pub(crate) fn create_private_dir_all(dir: &Path) -> Result<(), SshError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SshError::io("creating directory", dir))
}

/// Writes `bytes` to a new temporary file next to `path` with exactly `mode`
/// (not reduced by the umask) and, when given, the owner `(uid, gid)`; the
/// data is fsynced before this returns.
fn stage(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<NamedTempFile, SshError> {
    let dir = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let prefix = format!(".{}.", name.as_deref().unwrap_or("banger"));
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(SshError::io("creating a temporary file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    let file: &mut File = tmp.as_file_mut();
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(SshError::io("setting the mode of", &tmp_path))?;
    if let Some((uid, gid)) = owner {
        let meta = file
            .metadata()
            .map_err(SshError::io("reading metadata of", &tmp_path))?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&*file, Some(uid), Some(gid))
                .map_err(SshError::io("setting the owner of", &tmp_path))?;
        }
    }
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(SshError::io("writing", &tmp_path))?;
    Ok(tmp)
}

/// Atomically replaces (or creates) `path` with `bytes`.
pub(crate) fn replace_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), SshError> {
    let tmp = stage(path, bytes, mode, owner)?;
    tmp.persist(path)
        .map_err(|e| SshError::io("replacing", path)(e.error))?;
    sync_dir(parent_of(path))
}

/// Atomically creates `path` with `bytes` unless it already exists: returns
/// `Ok(false)` (and writes nothing) when something else got there first.
pub(crate) fn create_file_noclobber(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<bool, SshError> {
    let tmp = stage(path, bytes, mode, None)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(SshError::io("creating", path)(e.error)),
    }
    sync_dir(parent_of(path))?;
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), SshError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SshError::io("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn write_atomic_creates_private_parents_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/known_hosts");
        write_atomic(&path, "box.vm ssh-ed25519 AAAA\n").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "box.vm ssh-ed25519 AAAA\n"
        );
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
    }

    #[test]
    fn write_atomic_replaces_and_resets_mode_leaving_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("include");
        fs::write(&path, "old contents that are longer than the new ones\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, "new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("include")]);
    }

    #[test]
    fn write_atomic_names_the_directory_it_cannot_create() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        fs::write(&blocker, "").unwrap();
        let err = write_atomic(&blocker.join("sub/known_hosts"), "x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("creating directory "), "{msg}");
        assert!(msg.contains(&blocker.display().to_string()), "{msg}");
    }

    #[test]
    fn noclobber_keeps_the_first_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        assert!(create_file_noclobber(&path, b"first", 0o600).unwrap());
        assert!(!create_file_noclobber(&path, b"second", 0o600).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
