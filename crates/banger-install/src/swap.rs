//! Replacing installed files so that every path always holds a complete
//! file, old or new, and a failed install or update can be undone.
//!
//! [`atomic_replace`] keeps the old file as `<dst><suffix>` (normally
//! [`BACKUP_SUFFIX`]) and renames the new one over `dst`; [`rollback_replace`]
//! puts the backup back. [`Swap`] does that for a list of files and unwinds
//! what it did.
//!
//! The final step is always a rename within the target's directory. A
//! staged file on another filesystem (rename fails with `EXDEV`) is first
//! copied to a temp file beside the target, fsynced, and that is renamed.
//!
//! Mode and owner are the caller's job: stage the new file with its final
//! permissions (0755 for binaries, 0644 for units) as the user that should
//! own it (root for an install). A rename keeps both; the `EXDEV` copy keeps
//! the permission bits and is owned by the process that copies.
//!
//! Backups end in `.previous`, which neither systemd (units must end in
//! `.service`) nor tmpfiles.d (`.conf`) reads.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;

/// The default backup suffix: `/usr/local/bin/banger.previous`.
pub const BACKUP_SUFFIX: &str = ".previous";

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("refusing backup suffix {0:?}: it must be non-empty and contain no '/'")]
    BadSuffix(String),
    #[error("refusing to install {}: not a regular file", .0.display())]
    SourceNotFile(PathBuf),
    #[error("refusing to replace {}: it is a directory", .0.display())]
    TargetIsDir(PathBuf),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// Several failures, e.g. from a rollback that kept going.
    #[error("{}", join(.0))]
    Many(Vec<SwapError>),
}

fn join(errors: &[SwapError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SwapError {
    let path = path.to_path_buf();
    move |source| SwapError::Io {
        action,
        path,
        source,
    }
}

fn check_suffix(suffix: &str) -> Result<(), SwapError> {
    if suffix.is_empty() || suffix.contains('/') {
        return Err(SwapError::BadSuffix(suffix.to_string()));
    }
    Ok(())
}

/// `dst` with `suffix` appended to its file name.
pub fn backup_path(dst: &Path, suffix: &str) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

enum Backup {
    /// `dst` did not exist (a fresh install): no backup.
    None,
    /// Hard link `dst` → backup: `dst` itself never went away.
    Linked(PathBuf),
    /// `dst` renamed to the backup (hard links refused).
    Renamed(PathBuf),
}

/// Moves `src` to `dst`: a rename, or on `EXDEV` a copy to a temp file
/// beside `dst` renamed into place (and `src` removed).
fn move_into_place(src: &Path, dst: &Path) -> Result<(), SwapError> {
    match fs::rename(src, dst) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {}
        Err(e) => return Err(io_err("rename into place", dst)(e)),
    }
    let tmp =
        fsutil::copy_beside(src, dst, None).map_err(io_err("copy across filesystems to", dst))?;
    if let Err(e) = fs::rename(&tmp, dst) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("rename into place", dst)(e));
    }
    // The new file is in place; a leftover staged copy is only clutter.
    let _ = fs::remove_file(src);
    Ok(())
}

/// Replaces `dst` with the regular file `new_src` (consumed): an existing
/// `dst` is first hard-linked (or, if that is refused, renamed) to
/// `<dst><suffix>`, replacing any stale backup; then `new_src` is renamed
/// over `dst`. When `dst` does not exist a stale backup is removed, so
/// [`rollback_replace`] knows to remove `dst` rather than restore. If the
/// rename fails, the backup step is undone. An empty suffix is refused (the
/// backup would be `dst` itself).
pub fn atomic_replace(new_src: &Path, dst: &Path, suffix: &str) -> Result<(), SwapError> {
    check_suffix(suffix)?;
    let meta = fs::symlink_metadata(new_src).map_err(io_err("inspect", new_src))?;
    if !meta.is_file() {
        return Err(SwapError::SourceNotFile(new_src.to_path_buf()));
    }
    let backup = backup_path(dst, suffix);
    let exists = match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => return Err(SwapError::TargetIsDir(dst.to_path_buf())),
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err("inspect", dst)(e)),
    };
    fsutil::remove_file_if_exists(&backup).map_err(io_err("remove stale backup", &backup))?;
    let undo = if exists {
        match fs::hard_link(dst, &backup) {
            Ok(()) => Backup::Linked(backup),
            Err(_) => {
                fs::rename(dst, &backup).map_err(io_err("back up", dst))?;
                Backup::Renamed(backup)
            }
        }
    } else {
        Backup::None
    };
    let result = File::open(new_src)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", new_src))
        .and_then(|()| move_into_place(new_src, dst));
    match result {
        Ok(()) => {
            // Best effort: the replacement has happened either way, and
            // reporting a failure here would hide it from a rollback.
            let _ = fsutil::sync_dir(fsutil::parent_dir(dst));
            Ok(())
        }
        Err(e) => {
            let restored = match undo {
                Backup::None => Ok(()),
                Backup::Linked(b) => fs::remove_file(&b).map_err(io_err("remove backup", &b)),
                Backup::Renamed(b) => fs::rename(&b, dst).map_err(io_err("restore", dst)),
            };
            match restored {
                Ok(()) => Err(e),
                Err(r) => Err(SwapError::Many(vec![e, r])),
            }
        }
    }
}

/// What [`rollback_replace`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolledBack {
    /// `<dst><suffix>` renamed back over `dst`.
    Restored,
    /// No backup (a fresh install): `dst` removed.
    Removed,
    /// Neither a backup nor `dst`.
    Absent,
}

/// Undoes [`atomic_replace`]: renames `<dst><suffix>` back to `dst`, or,
/// with no backup (a fresh install), removes `dst`. Only call it for a `dst`
/// that `atomic_replace` did replace: without a backup it deletes `dst`.
pub fn rollback_replace(dst: &Path, suffix: &str) -> Result<RolledBack, SwapError> {
    check_suffix(suffix)?;
    let backup = backup_path(dst, suffix);
    let done = match fs::symlink_metadata(&backup) {
        Ok(_) => {
            fs::rename(&backup, dst).map_err(io_err("restore", dst))?;
            RolledBack::Restored
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if fsutil::remove_file_if_exists(dst).map_err(io_err("remove", dst))? {
                RolledBack::Removed
            } else {
                RolledBack::Absent
            }
        }
        Err(e) => return Err(io_err("inspect", &backup)(e)),
    };
    let _ = fsutil::sync_dir(fsutil::parent_dir(dst));
    Ok(done)
}

/// Several [`atomic_replace`]s that succeed or are undone together.
///
/// ```no_run
/// # use banger_install::swap::{Swap, BACKUP_SUFFIX};
/// # use std::path::Path;
/// # fn start_services() -> Result<(), String> { Ok(()) }
/// let mut swap = Swap::new(BACKUP_SUFFIX)?;
/// let staged = [(Path::new("/usr/local/bin/.banger.new"), Path::new("/usr/local/bin/banger"))];
/// let ok = swap.replace_all(staged).is_ok() && start_services().is_ok();
/// if ok {
///     swap.cleanup_backups()?;
/// } else {
///     swap.rollback()?;
/// }
/// # Ok::<(), banger_install::swap::SwapError>(())
/// ```
#[derive(Debug)]
#[must_use = "a Swap must be rolled back or have its backups cleaned up"]
pub struct Swap {
    suffix: String,
    replaced: Vec<PathBuf>,
}

impl Swap {
    /// An empty swap keeping backups as `<dst><suffix>`.
    pub fn new(suffix: &str) -> Result<Swap, SwapError> {
        check_suffix(suffix)?;
        Ok(Swap {
            suffix: suffix.to_string(),
            replaced: Vec::new(),
        })
    }

    /// [`atomic_replace`]s `dst` with `src` and records it on success.
    pub fn replace(&mut self, src: &Path, dst: &Path) -> Result<(), SwapError> {
        atomic_replace(src, dst, &self.suffix)?;
        self.replaced.push(dst.to_path_buf());
        Ok(())
    }

    /// Replaces each `(src, dst)` in order, stopping at the first failure;
    /// [`Swap::replaced`] then says how far it got. Nothing is undone here:
    /// call [`Swap::rollback`].
    pub fn replace_all<S, D>(
        &mut self,
        pairs: impl IntoIterator<Item = (S, D)>,
    ) -> Result<(), SwapError>
    where
        S: AsRef<Path>,
        D: AsRef<Path>,
    {
        for (src, dst) in pairs {
            self.replace(src.as_ref(), dst.as_ref())?;
        }
        Ok(())
    }

    /// The targets replaced so far, in order.
    pub fn replaced(&self) -> &[PathBuf] {
        &self.replaced
    }

    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Adds `other`'s replacements after this one's (same suffix required),
    /// so one rollback unwinds both.
    pub fn absorb(&mut self, other: Swap) -> Result<(), SwapError> {
        if other.suffix != self.suffix {
            return Err(SwapError::BadSuffix(other.suffix));
        }
        self.replaced.extend(other.replaced);
        Ok(())
    }

    /// Undoes every replacement, last first ([`rollback_replace`]), going
    /// on past failures; the errors come back joined, and the targets that
    /// failed stay recorded so a second call can retry them.
    pub fn rollback(&mut self) -> Result<(), SwapError> {
        let mut errors = Vec::new();
        let mut failed = Vec::new();
        while let Some(dst) = self.replaced.pop() {
            if let Err(e) = rollback_replace(&dst, &self.suffix) {
                errors.push(e);
                failed.push(dst);
            }
        }
        failed.reverse();
        self.replaced = failed;
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(SwapError::Many(errors)),
        }
    }

    /// Keeps the new files: removes every backup this swap made (absent
    /// ones are fine). Afterwards nothing can be rolled back.
    pub fn cleanup_backups(self) -> Result<(), SwapError> {
        let mut errors = Vec::new();
        for dst in &self.replaced {
            let backup = backup_path(dst, &self.suffix);
            if let Err(e) = fsutil::remove_file_if_exists(&backup) {
                errors.push(io_err("remove backup", &backup)(e));
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(SwapError::Many(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn write(p: &Path, s: &str) {
        fs::write(p, s).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn replace_keeps_previous_and_rollback_restores() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("banger");
        let new = d.path().join(".banger.new");
        write(&dst, "old");
        write(&new, "new");
        let old_ino = fs::metadata(&dst).unwrap().ino();
        atomic_replace(&new, &dst, BACKUP_SUFFIX).unwrap();
        assert_eq!(read(&dst), "new");
        assert!(!new.exists());
        let prev = d.path().join("banger.previous");
        assert_eq!(read(&prev), "old");
        assert_eq!(fs::metadata(&prev).unwrap().ino(), old_ino);
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            rollback_replace(&dst, BACKUP_SUFFIX).unwrap(),
            RolledBack::Restored
        );
        assert_eq!(read(&dst), "old");
        assert!(!prev.exists());
    }

    #[test]
    fn fresh_install_rolls_back_by_removing() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("bangerd");
        let new = d.path().join("staged");
        write(&new, "new");
        atomic_replace(&new, &dst, BACKUP_SUFFIX).unwrap();
        assert!(!d.path().join("bangerd.previous").exists());
        assert_eq!(
            rollback_replace(&dst, BACKUP_SUFFIX).unwrap(),
            RolledBack::Removed
        );
        assert!(!dst.exists());
        assert_eq!(
            rollback_replace(&dst, BACKUP_SUFFIX).unwrap(),
            RolledBack::Absent
        );
    }

    #[test]
    fn stale_backup_is_replaced_or_removed() {
        let d = tempfile::tempdir().unwrap();
        // dst exists: the stale backup gives way to the current file.
        let dst = d.path().join("a");
        let new = d.path().join("a.new");
        write(&dst, "current");
        write(&d.path().join("a.previous"), "stale");
        write(&new, "new");
        atomic_replace(&new, &dst, BACKUP_SUFFIX).unwrap();
        assert_eq!(read(&d.path().join("a.previous")), "current");
        rollback_replace(&dst, BACKUP_SUFFIX).unwrap();
        assert_eq!(read(&dst), "current");

        // dst absent: the stale backup must not come back on rollback.
        let dst = d.path().join("b");
        let new = d.path().join("b.new");
        write(&d.path().join("b.previous"), "stale");
        write(&new, "new");
        atomic_replace(&new, &dst, BACKUP_SUFFIX).unwrap();
        assert!(!d.path().join("b.previous").exists());
        assert_eq!(
            rollback_replace(&dst, BACKUP_SUFFIX).unwrap(),
            RolledBack::Removed
        );
        assert!(!dst.exists());
    }

    #[test]
    fn bad_suffixes_and_sources_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("x");
        let src = d.path().join("y");
        write(&src, "y");
        for s in ["", "/x", "a/b"] {
            assert!(matches!(
                atomic_replace(&src, &dst, s),
                Err(SwapError::BadSuffix(_))
            ));
            assert!(matches!(
                rollback_replace(&dst, s),
                Err(SwapError::BadSuffix(_))
            ));
            assert!(Swap::new(s).is_err());
        }
        let dir = d.path().join("dir");
        fs::create_dir(&dir).unwrap();
        assert!(matches!(
            atomic_replace(&dir, &dst, BACKUP_SUFFIX),
            Err(SwapError::SourceNotFile(_))
        ));
        std::os::unix::fs::symlink(&src, d.path().join("link")).unwrap();
        assert!(matches!(
            atomic_replace(&d.path().join("link"), &dst, BACKUP_SUFFIX),
            Err(SwapError::SourceNotFile(_))
        ));
        assert!(matches!(
            atomic_replace(&src, &dir, BACKUP_SUFFIX),
            Err(SwapError::TargetIsDir(_))
        ));
        let e = atomic_replace(&d.path().join("missing"), &dst, BACKUP_SUFFIX).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(read(&src), "y");
    }

    #[test]
    fn partial_failure_rolls_back_in_reverse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(&p.join("one"), "old1");
        // "two" is new (fresh install); "three"'s parent is a file.
        write(&p.join("notadir"), "file");
        for (n, s) in [("s1", "new1"), ("s2", "new2"), ("s3", "new3")] {
            write(&p.join(n), s);
        }
        let pairs = [
            (p.join("s1"), p.join("one")),
            (p.join("s2"), p.join("two")),
            (p.join("s3"), p.join("notadir/three")),
        ];
        let mut swap = Swap::new(BACKUP_SUFFIX).unwrap();
        let e = swap
            .replace_all(pairs.iter().map(|(a, b)| (a, b)))
            .unwrap_err();
        assert!(e.to_string().contains("notadir/three"), "{e}");
        assert_eq!(swap.replaced(), [p.join("one"), p.join("two")]);
        assert_eq!(read(&p.join("one")), "new1");
        // The failed source is untouched.
        assert_eq!(read(&p.join("s3")), "new3");
        swap.rollback().unwrap();
        assert!(swap.replaced().is_empty());
        assert_eq!(read(&p.join("one")), "old1");
        assert!(!p.join("two").exists());
        assert!(!p.join("one.previous").exists());
        assert_eq!(read(&p.join("notadir")), "file");
    }

    #[test]
    fn rollback_goes_on_past_failures_and_joins_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let mut swap = Swap::new(BACKUP_SUFFIX).unwrap();
        for n in ["a", "b", "c"] {
            write(&p.join(n), "old");
            write(&p.join(format!("{n}.new")), "new");
            swap.replace(&p.join(format!("{n}.new")), &p.join(n))
                .unwrap();
        }
        // Make restoring "a" and "c" fail: their targets became directories.
        for n in ["a", "c"] {
            fs::remove_file(p.join(n)).unwrap();
            fs::create_dir(p.join(n)).unwrap();
            fs::write(p.join(n).join("x"), "").unwrap();
        }
        let e = swap.rollback().unwrap_err();
        let SwapError::Many(errs) = &e else {
            panic!("{e}")
        };
        assert_eq!(errs.len(), 2);
        let msg = e.to_string();
        assert!(msg.contains("restore") && msg.contains("; "), "{msg}");
        assert_eq!(read(&p.join("b")), "old");
        assert_eq!(swap.replaced(), [p.join("a"), p.join("c")]);
    }

    #[test]
    fn cleanup_removes_only_this_swaps_backups() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(&p.join("a"), "old");
        write(&p.join("a.new"), "new");
        write(&p.join("other.previous"), "not ours");
        let mut swap = Swap::new(BACKUP_SUFFIX).unwrap();
        swap.replace(&p.join("a.new"), &p.join("a")).unwrap();
        assert!(p.join("a.previous").exists());
        swap.cleanup_backups().unwrap();
        assert!(!p.join("a.previous").exists());
        assert!(p.join("other.previous").exists());
        assert_eq!(read(&p.join("a")), "new");
    }

    #[test]
    fn custom_suffix_and_absorb() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(&p.join("a"), "old");
        write(&p.join("a.new"), "new");
        let mut s1 = Swap::new(".bak").unwrap();
        let mut s2 = Swap::new(".bak").unwrap();
        s2.replace(&p.join("a.new"), &p.join("a")).unwrap();
        assert!(p.join("a.bak").exists());
        s1.absorb(s2).unwrap();
        assert!(s1.absorb(Swap::new(".other").unwrap()).is_err());
        s1.rollback().unwrap();
        assert_eq!(read(&p.join("a")), "old");
    }

    /// A staged file on tmpfs (/dev/shm) replacing one on the disk: rename
    /// fails with EXDEV and the copy path runs.
    #[test]
    fn cross_filesystem_source_is_copied_then_renamed() {
        let shm = Path::new("/dev/shm");
        let Ok(src_dir) = tempfile::tempdir_in(shm) else {
            eprintln!("skipping: cannot create a tempdir in /dev/shm");
            return;
        };
        let dst_dir = tempfile::tempdir().unwrap();
        let src_dev = fs::metadata(src_dir.path()).unwrap().dev();
        let dst_dev = fs::metadata(dst_dir.path()).unwrap().dev();
        if src_dev == dst_dev {
            eprintln!("skipping: /dev/shm and the target dir are on the same filesystem");
            return;
        }
        let src = src_dir.path().join("banger");
        write(&src, "new");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
        // Prove the precondition: a plain rename really gives EXDEV.
        let e = fs::rename(&src, dst_dir.path().join("probe")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::CrossesDevices);

        let dst = dst_dir.path().join("banger");
        write(&dst, "old");
        atomic_replace(&src, &dst, BACKUP_SUFFIX).unwrap();
        assert_eq!(read(&dst), "new");
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert_eq!(read(&dst_dir.path().join("banger.previous")), "old");
        assert!(!src.exists(), "the source is consumed, as by a rename");
        let names: Vec<_> = fs::read_dir(dst_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
        rollback_replace(&dst, BACKUP_SUFFIX).unwrap();
        assert_eq!(read(&dst), "old");
    }
}
