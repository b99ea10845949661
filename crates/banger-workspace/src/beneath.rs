//! Opening paths of a checkout without ever following a symlink.
//!
//! The work tree belongs to the user, and what ships to the guest must be
//! the checkout, not whatever a symlink inside it points at (`/etc`, a
//! secrets directory, `../..`). Every path is therefore opened one
//! component at a time relative to the descriptor of its parent, which was
//! itself opened that way starting from the repo root. Each step uses
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so the kernel refuses
//! any symlink (and `..`, and absolute names) outright; on kernels without
//! `openat2` (before 5.6, or a seccomp filter that hides it) the step falls
//! back to `openat(O_NOFOLLOW)` of the single component, which refuses a
//! symlink just the same because there is nothing else to resolve.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

/// Set once openat2 turned out to be unavailable; later opens go straight
/// to the fallback.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Why a component could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The component is a symlink.
    Symlink,
    /// The component does not exist (or an ancestor stopped being a
    /// directory): the path vanished from the work tree.
    Missing,
    /// The component exists but is not a directory (for [`open_dir`]).
    NotADirectory,
    Sys(Errno),
}

/// Flags for reading a file: never follow a symlink, never block on a FIFO
/// that slipped in between the type check and the open.
pub(crate) const FILE_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens the directory `name` (one component) beneath `dir`.
pub(crate) fn open_dir(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, OpenError> {
    open_component(
        dir.as_fd(),
        name,
        DIR_FLAGS,
        !NO_OPENAT2.load(Ordering::Relaxed),
    )
}

/// Opens the file `name` (one component) beneath `dir` for reading.
pub(crate) fn open_file(dir: impl AsFd, name: &OsStr) -> Result<OwnedFd, OpenError> {
    open_component(
        dir.as_fd(),
        name,
        FILE_FLAGS,
        !NO_OPENAT2.load(Ordering::Relaxed),
    )
}

/// The lstat of `name` beneath `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: impl AsFd, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn is_type(st: &FileStat, t: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == t
}

pub(crate) fn open_component(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    try_openat2: bool,
) -> Result<OwnedFd, OpenError> {
    // One normal component only; `..`, `.`, "" and anything with a slash
    // would walk somewhere else.
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(OpenError::Sys(Errno::EINVAL));
    }
    if try_openat2 {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        match openat2(dir, name, how) {
            Ok(fd) => return Ok(fd),
            // Not in this kernel, or hidden by a seccomp filter (older
            // container runtimes answer EPERM for syscalls they do not
            // know; a plain read-only open never fails with EPERM).
            Err(Errno::ENOSYS | Errno::EPERM) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(e) => return Err(classify(dir, name, e)),
        }
    }
    openat(dir, name, flags, Mode::empty()).map_err(|e| classify(dir, name, e))
}

/// Turns an open failure into what happened to the path.
fn classify(dir: std::os::fd::BorrowedFd<'_>, name: &OsStr, e: Errno) -> OpenError {
    match e {
        Errno::ENOENT => OpenError::Missing,
        // RESOLVE_NO_SYMLINKS and O_NOFOLLOW both answer ELOOP for a
        // symlink; O_DIRECTORY on a symlink may answer ENOTDIR instead, so
        // ask what the component is.
        Errno::ELOOP | Errno::ENOTDIR => match lstat_at(dir, name) {
            Ok(Some(st)) if is_type(&st, SFlag::S_IFLNK) => OpenError::Symlink,
            Ok(Some(_)) if e == Errno::ENOTDIR => OpenError::NotADirectory,
            Ok(None) => OpenError::Missing,
            _ => OpenError::Sys(e),
        },
        e => OpenError::Sys(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn fixture() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("dir/file"), b"content").unwrap();
        std::fs::write(root.join("plain"), b"x").unwrap();
        std::os::unix::fs::symlink("dir", root.join("link-dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link-file")).unwrap();
        let fd = openat(nix::fcntl::AT_FDCWD, root, DIR_FLAGS, Mode::empty()).unwrap();
        (t, fd)
    }

    /// Both the openat2 path and the O_NOFOLLOW fallback must judge every
    /// kind of component the same way.
    #[test]
    fn openat2_and_fallback_agree() {
        let (_t, root) = fixture();
        for use_openat2 in [true, false] {
            let open = |name: &str, flags| {
                open_component(root.as_fd(), OsStr::new(name), flags, use_openat2)
            };
            let dir = open("dir", DIR_FLAGS).unwrap();
            let file = open_file(&dir, OsStr::new("file")).unwrap();
            let mut s = String::new();
            std::fs::File::from(file).read_to_string(&mut s).unwrap();
            assert_eq!(s, "content");

            assert_eq!(open("link-dir", DIR_FLAGS).unwrap_err(), OpenError::Symlink);
            assert_eq!(
                open("link-file", FILE_FLAGS).unwrap_err(),
                OpenError::Symlink
            );
            assert_eq!(
                open("link-file", DIR_FLAGS).unwrap_err(),
                OpenError::Symlink
            );
            assert_eq!(open("missing", DIR_FLAGS).unwrap_err(), OpenError::Missing);
            assert_eq!(
                open("plain", DIR_FLAGS).unwrap_err(),
                OpenError::NotADirectory
            );
            for bad in ["..", ".", "", "dir/file"] {
                assert_eq!(
                    open(bad, FILE_FLAGS).unwrap_err(),
                    OpenError::Sys(Errno::EINVAL),
                    "{bad:?}"
                );
            }
        }
    }
}
