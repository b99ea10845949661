//! Cloning a base image into a VM's own root disk when device-mapper is
//! not available, and creating the sparse COW store when it is.
//!
//! A clone is a reflink where the filesystem can share extents (`FICLONE`:
//! instant, no space used until the guest writes) and a sparse copy
//! otherwise: only the base's data extents are copied (`SEEK_DATA` /
//! `SEEK_HOLE`), so a mostly-empty 4 GiB image stays small on disk.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{CowError, CowKind};

/// `FICLONE` from `<linux/fs.h>`: `_IOW(0x94, 9, int)`. The libc crate
/// does not export it.
const FICLONE: libc::Ioctl = 0x4004_9409;

/// Chunk size of the dm-snapshot COW store in bytes: the `P 8` in the
/// table is 8 sectors.
pub const COW_CHUNK: u64 = 8 * 512;

/// Bytes per read/write round in the fallback copy.
const COPY_BUF: usize = 1 << 20;

/// Clones `src` into the new file `dst` (mode 0600) and says how.
///
/// The copy is written under a temporary name in `dst`'s directory and
/// renamed into place only once complete and synced, so a failure or a
/// crash never leaves a half-written disk at `dst`. An existing `dst` is
/// never replaced: it may be a VM's disk.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CowKind, CowError> {
    let src_file = File::open(src).map_err(CowError::io("open", src))?;
    let md = src_file.metadata().map_err(CowError::io("stat", src))?;
    if !md.is_file() {
        return Err(CowError::Invalid(format!(
            "{} is not a regular file",
            src.display()
        )));
    }
    if dst.symlink_metadata().is_ok() {
        return Err(CowError::Exists(dst.to_path_buf()));
    }
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.as_deref().unwrap_or("clone")))
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .map_err(CowError::io("create a temporary file in", dir))?;
    // From here on, any early return drops `tmp`, which deletes it.
    let kind = match ficlone(tmp.as_file(), &src_file) {
        Ok(()) => CowKind::Reflink,
        Err(e) if reflink_unsupported(&e) => {
            sparse_copy(&src_file, tmp.as_file(), md.len(), true)
                .map_err(CowError::io("copy", src))?;
            CowKind::SparseCopy
        }
        Err(e) => return Err(CowError::io("reflink", src)(e)),
    };
    tmp.as_file()
        .sync_all()
        .map_err(CowError::io("sync", tmp.path()))?;
    tmp.persist_noclobber(dst).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            CowError::Exists(dst.to_path_buf())
        } else {
            CowError::io("rename into place", dst)(e.error)
        }
    })?;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(CowError::io("sync directory", dir))?;
    Ok(kind)
}

/// Shares `src`'s extents into `dst` (which must be empty).
fn ficlone(dst: &File, src: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument
    // and reads or writes no memory of ours; both descriptors stay open
    // for the whole call because we hold the `File`s.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The errors that mean "this filesystem (pair) cannot reflink", as
/// opposed to a real failure: no support (`EOPNOTSUPP`), different
/// filesystems (`EXDEV`), or a file the filesystem will not clone
/// (`EINVAL`, e.g. mismatched block alignment).
fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL)
    )
}

/// Copies the first `len` bytes of `src` into the empty `dst`, data
/// extents only; holes (including a trailing one) stay holes.
/// `copy_file_range` is used for the data when `use_cfr`, falling back to
/// `pread`/`pwrite` where the kernel or filesystem cannot do it.
pub(crate) fn sparse_copy(src: &File, dst: &File, len: u64, use_cfr: bool) -> io::Result<()> {
    let mut use_cfr = use_cfr;
    let mut off = 0;
    while off < len {
        let data = match seek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `off`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) => return Err(e),
        };
        if data >= len {
            break;
        }
        let hole = seek(src, data, libc::SEEK_HOLE)?.min(len);
        copy_range(src, dst, data, hole - data, &mut use_cfr)?;
        off = hole;
    }
    dst.set_len(len)
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(off).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: lseek only moves the file offset of a descriptor we hold.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// Copies `n` bytes at `off` from `src` to the same offset in `dst`.
fn copy_range(
    src: &File,
    dst: &File,
    mut off: u64,
    mut n: u64,
    use_cfr: &mut bool,
) -> io::Result<()> {
    let mut buf = Vec::new();
    while n > 0 {
        if *use_cfr {
            match copy_file_range(src, dst, off, n) {
                Ok(0) => *use_cfr = false,
                Ok(done) => {
                    off += done;
                    n -= done;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                    ) =>
                {
                    *use_cfr = false
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        if buf.is_empty() {
            buf = vec![0u8; COPY_BUF];
        }
        let want = n.min(COPY_BUF as u64) as usize;
        let got = src.read_at(&mut buf[..want], off)?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source shrank while being copied",
            ));
        }
        write_skipping_zeros(dst, &buf[..got], off)?;
        off += got as u64;
        n -= got as u64;
    }
    Ok(())
}

/// Writes `data` at `off`, leaving all-zero 4 KiB blocks unwritten: `dst`
/// starts empty, so they read back as zeros and stay holes.
fn write_skipping_zeros(dst: &File, data: &[u8], off: u64) -> io::Result<()> {
    let mut at = 0;
    for block in data.chunks(COW_CHUNK as usize) {
        if block.iter().any(|&b| b != 0) {
            dst.write_all_at(block, off + at)?;
        }
        at += block.len() as u64;
    }
    Ok(())
}

fn copy_file_range(src: &File, dst: &File, off: u64, n: u64) -> io::Result<u64> {
    let mut off_in = libc::loff_t::try_from(off).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut off_out = off_in;
    let chunk = n.min(1 << 30) as usize;
    // SAFETY: both descriptors are open for the call; the two offsets are
    // valid, exclusive pointers to locals the kernel reads and updates.
    let r = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            chunk,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// Creates the new file `path` (mode 0600) as a `size`-byte hole. An
/// existing file is an error, never truncated.
pub fn create_sparse_file(path: &Path, size: u64) -> Result<(), CowError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                CowError::Exists(path.to_path_buf())
            } else {
                CowError::io("create", path)(e)
            }
        })?;
    if let Err(e) = f.set_len(size) {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(CowError::io("size", path)(e));
    }
    Ok(())
}

/// The size of a COW store that can never overflow for a base of
/// `base_len` bytes: every 4 KiB chunk of the base rewritten, plus the
/// persistent store's metadata (a header chunk, and one exception chunk of
/// 256 entries per 256 data chunks), plus one spare chunk. A full store
/// would invalidate the snapshot under a running guest; the file is sparse,
/// so the margin costs nothing until used.
pub fn cow_store_size(base_len: u64) -> u64 {
    let data = base_len.div_ceil(COW_CHUNK);
    let exceptions_per_chunk = COW_CHUNK / 16;
    let meta = 1 + data.div_ceil(exceptions_per_chunk);
    (data + meta + 1) * COW_CHUNK
}

/// Creates the sparse COW store `cow` sized for `base` (see
/// [`cow_store_size`]); returns its size. The daemon does this owner-side,
/// before asking the helper for the snapshot.
pub fn create_cow_file(cow: &Path, base: &Path) -> Result<u64, CowError> {
    let len = std::fs::metadata(base)
        .map_err(CowError::io("stat", base))?
        .len();
    let size = cow_store_size(len);
    create_sparse_file(cow, size)?;
    Ok(size)
}

#[cfg(test)]
mod tests;
