//! Flattening OCI image layers into one root tree, without trusting them.
//!
//! A [`Flattener`] applies layers (plain tar streams: the caller
//! decompresses) bottom first into a root directory, which `mkfs.ext4 -d`
//! later packs. Layers come from the internet, so:
//!
//! - **Names** must be relative: an absolute name, a `..` component, an
//!   empty name or a NUL byte rejects the layer. A leading `./` and a
//!   trailing `/` are allowed; `.` or empty components elsewhere are not.
//!   At most [`MAX_DEPTH`] components.
//! - **No symlink is ever followed.** Every ancestor is opened with
//!   `openat(O_NOFOLLOW | O_DIRECTORY)` from the one before, starting at the
//!   root's descriptor, so a symlink on the way (from this layer or a lower
//!   one) is an error, never traversed. Missing ancestors are created (0755).
//!   Owners and modes are set on opened descriptors or with
//!   `AT_SYMLINK_NOFOLLOW`.
//! - **Leaves**: whatever is at the leaf is replaced (a directory is removed
//!   recursively, symlinks inside it removed, not followed), except that a
//!   directory over a directory keeps it and takes the new mode.
//! - **Whiteouts** (OCI image spec): `dir/.wh.name` deletes `dir/name`;
//!   `dir/.wh..wh..opq` empties `dir`. Each layer is read once into a spool
//!   file (regular-file contents) plus an in-memory entry list; then all its
//!   whiteouts are applied, then its other entries, in archive order. So a
//!   whiteout only ever removes what lower layers made, wherever it sits in
//!   the archive. A whiteout whose parent is missing (or a file) removes
//!   nothing; one reached through a symlink is an error. Whiteout files are
//!   never created. `.wh.`, `.wh..`, `.wh...`, other `.wh..wh.` names, and
//!   a `.wh.` component that is not the leaf reject the layer.
//! - **Hard links** must name a regular file already in the tree (reached
//!   the same way, never through a symlink), linked with `linkat` on
//!   directory descriptors, without `AT_SYMLINK_FOLLOW`.
//! - **Symlinks** are created with their target text unchanged; nothing is
//!   ever written through them.
//! - **Devices and FIFOs** are not created (the guest's `/dev` is a
//!   devtmpfs): they are listed in [`FlattenReport::skipped_devices`]. Tar
//!   cannot carry sockets. Other entry types (sparse files, ...) reject the
//!   layer; PAX global headers are skipped.
//! - **Modes** keep the permission bits, setuid, setgid and sticky included
//!   (the guest needs a setuid `sudo`). That is harmless on the host only
//!   because the caller keeps the root inside a 0700 directory, so no other
//!   user can reach those files: callers must do so. Setuid and setgid files
//!   are listed in [`FlattenReport::setuid`] (as extracted: a later
//!   whiteout does not remove them from the list). Directories get their
//!   mode and mtime at the end of their layer, after their contents.
//! - **Owners**: the header's uid and gid are applied when running as root
//!   (so `mkfs.ext4 -d` copies them); otherwise owners are left alone.
//!   Mtimes are applied (the header's seconds).
//! - **Bombs**: entry count, per-entry size and total size are checked
//!   from each header before its content is read ([`Limits`]); the tar
//!   crate (0.4.46) handles PAX size records.
//!
//! The first error stops the flattening and is returned; the tree is then
//! partial, and the caller deletes it.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// Most components a name may have: bounds the recursion and the open
/// descriptors when removing a tree. Real images stay far below.
pub const MAX_DEPTH: usize = 128;

/// Prefix of whiteout names.
const WHITEOUT: &[u8] = b".wh.";
/// Name of the opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Caps against archive bombs, checked from each header before its content
/// is read; they hold across all layers of one [`Flattener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sum of all entries' content sizes.
    pub max_total_bytes: u64,
    /// Number of tar entries, whiteouts and skipped ones included.
    pub max_entries: u64,
    /// Content size of any one entry.
    pub max_entry_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: 64 << 30,
            max_entries: 2_000_000,
            max_entry_bytes: 16 << 30,
        }
    }
}

/// What the flattening did, over all layers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlattenReport {
    /// Tar entries read (whiteouts and skipped ones included).
    pub entries: u64,
    /// Content bytes read.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Device nodes and FIFOs not created, by name.
    pub skipped_devices: Vec<String>,
    /// Regular files extracted with the setuid or setgid bit, by name.
    pub setuid: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("flatten root {root}: {source}")]
    Root {
        root: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot read the tar stream: {source}")]
    Read {
        layer: usize,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: cannot spool the layer: {source}")]
    Spool {
        layer: usize,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: entry {path:?}: {reason}")]
    Rejected {
        layer: usize,
        path: String,
        reason: String,
    },
    #[error("layer {layer}: entry {path:?}: {reason}")]
    Limit {
        layer: usize,
        path: String,
        reason: String,
    },
    #[error("layer {layer}: entry {path:?}: cannot {op}: {source}")]
    Io {
        layer: usize,
        path: String,
        op: String,
        #[source]
        source: io::Error,
    },
}

/// Applies layers to a root tree; see the module documentation.
pub struct Flattener {
    root: OwnedFd,
    limits: Limits,
    chown: bool,
    report: FlattenReport,
}

/// A failure inside one entry, before the layer and name are attached.
enum Fail {
    Reject(String),
    Io(String, io::Error),
}

impl Fail {
    fn io(op: impl Into<String>, e: Errno) -> Fail {
        Fail::Io(op.into(), io::Error::from(e))
    }

    fn at(self, layer: usize, path: &str) -> FlattenError {
        let path = path.to_owned();
        match self {
            Fail::Reject(reason) => FlattenError::Rejected {
                layer,
                path,
                reason,
            },
            Fail::Io(op, source) => FlattenError::Io {
                layer,
                path,
                op,
                source,
            },
        }
    }
}

type Components = Vec<Vec<u8>>;

enum Kind {
    Dir,
    /// Content at `offset` in the spool.
    File {
        offset: u64,
        size: u64,
    },
    Symlink(Vec<u8>),
    Hardlink(Components),
}

/// One entry of a layer, read and checked, to apply after the whiteouts.
struct Item {
    shown: String,
    path: Components,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
}

/// A whiteout: `name` in `parent`, or `parent` emptied when `name` is None.
struct Whiteout {
    shown: String,
    parent: Components,
    name: Option<Vec<u8>>,
}

impl Flattener {
    /// Opens `root`, which must exist and be a real directory (not a
    /// symlink to one). It should be empty and inside a 0700 directory.
    pub fn new(root: &Path, limits: Limits) -> Result<Flattener, FlattenError> {
        let fd =
            nix::fcntl::open(root, dir_flags(), Mode::empty()).map_err(|e| FlattenError::Root {
                root: root.display().to_string(),
                source: io::Error::from(e),
            })?;
        Ok(Flattener {
            root: fd,
            limits,
            chown: nix::unistd::geteuid().is_root(),
            report: FlattenReport::default(),
        })
    }

    /// Applies one layer (a plain tar stream) on top of those before.
    /// Layers go bottom first; `index` only names the layer in errors.
    pub fn apply_layer<R: Read>(&mut self, index: usize, layer: R) -> Result<(), FlattenError> {
        let spool = self.spool().map_err(|source| FlattenError::Spool {
            layer: index,
            source,
        })?;
        let (items, whiteouts, spool) = self.read_layer(index, layer, spool)?;
        for w in &whiteouts {
            self.whiteout(w).map_err(|f| f.at(index, &w.shown))?;
            self.report.whiteouts += 1;
        }
        let mut dirs = Vec::new();
        for item in &items {
            self.extract(item, &spool)
                .map_err(|f| f.at(index, &item.shown))?;
            if matches!(item.kind, Kind::Dir) {
                dirs.push(item);
            }
        }
        // Directory modes last: a read-only directory stays writable while
        // its layer fills it. Deepest first does not matter: fchmod and
        // futimens on a directory change nothing above it.
        for item in dirs {
            self.finish_dir(item)
                .map_err(|f| f.at(index, &item.shown))?;
        }
        Ok(())
    }

    /// What was done, over all layers.
    pub fn finish(self) -> FlattenReport {
        self.report
    }

    /// An unnamed file for the layer's contents, on the root's filesystem
    /// (where they end up anyway), else in the temporary directory.
    fn spool(&self) -> io::Result<File> {
        match openat(
            &self.root,
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => tempfile::tempfile(),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the whole layer: checks every header, copies regular-file
    /// contents to `spool`, sorts whiteouts from the rest.
    fn read_layer<R: Read>(
        &mut self,
        index: usize,
        layer: R,
        spool: File,
    ) -> Result<(Vec<Item>, Vec<Whiteout>, File), FlattenError> {
        let read_err = |source| FlattenError::Read {
            layer: index,
            source,
        };
        let spool_err = |source| FlattenError::Spool {
            layer: index,
            source,
        };
        let mut spool = BufWriter::with_capacity(1 << 20, spool);
        let mut offset = 0u64;
        let mut items = Vec::new();
        let mut whiteouts = Vec::new();
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let limit = |reason: String| FlattenError::Limit {
                layer: index,
                path: shown.clone(),
                reason,
            };
            let reject = |reason: &str| FlattenError::Rejected {
                layer: index,
                path: shown.clone(),
                reason: reason.to_owned(),
            };
            // Caps first, from the header alone.
            self.report.entries += 1;
            if self.report.entries > self.limits.max_entries {
                return Err(limit(format!(
                    "more than {} entries",
                    self.limits.max_entries
                )));
            }
            let size = entry.size();
            if size > self.limits.max_entry_bytes {
                return Err(limit(format!(
                    "{size} bytes, more than the {} allowed per entry",
                    self.limits.max_entry_bytes
                )));
            }
            let total = self.report.bytes.saturating_add(size);
            if total > self.limits.max_total_bytes {
                return Err(limit(format!(
                    "the layers hold more than {} bytes",
                    self.limits.max_total_bytes
                )));
            }
            self.report.bytes = total;

            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let path = split_path(&raw).map_err(reject)?;
            let is_dir = kind == EntryType::Directory;
            if raw.ends_with(b"/") && !is_dir {
                return Err(reject("a non-directory with a trailing slash"));
            }
            let Some((leaf, ancestors)) = path.split_last() else {
                if is_dir {
                    // `./`: the root itself, which stays as it is.
                    continue;
                }
                return Err(reject("names the root itself"));
            };
            if let Some(rest) = leaf.strip_prefix(WHITEOUT) {
                let name = if leaf.as_slice() == OPAQUE {
                    None
                } else if rest.is_empty()
                    || rest == b"."
                    || rest == b".."
                    || rest.starts_with(WHITEOUT)
                {
                    return Err(reject("bad whiteout name"));
                } else {
                    Some(rest.to_vec())
                };
                whiteouts.push(Whiteout {
                    shown: shown.clone(),
                    parent: ancestors.to_vec(),
                    name,
                });
                continue;
            }
            let kind = match kind {
                EntryType::Directory => Kind::Dir,
                EntryType::Regular | EntryType::Continuous => {
                    let copied =
                        io::copy(&mut (&mut entry).take(size), &mut spool).map_err(spool_err)?;
                    if copied != size {
                        return Err(read_err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{shown:?}: the layer ends inside this file"),
                        )));
                    }
                    let at = offset;
                    offset += size;
                    Kind::File { offset: at, size }
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| reject("symlink without a target"))?;
                    Kind::Symlink(target.into_owned())
                }
                EntryType::Link => {
                    let raw_target = entry
                        .link_name_bytes()
                        .ok_or_else(|| reject("hard link without a target"))?;
                    let target = split_path(&raw_target)
                        .map_err(|why| reject(&format!("hard link target: {why}")))?;
                    if target.is_empty() {
                        return Err(reject("hard link to the root"));
                    }
                    if target == path {
                        return Err(reject("hard link to itself"));
                    }
                    Kind::Hardlink(target)
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    self.report.skipped_devices.push(shown.clone());
                    continue;
                }
                other => {
                    return Err(reject(&format!(
                        "entry type {:?} is not allowed",
                        other.as_byte() as char
                    )))
                }
            };
            let header = entry.header();
            let bad = |what: &str| reject(&format!("bad {what} in the header"));
            let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
            let uid = header.uid().map_err(|_| bad("uid"))?;
            let gid = header.gid().map_err(|_| bad("gid"))?;
            let mtime = header.mtime().map_err(|_| bad("mtime"))?;
            items.push(Item {
                shown: shown.clone(),
                path,
                kind,
                mode,
                uid: u32::try_from(uid).map_err(|_| bad("uid"))?,
                gid: u32::try_from(gid).map_err(|_| bad("gid"))?,
                mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0),
            });
        }
        let spool = spool.into_inner().map_err(|e| spool_err(e.into_error()))?;
        Ok((items, whiteouts, spool))
    }

    fn whiteout(&self, w: &Whiteout) -> Result<(), Fail> {
        let Some(parent) = open_ancestors(self.root.as_fd(), &w.parent, false)? else {
            return Ok(());
        };
        match &w.name {
            Some(name) => remove_leaf(parent.as_fd(), name),
            None => empty_dir(parent.as_fd()),
        }
    }

    fn extract(&mut self, item: &Item, spool: &File) -> Result<(), Fail> {
        let (name, ancestors) = item.path.split_last().expect("not the root");
        let name = name.as_slice();
        let parent =
            open_ancestors(self.root.as_fd(), ancestors, true)?.expect("created when missing");
        let parent = parent.as_fd();
        match &item.kind {
            Kind::Dir => {
                match stat_leaf(parent, name)? {
                    Some(st) if is(st.st_mode, SFlag::S_IFDIR) => {}
                    Some(_) => {
                        remove_leaf(parent, name)?;
                        mkdir(parent, name)?;
                    }
                    None => mkdir(parent, name)?,
                }
                self.chown(parent, name, item)?;
            }
            Kind::File { offset, size } => {
                remove_leaf(parent, name)?;
                let fd = openat(
                    parent,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| Fail::io("create the file", e))?;
                let mut file = File::from(fd);
                let mut src = spool;
                src.seek(SeekFrom::Start(*offset))
                    .map_err(|e| Fail::Io("read the spool".into(), e))?;
                let copied = io::copy(&mut src.take(*size), &mut file)
                    .map_err(|e| Fail::Io("write the file".into(), e))?;
                if copied != *size {
                    return Err(Fail::Reject("the spool is short".into()));
                }
                // Owner before mode: chown clears setuid and setgid.
                self.chown(parent, name, item)?;
                fchmod(&file, Mode::from_bits_truncate(item.mode))
                    .map_err(|e| Fail::io("set the mode", e))?;
                futimens(&file, &TimeSpec::UTIME_OMIT, &item.mtime)
                    .map_err(|e| Fail::io("set the mtime", e))?;
                if item.mode & 0o6000 != 0 {
                    self.report.setuid.push(item.shown.clone());
                }
            }
            Kind::Symlink(target) => {
                remove_leaf(parent, name)?;
                symlinkat(target.as_slice(), parent, name)
                    .map_err(|e| Fail::io("create the symlink", e))?;
                self.chown(parent, name, item)?;
                utimensat(
                    parent,
                    name,
                    &TimeSpec::UTIME_OMIT,
                    &item.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| Fail::io("set the mtime", e))?;
            }
            Kind::Hardlink(target) => {
                let (target_name, target_ancestors) =
                    target.split_last().expect("checked not empty");
                let shown = String::from_utf8_lossy(&target.join(&b'/')).into_owned();
                let missing = || Fail::Reject(format!("hard link target {shown:?} does not exist"));
                let target_parent = open_ancestors(self.root.as_fd(), target_ancestors, false)
                    .map_err(|f| match f {
                        Fail::Reject(why) => Fail::Reject(format!("hard link target: {why}")),
                        other => other,
                    })?
                    .ok_or_else(missing)?;
                match stat_leaf(target_parent.as_fd(), target_name)? {
                    Some(st) if is(st.st_mode, SFlag::S_IFREG) => {}
                    Some(_) => {
                        return Err(Fail::Reject(format!(
                            "hard link target {shown:?} is not a regular file"
                        )))
                    }
                    None => return Err(missing()),
                }
                remove_leaf(parent, name)?;
                // No AT_SYMLINK_FOLLOW; the target was checked to be a file.
                linkat(
                    target_parent.as_fd(),
                    target_name.as_slice(),
                    parent,
                    name,
                    AtFlags::empty(),
                )
                .map_err(|e| Fail::io("create the hard link", e))?;
            }
        }
        Ok(())
    }

    /// Gives a directory entry its mode and mtime, unless something later
    /// in the layer replaced it.
    fn finish_dir(&self, item: &Item) -> Result<(), Fail> {
        let (name, ancestors) = item.path.split_last().expect("not the root");
        let Some(parent) = open_ancestors(self.root.as_fd(), ancestors, false)? else {
            return Ok(());
        };
        let dir = match openat(&parent, name.as_slice(), dir_flags(), Mode::empty()) {
            Ok(dir) => dir,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
            Err(e) => return Err(Fail::io("open the directory", e)),
        };
        fchmod(&dir, Mode::from_bits_truncate(item.mode))
            .map_err(|e| Fail::io("set the mode", e))?;
        futimens(&dir, &TimeSpec::UTIME_OMIT, &item.mtime).map_err(|e| Fail::io("set the mtime", e))
    }

    /// Sets the entry's owner on `name` in `parent`, not following a
    /// symlink, when running as root.
    fn chown(&self, parent: BorrowedFd<'_>, name: &[u8], item: &Item) -> Result<(), Fail> {
        if !self.chown {
            return Ok(());
        }
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(item.uid)),
            Some(Gid::from_raw(item.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Fail::io("set the owner", e))
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn is(mode: u32, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) == kind
}

fn mkdir(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
    mkdirat(parent, name, Mode::from_bits_truncate(0o755))
        .map_err(|e| Fail::io("create the directory", e))
}

/// `name` in `parent`, not following a symlink; None when missing.
fn stat_leaf(
    parent: BorrowedFd<'_>,
    name: &[u8],
) -> Result<Option<nix::sys::stat::FileStat>, Fail> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Fail::io("inspect the leaf", e)),
    }
}

/// Opens `ancestors` one below the other from `root`, never through a
/// symlink: a symlink on the way is an error. Missing ones are created
/// (0755) when `create`; otherwise a missing one, or a non-directory, gives
/// None (nothing there).
fn open_ancestors(
    root: BorrowedFd<'_>,
    ancestors: &[Vec<u8>],
    create: bool,
) -> Result<Option<OwnedFd>, Fail> {
    let mut cur =
        openat(root, ".", dir_flags(), Mode::empty()).map_err(|e| Fail::io("open the root", e))?;
    for (i, name) in ancestors.iter().enumerate() {
        let shown = || String::from_utf8_lossy(&ancestors[..=i].join(&b'/')).into_owned();
        let name = name.as_slice();
        let next = match openat(&cur, name, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                mkdir(cur.as_fd(), name)?;
                openat(&cur, name, dir_flags(), Mode::empty())
                    .map_err(|e| Fail::io(format!("open the ancestor {:?}", shown()), e))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                return match stat_leaf(cur.as_fd(), name)? {
                    Some(st) if is(st.st_mode, SFlag::S_IFLNK) => Err(Fail::Reject(format!(
                        "ancestor {:?} is a symlink, which is never followed",
                        shown()
                    ))),
                    _ if create => Err(Fail::Reject(format!(
                        "ancestor {:?} is not a directory",
                        shown()
                    ))),
                    _ => Ok(None),
                };
            }
            Err(e) => return Err(Fail::io(format!("open the ancestor {:?}", shown()), e)),
        };
        cur = next;
    }
    Ok(Some(cur))
}

/// Removes whatever is at `name` in `parent` (a directory with all it
/// holds), following no symlink; nothing there is fine.
fn remove_leaf(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => {
            let dir = openat(parent, name, dir_flags(), Mode::empty())
                .map_err(|e| Fail::io("open the directory in the way", e))?;
            empty_dir(dir.as_fd())?;
            drop(dir);
            unlinkat(parent, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| Fail::io("remove the directory in the way", e))
        }
        Err(e) => Err(Fail::io("remove what is in the way", e)),
    }
}

/// Removes everything inside `dir`, depth first, following no symlink.
fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), Fail> {
    let mut names = Vec::new();
    let mut d = Dir::openat(dir, ".", dir_flags(), Mode::empty())
        .map_err(|e| Fail::io("list a directory", e))?;
    for entry in d.iter() {
        let entry = entry.map_err(|e| Fail::io("list a directory", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    for name in &names {
        remove_leaf(dir, name)?;
    }
    Ok(())
}

/// Splits an entry name into components. It must be relative, without
/// `..`, `.` or empty components (a leading `./` and a trailing `/` are
/// allowed), without NUL, at most [`MAX_DEPTH`] deep, and only its leaf may
/// start with `.wh.`. No components: the root itself (`./`).
fn split_path(raw: &[u8]) -> Result<Components, &'static str> {
    let parts = banger_tarpath::split(raw)?;
    if parts.len() > MAX_DEPTH {
        return Err("too many components");
    }
    if parts[..parts.len().saturating_sub(1)]
        .iter()
        .any(|p| p.starts_with(WHITEOUT))
    {
        return Err("a whiteout name as an ancestor");
    }
    Ok(parts.into_iter().map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests;
