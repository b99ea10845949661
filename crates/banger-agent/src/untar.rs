//! Unpacking a tar archive into a directory, without trusting the archive.
//!
//! The `tar` crate parses the headers (PAX and GNU long names included);
//! every filesystem change is made here, relative to directory descriptors
//! and never through a symlink:
//!
//! - Entry paths must be relative, without `..`, `.` or empty components (a
//!   leading `./` is fine). Each ancestor is opened with `O_NOFOLLOW |
//!   O_DIRECTORY` from the one before, starting at the destination, so a
//!   symlink anywhere on the way (one already there, or one this archive
//!   made) is an error, never followed. Missing ancestors are created (0755).
//!   A `./` directory entry (as `tar -C dir .` makes) is the destination
//!   itself: skipped, and not counted.
//! - PAX global headers (git archive writes one) are skipped.
//! - Only directories, regular files, symlinks and hard links are
//!   extracted; any other entry type is an error naming the entry.
//! - A file, symlink or empty directory in the way of a non-directory is
//!   removed first, and the new file is created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`; a non-empty directory in the way is an error. An existing
//!   directory is kept for a directory entry.
//! - Symlinks are created as they are: their target may point anywhere,
//!   since nothing is ever written through them.
//! - A hard link must name a path this archive already extracted.
//! - Permission bits are kept (setuid, setgid and sticky dropped), mtimes
//!   too; owners are not (everything belongs to the agent, i.e. root).
//!   Directories get their mode and mtime at the end, once nothing more is
//!   written into them.
//! - Nothing is fsynced: the guest syncs when the host asks.
//!
//! The first error stops the extraction; what was written before it stays.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{anyhow, bail, Context as _};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, symlinkat, unlinkat, UnlinkatFlags};
use tar::EntryType;

/// Size of the buffer file contents are written from: large writes, few
/// system calls.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// What an extraction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Entries extracted (directories, files, symlinks, hard links).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Checks `dest`, creates it if missing, empties it if `clear`, and opens
/// it. `dest` must be absolute and normalised (no `.` or `..`), not `/`; if
/// it exists it must be a real directory, not a symlink to one.
pub fn open_dest(dest: &str, clear: bool) -> anyhow::Result<OwnedFd> {
    check_dest(dest)?;
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_dir() => {}
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("destination {dest:?} is a symlink, not a directory")
        }
        Ok(_) => bail!("destination {dest:?} exists and is not a directory"),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dest)
                .with_context(|| format!("cannot create the destination {dest:?}"))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect the destination {dest:?}"))
        }
    }
    // O_NOFOLLOW: the check above may be stale.
    let dir = nix::fcntl::open(dest, dir_flags(), Mode::empty()).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => anyhow!("destination {dest:?} is not a directory"),
        e => anyhow!("cannot open the destination {dest:?}: {e}"),
    })?;
    if clear {
        empty_dir(dir.as_fd()).with_context(|| format!("cannot empty the destination {dest:?}"))?;
    }
    Ok(dir)
}

fn check_dest(dest: &str) -> anyhow::Result<()> {
    if !dest.starts_with('/') {
        bail!("destination {dest:?} is not an absolute path");
    }
    if dest.contains('\0') {
        bail!("destination {dest:?} contains a NUL byte");
    }
    let mut named = false;
    for part in dest.split('/') {
        match part {
            "" => {}
            "." | ".." => {
                bail!("destination {dest:?} is not normalised: it has a {part:?} component")
            }
            _ => named = true,
        }
    }
    if !named {
        bail!("destination may not be /");
    }
    Ok(())
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Removes everything inside `dir`, depth first, following no symlink
/// (a symlink is removed, not what it points to).
fn empty_dir(dir: BorrowedFd<'_>) -> anyhow::Result<()> {
    for name in list_dir(dir)? {
        match unlinkat(dir, name.as_slice(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => {
                let sub = openat(dir, name.as_slice(), dir_flags(), Mode::empty())
                    .map_err(|e| anyhow!("cannot open {}: {e}", Name(&name)))?;
                empty_dir(sub.as_fd()).with_context(|| format!("in {}", Name(&name)))?;
                drop(sub);
                unlinkat(dir, name.as_slice(), UnlinkatFlags::RemoveDir)
                    .map_err(|e| anyhow!("cannot remove {}: {e}", Name(&name)))?;
            }
            Err(e) => bail!("cannot remove {}: {e}", Name(&name)),
        }
    }
    Ok(())
}

/// The names in `dir`, without `.` and `..`.
fn list_dir(dir: BorrowedFd<'_>) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut d = Dir::openat(dir, ".", dir_flags(), Mode::empty())
        .map_err(|e| anyhow!("cannot list a directory: {e}"))?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| anyhow!("cannot list a directory: {e}"))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// Extracts every entry of `archive` into the directory `dest`. Stops at
/// the archive's end-of-archive marker; the caller reads what follows.
pub fn unpack<R: Read>(
    dest: BorrowedFd<'_>,
    archive: &mut tar::Archive<R>,
) -> anyhow::Result<Report> {
    let mut ex = Extractor {
        dest,
        dirs: DirChain::default(),
        extracted: HashSet::new(),
        dir_meta: Vec::new(),
        report: Report::default(),
        buf: vec![0u8; WRITE_BUFFER_BYTES],
        umask: current_umask(),
    };
    let entries = archive.entries().context("cannot read the archive")?;
    for entry in entries {
        let mut entry = entry.context("cannot read the archive")?;
        ex.entry(&mut entry)?;
    }
    ex.finish_dirs()?;
    Ok(ex.report)
}

struct Extractor<'d> {
    dest: BorrowedFd<'d>,
    /// The ancestors of the last entry, open.
    dirs: DirChain,
    /// Paths (normalised, `/`-joined) this archive extracted: the only
    /// valid hard link targets.
    extracted: HashSet<Vec<u8>>,
    /// Mode and mtime of each directory entry, applied at the end.
    dir_meta: Vec<(Vec<Vec<u8>>, Mode, TimeSpec)>,
    report: Report,
    buf: Vec<u8>,
    /// The process umask: the bits a create may have dropped.
    umask: u32,
}

/// The process umask, from /proc (reading it with umask(2) would change it
/// for a moment under every other thread). Unknown: assume all bits, so
/// every file gets its fchmod.
fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> anyhow::Result<()> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // git archive puts the commit id there; nothing to extract.
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        self.extract(entry, kind, &raw_path)
            .with_context(|| format!("entry {shown:?}"))
    }

    fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        raw_path: &[u8],
    ) -> anyhow::Result<()> {
        match kind {
            EntryType::Directory
            | EntryType::Regular
            | EntryType::Continuous
            | EntryType::Symlink
            | EntryType::Link => {}
            other => bail!("{} entries are not allowed", type_name(other)),
        }
        let path = banger_tarpath::split(raw_path).map_err(|why| anyhow!("bad path: {why}"))?;
        let is_dir = kind == EntryType::Directory;
        if raw_path.ends_with(b"/") && !is_dir {
            bail!("bad path: a {} with a trailing slash", type_name(kind));
        }
        let Some((name, ancestors)) = path.split_last() else {
            if is_dir {
                // `./`: the destination itself, which stays as it is.
                return Ok(());
            }
            bail!("bad path: names the destination itself");
        };
        let mode = Mode::from_bits_truncate(entry.header().mode().context("bad mode")? & 0o777);
        let mtime = mtime(entry)?;
        if kind == EntryType::Link {
            // Before opening the entry's ancestors: a bad link creates nothing.
            self.check_link_target(entry, &path)?;
        }
        let parent = self.dirs.open(self.dest, ancestors, true)?;
        match kind {
            EntryType::Directory => {
                make_dir(parent, name)?;
                self.dir_meta.push((to_owned(&path), mode, mtime));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| anyhow!("symlink without a target"))?;
                create_leaf(parent, name, "symlink", || {
                    symlinkat(&*target, parent, *name)
                })?;
                utimensat(
                    parent,
                    *name,
                    &TimeSpec::UTIME_OMIT,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| anyhow!("cannot set the symlink's mtime: {e}"))?;
            }
            EntryType::Link => {
                link(self.dest, entry, parent, name)?;
            }
            _ => {
                let fd = create_leaf(parent, name, "file", || {
                    openat(
                        parent,
                        *name,
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        mode,
                    )
                })?;
                let mut file = File::from(fd);
                let written = copy_into(entry, &mut file, &mut self.buf)?;
                if written != entry.size() {
                    bail!(
                        "the archive ends inside this file ({written} of {} bytes)",
                        entry.size()
                    );
                }
                self.report.bytes += written;
                // Created with `mode` already; only what the umask took
                // needs a second syscall (one per file adds up under
                // emulation: 10,000 files, 10,000 fchmods).
                if mode.bits() & self.umask != 0 {
                    fchmod(&file, mode).map_err(|e| anyhow!("cannot set the mode: {e}"))?;
                }
                futimens(&file, &TimeSpec::UTIME_OMIT, &mtime)
                    .map_err(|e| anyhow!("cannot set the mtime: {e}"))?;
            }
        }
        self.extracted.insert(path.join(&b'/'));
        self.report.entries += 1;
        Ok(())
    }

    /// A hard link's target must be something this archive extracted, and
    /// not the entry itself.
    fn check_link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        path: &[&[u8]],
    ) -> anyhow::Result<()> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| anyhow!("hard link without a target"))?;
        let shown = String::from_utf8_lossy(&raw);
        let target = banger_tarpath::split(&raw)
            .map_err(|why| anyhow!("hard link target {shown:?}: {why}"))?;
        if target.is_empty() {
            bail!("hard link to the destination itself");
        }
        if target.as_slice() == path {
            bail!("hard link to itself");
        }
        if !self.extracted.contains(&target.join(&b'/')) {
            bail!("hard link target {shown:?} is not a file this archive extracted");
        }
        Ok(())
    }

    /// Gives every extracted directory its mode and mtime, now that nothing
    /// more is written into them. A directory the archive later replaced is
    /// skipped.
    fn finish_dirs(&mut self) -> anyhow::Result<()> {
        let mut chain = DirChain::default();
        for (path, mode, mtime) in std::mem::take(&mut self.dir_meta) {
            let Some((name, ancestors)) = path.split_last() else {
                continue;
            };
            let ancestors: Vec<&[u8]> = ancestors.iter().map(Vec::as_slice).collect();
            let Ok(parent) = chain.open(self.dest, &ancestors, false) else {
                continue;
            };
            let Ok(dir) = openat(parent, name.as_slice(), dir_flags(), Mode::empty()) else {
                continue;
            };
            let shown = String::from_utf8_lossy(&path.join(&b'/')).into_owned();
            fchmod(&dir, mode).map_err(|e| anyhow!("entry {shown:?}: cannot set the mode: {e}"))?;
            futimens(&dir, &TimeSpec::UTIME_OMIT, &mtime)
                .map_err(|e| anyhow!("entry {shown:?}: cannot set the mtime: {e}"))?;
        }
        Ok(())
    }
}

/// Creates the hard link `name` in `parent` to the entry's (checked)
/// target, reached without following symlinks.
fn link<R: Read>(
    dest: BorrowedFd<'_>,
    entry: &tar::Entry<'_, R>,
    parent: BorrowedFd<'_>,
    name: &[u8],
) -> anyhow::Result<()> {
    let raw = entry
        .link_name_bytes()
        .ok_or_else(|| anyhow!("hard link without a target"))?;
    let target = banger_tarpath::split(&raw).map_err(|why| anyhow!("hard link target: {why}"))?;
    let Some((target_name, target_ancestors)) = target.split_last() else {
        bail!("hard link to the destination itself");
    };
    let mut chain = DirChain::default();
    let target_parent = chain.open(dest, target_ancestors, false)?;
    // No AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
    create_leaf(parent, name, "hard link", || {
        linkat(target_parent, *target_name, parent, name, AtFlags::empty())
    })
}

/// Creates a non-directory at `name` in `parent` with `create` (which
/// must fail with EEXIST when anything is there, and follow no symlink).
/// When something is in the way, it is removed (see [`clear_leaf`]) and
/// `create` tried once more.
fn create_leaf<T>(
    parent: BorrowedFd<'_>,
    name: &[u8],
    what: &str,
    mut create: impl FnMut() -> nix::Result<T>,
) -> anyhow::Result<T> {
    match create() {
        Err(Errno::EEXIST) => clear_leaf(parent, name)?,
        other => return other.map_err(|e| anyhow!("cannot create the {what}: {e}")),
    }
    create().map_err(|e| anyhow!("cannot create the {what}: {e}"))
}

/// Makes room for a new non-directory at `name`: removes a file, symlink
/// or empty directory there; a non-empty directory is an error. (The
/// directory chain open at that point holds only `name`'s ancestors, so no
/// open descriptor can refer to a directory removed here.)
fn clear_leaf(parent: BorrowedFd<'_>, name: &[u8]) -> anyhow::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => bail!("a non-empty directory is in the way"),
            Err(e) => bail!("cannot remove the directory in the way: {e}"),
        },
        Err(e) => bail!("cannot remove what is in the way: {e}"),
    }
}

/// Creates the directory `name` in `parent`, or keeps the one there; a
/// file or symlink there is replaced.
fn make_dir(parent: BorrowedFd<'_>, name: &[u8]) -> anyhow::Result<()> {
    for _ in 0..2 {
        match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => return Ok(()),
            Err(Errno::EEXIST) => {}
            Err(e) => bail!("cannot create the directory: {e}"),
        }
        match openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(_) => return Ok(()),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| anyhow!("cannot remove what is in the way: {e}"))?;
            }
            Err(e) => bail!("cannot open the directory: {e}"),
        }
    }
    bail!("something keeps getting in the way")
}

/// The open ancestors of the last path walked, so that consecutive entries
/// in one directory (the usual order) do not reopen the whole chain.
#[derive(Default)]
struct DirChain {
    names: Vec<Vec<u8>>,
    fds: Vec<OwnedFd>,
}

impl DirChain {
    /// Opens `ancestors` one below the other from `dest`, none through a
    /// symlink; creates missing ones when `create`. Returns the last.
    fn open<'a>(
        &'a mut self,
        dest: BorrowedFd<'a>,
        ancestors: &[&[u8]],
        create: bool,
    ) -> anyhow::Result<BorrowedFd<'a>> {
        let common = self
            .names
            .iter()
            .zip(ancestors)
            .take_while(|(a, b)| a.as_slice() == **b)
            .count();
        self.names.truncate(common);
        self.fds.truncate(common);
        for (i, name) in ancestors.iter().enumerate().skip(common) {
            let parent = self.fds.last().map_or(dest, |fd| fd.as_fd());
            let fd = open_dir(parent, name, create).with_context(|| {
                let shown = String::from_utf8_lossy(&ancestors[..=i].join(&b'/')).into_owned();
                format!("ancestor {shown:?}")
            })?;
            self.fds.push(fd);
            self.names.push(name.to_vec());
        }
        Ok(self.fds.last().map_or(dest, |fd| fd.as_fd()))
    }
}

/// Opens the directory `name` in `parent` without following a symlink;
/// creates it (0755) when missing and `create`.
fn open_dir(parent: BorrowedFd<'_>, name: &[u8], create: bool) -> anyhow::Result<OwnedFd> {
    match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOTDIR | Errno::ELOOP) => bail!("is not a directory (a symlink or a file)"),
        Err(e) => bail!("cannot open: {e}"),
    }
    match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => bail!("cannot create: {e}"),
    }
    openat(parent, name, dir_flags(), Mode::empty()).map_err(|e| match e {
        Errno::ENOTDIR | Errno::ELOOP => anyhow!("is not a directory (a symlink or a file)"),
        e => anyhow!("cannot open: {e}"),
    })
}

/// Copies the entry's content into `file` through `buf`, in writes as
/// large as `buf`; returns how many bytes it copied.
fn copy_into(src: &mut impl Read, file: &mut File, buf: &mut [u8]) -> anyhow::Result<u64> {
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("cannot read the archive"),
            }
        }
        if filled == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..filled])
            .context("cannot write the file")?;
        total += filled as u64;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

fn to_owned(path: &[&[u8]]) -> Vec<Vec<u8>> {
    path.iter().map(|p| p.to_vec()).collect()
}

/// The entry's mtime: the PAX `mtime` record (with its fraction) when
/// there is one, else the header's seconds.
fn mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> anyhow::Result<TimeSpec> {
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            if ext.key_bytes() == b"mtime" {
                if let Some(t) = parse_pax_time(ext.value_bytes()) {
                    return Ok(t);
                }
            }
        }
    }
    let secs = entry.header().mtime().context("bad mtime")?;
    Ok(TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0))
}

/// Parses a PAX time, `SECONDS[.FRACTION]` (seconds may be negative).
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let negative = secs.starts_with('-');
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(if negative && nanos > 0 {
        // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}

fn type_name(kind: EntryType) -> String {
    match kind {
        EntryType::Regular | EntryType::Continuous => "regular file".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Symlink => "symlink".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("type {:?}", other.as_byte() as char),
    }
}

/// A file name for messages.
struct Name<'a>(&'a [u8]);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_must_be_absolute_and_normalised() {
        for ok in ["/srv", "/root/src", "/a/b/", "/a//b"] {
            check_dest(ok).unwrap();
        }
        for bad in [
            "", "/", "//", "srv", "./srv", "/a/../b", "/a/./b", "/a/..", "/a\0",
        ] {
            assert!(check_dest(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pax_times_parse() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("12.000000001"), Some((12, 1)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
    }
}
