//! Filesystem operations anchored on directory descriptors.
//!
//! The trees the helper works in (state and runtime dirs) belong to the
//! daemon's user, who can rename a directory and plant a symlink in its
//! place between a check and the next syscall. So every directory below a
//! configured root is opened with `O_NOFOLLOW` relative to its parent, and
//! the operations (link, mknod, mount, remove) go through those
//! descriptors or through `/proc/self/fd/N`, which the kernel resolves to
//! the very directory opened, never to a path looked up again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, Gid, Uid};

/// A filesystem step failed; the message names the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0} is a symlink or not a directory")]
    NotADir(PathBuf),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{0} is not owned by root; refusing to use it")]
    NotRootOwned(PathBuf),
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is still mounted after unmounting; refusing to remove it")]
    StillMounted(PathBuf),
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{src} is on another filesystem than {dst}; drives are hard-linked, never copied")]
    CrossDevice { src: PathBuf, dst: PathBuf },
}

pub type Result<T> = std::result::Result<T, FsError>;

pub fn sys(what: &'static str, path: &Path) -> impl FnOnce(Errno) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError::Sys { what, path, source }
}

pub fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FsError {
    let path = path.to_path_buf();
    move |source| FsError::Io { what, path, source }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `/proc/self/fd/N`: a path the kernel resolves to exactly what `fd` is.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Where the directory behind `fd` is now, as the kernel sees it.
pub fn real_path(fd: &impl AsRawFd, shown: &Path) -> Result<PathBuf> {
    std::fs::read_link(fd_path(fd)).map_err(io_err("resolve", shown))
}

/// Opens a configured root. It comes from the helper's command line and is
/// trusted as it is (symlinks in it included).
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    openat(AT_FDCWD, root, flags, Mode::empty()).map_err(sys("open", root))
}

/// Opens the directory `name` inside `parent` without following a symlink.
/// `Ok(None)` when it does not exist.
pub fn open_dir_at(parent: &OwnedFd, name: &str, shown: &Path) -> Result<Option<OwnedFd>> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(FsError::NotADir(shown.to_path_buf())),
        Err(e) => Err(sys("open", shown)(e)),
    }
}

/// Walks `path` (strictly below `root`) one directory at a time with
/// `O_NOFOLLOW`. `Ok(None)` when some component (or the root) does not
/// exist.
pub fn open_dir_beneath(root: &Path, path: &Path) -> Result<Option<OwnedFd>> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| FsError::NotADir(path.to_path_buf()))?;
    let mut fd = match open_root(root) {
        Err(FsError::Sys {
            source: Errno::ENOENT,
            ..
        }) => return Ok(None),
        other => other?,
    };
    let mut shown = root.to_path_buf();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(FsError::NotADir(path.to_path_buf()));
        };
        let name = name
            .to_str()
            .ok_or_else(|| FsError::NotADir(path.to_path_buf()))?;
        shown.push(name);
        match open_dir_at(&fd, name, &shown)? {
            Some(next) => fd = next,
            None => return Ok(None),
        }
    }
    Ok(Some(fd))
}

/// Opens the parent directory of `path` (below `root`) as in
/// [`open_dir_beneath`] and returns it with the leaf name.
pub fn open_parent_beneath<'p>(root: &Path, path: &'p Path) -> Result<(OwnedFd, &'p str)> {
    let not_found = || FsError::Sys {
        what: "open",
        path: path.to_path_buf(),
        source: Errno::ENOENT,
    };
    let leaf = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FsError::NotADir(path.to_path_buf()))?;
    let parent = path.parent().ok_or_else(not_found)?;
    let fd = if parent == root {
        open_root(root)?
    } else {
        open_dir_beneath(root, parent)?.ok_or_else(not_found)?
    };
    Ok((fd, leaf))
}

/// Makes the directory `name` in `parent` (it must not exist when `fresh`),
/// or opens it and checks root owns it; then sets `mode` and `uid:gid`.
pub fn ensure_dir(
    parent: &OwnedFd,
    name: &str,
    shown: &Path,
    mode: u32,
    owner: (u32, u32),
    fresh: bool,
) -> Result<OwnedFd> {
    match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => {}
        Err(Errno::EEXIST) if !fresh => {}
        Err(Errno::EEXIST) => return Err(FsError::Exists(shown.to_path_buf())),
        Err(e) => return Err(sys("create directory", shown)(e)),
    }
    let fd =
        open_dir_at(parent, name, shown)?.ok_or_else(|| FsError::NotADir(shown.to_path_buf()))?;
    let st = fstat(&fd).map_err(sys("stat", shown))?;
    if st.st_uid != 0 && st.st_uid != euid() {
        return Err(FsError::NotRootOwned(shown.to_path_buf()));
    }
    set_owner_mode(&fd, shown, mode, owner)?;
    Ok(fd)
}

/// `fchown` then `fchmod`, skipping the chown when we are not root (tests).
pub fn set_owner_mode(fd: &impl AsFd, shown: &Path, mode: u32, owner: (u32, u32)) -> Result<()> {
    if euid() == 0 {
        fchown(
            fd,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
        )
        .map_err(sys("chown", shown))?;
    }
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)).map_err(sys("chmod", shown))
}

pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// What `name` in `dir` is, without following a symlink.
pub fn kind_at(dir: &OwnedFd, name: &str, shown: &Path) -> Result<Option<SFlag>> {
    use nix::fcntl::AtFlags;
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(
            st.st_mode & SFlag::S_IFMT.bits(),
        ))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(sys("stat", shown)(e)),
    }
}

/// Removes `name` from `dir` unless it is a directory; a missing entry is
/// fine.
pub fn remove_entry(dir: &OwnedFd, name: &str, shown: &Path) -> Result<()> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    match kind_at(dir, name, shown)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => Err(FsError::Exists(shown.to_path_buf())),
        Some(_) => match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(sys("remove", shown)(e)),
        },
    }
}

/// Mount points from `/proc/self/mountinfo`, in mount order.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let p = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(p).map_err(io_err("read", p))?;
    Ok(parse_mount_points(&text))
}

/// The fifth field of each mountinfo line, with the kernel's octal escapes
/// (`\040` for a space...) decoded.
pub fn parse_mount_points(text: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| {
            let b = f.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let esc = b[i] == b'\\'
                    && i + 3 < b.len()
                    && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
                if esc {
                    let v = b[i + 1..i + 4]
                        .iter()
                        .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                    out.push(v as u8);
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// Mount points at `dir` or below it, deepest first.
pub fn mounts_under(points: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = points
        .iter()
        .filter(|p| p.starts_with(dir))
        .cloned()
        .collect();
    // Deepest first; among equals, the later (upper) mount first.
    v.reverse();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Detaches every mount at or below `dir` (deepest first, `MNT_DETACH |
/// UMOUNT_NOFOLLOW`), then checks nothing is left there: the guard that
/// lets a recursive removal run without reaching into a bind mount.
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    use nix::mount::{umount2, MntFlags};
    // A mount can hide another at the same place; a few rounds clear stacks.
    for _ in 0..8 {
        let under = mounts_under(&mount_points()?, dir);
        if under.is_empty() {
            return Ok(());
        }
        for p in under {
            match umount2(&p, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(e) => return Err(sys("unmount", &p)(e)),
            }
        }
    }
    match mounts_under(&mount_points()?, dir).into_iter().next() {
        Some(p) => Err(FsError::StillMounted(p)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        let text = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 22 0:30 / /s/jailer/firecracker/a/root rw - ext4 /dev/vda rw
36 35 0:30 /usr/lib /s/jailer/firecracker/a/root/usr/lib ro - ext4 /dev/vda rw
37 22 0:31 / /mnt/with\\040space rw - tmpfs tmpfs rw
38 22 0:31 / /s/jailer/firecracker/ab rw - tmpfs tmpfs rw
";
        let pts = parse_mount_points(text);
        assert_eq!(pts[3], PathBuf::from("/mnt/with space"));
        let under = mounts_under(&pts, Path::new("/s/jailer/firecracker/a"));
        assert_eq!(
            under,
            [
                PathBuf::from("/s/jailer/firecracker/a/root/usr/lib"),
                PathBuf::from("/s/jailer/firecracker/a/root"),
            ]
        );
    }
}
