//! The tar stream of a selection.
//!
//! Entries are named relative to the repo root. Each parent directory is
//! emitted once, before anything inside it. Files are read through
//! descriptors opened without following symlinks (see `beneath`): a
//! tracked symlink ships as a symlink with its target text verbatim, and a
//! path beneath a symlink is refused. Contents are copied straight from the
//! descriptor through a large buffer; nothing is held in memory whole.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use tar::{EntryType, Header};

use crate::beneath::{self, OpenError};
use crate::{Repo, Selection, WorkspaceError};

/// What [`write_tar`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TarStats {
    /// Entries in the archive: directories, files and symlinks (GNU
    /// long-name records not counted).
    pub entries: u64,
    /// Bytes written to the output: the whole archive, headers, padding and
    /// end blocks included.
    pub bytes: u64,
}

/// Size of the output buffer and of the read buffer for file contents.
const BUF_SIZE: usize = 1 << 20;
const BLOCK: u64 = 512;

/// Writes the tar stream of `sel` (and of the git directory when
/// `include_git_dir`) to `out`, then the end-of-archive blocks.
///
/// A path listed in `sel` that has vanished from the work tree is skipped.
/// A path beneath a symlink, a file that is not a regular file or symlink
/// (any more), and a file that changes size while being read are errors;
/// after an error the stream is incomplete (no end blocks) and must be
/// discarded.
pub fn write_tar<W: Write>(
    repo: &Repo,
    sel: &Selection,
    include_git_dir: bool,
    out: W,
) -> Result<TarStats, WorkspaceError> {
    for path in &sel.files {
        check_relative(path)?;
    }
    if include_git_dir && repo.git_dir != repo.root.join(".git") {
        return Err(WorkspaceError::GitDirNotInRoot {
            root: repo.root.clone(),
            git_dir: repo.git_dir.clone(),
        });
    }
    let root_fd = openat(AT_FDCWD, &repo.root, beneath::DIR_FLAGS, Mode::empty())
        .map_err(|e| WorkspaceError::io("opening the repo root", &repo.root, io::Error::from(e)))?;

    let mut w = TarWriter::new(out, repo.root.clone());
    let result = (|| {
        let mut stack = DirStack {
            root: root_fd,
            open: Vec::new(),
        };
        for rel in &sel.files {
            w.ship_tracked(&mut stack, rel)?;
        }
        if include_git_dir {
            w.ship_git_dir(&stack.root)?;
        }
        w.finish()
    })();
    if result.is_err() {
        // tar::Builder writes the end blocks when dropped; a failed archive
        // must not look complete, so the sink refuses everything from now.
        w.builder.get_mut().abandoned = true;
    }
    result
}

/// Refuses a selection path that could name something outside the root.
fn check_relative(path: &Path) -> Result<(), WorkspaceError> {
    let ok = !path.as_os_str().is_empty()
        && !path.as_os_str().as_bytes().contains(&0)
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(WorkspaceError::InvalidSelectionPath {
            path: path.to_path_buf(),
        })
    }
}

/// The output: counts bytes, buffers writes, and once `abandoned` accepts
/// nothing more (and drops what it buffered).
struct Sink<W: Write> {
    out: W,
    buf: Vec<u8>,
    written: u64,
    /// A write to `out` failed: errors from the builder are write errors.
    write_failed: bool,
    abandoned: bool,
}

impl<W: Write> Sink<W> {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let r = self.out.write_all(&self.buf);
            self.write_failed |= r.is_err();
            r?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.abandoned {
            return Err(io::Error::other("archive abandoned after an error"));
        }
        if self.buf.len() + data.len() > BUF_SIZE {
            self.flush_buf()?;
        }
        if data.len() >= BUF_SIZE {
            let r = self.out.write_all(data);
            self.write_failed |= r.is_err();
            r?;
            self.written += data.len() as u64;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.abandoned {
            return Err(io::Error::other("archive abandoned after an error"));
        }
        self.flush_buf()?;
        let r = self.out.flush();
        self.write_failed |= r.is_err();
        r
    }
}

/// The chain of directories open for the current path: `open[i]` is the
/// i-th component, opened beneath `open[i - 1]` (or the root).
struct DirStack {
    root: OwnedFd,
    open: Vec<(OsString, OwnedFd)>,
}

impl DirStack {
    fn top(&self) -> BorrowedFd<'_> {
        self.open
            .last()
            .map(|(_, fd)| fd.as_fd())
            .unwrap_or(self.root.as_fd())
    }
}

struct TarWriter<W: Write> {
    builder: tar::Builder<Sink<W>>,
    root: PathBuf,
    copy_buf: Vec<u8>,
    entries: u64,
    emitted_dirs: HashSet<PathBuf>,
}

/// What happened to one path.
enum Shipped {
    Yes,
    Vanished,
}

impl<W: Write> TarWriter<W> {
    fn new(out: W, root: PathBuf) -> Self {
        TarWriter {
            builder: tar::Builder::new(Sink {
                out,
                buf: Vec::with_capacity(BUF_SIZE),
                written: 0,
                write_failed: false,
                abandoned: false,
            }),
            root,
            copy_buf: vec![0; BUF_SIZE],
            entries: 0,
            emitted_dirs: HashSet::new(),
        }
    }

    /// Ships one selected path: its parent directories first (opened
    /// beneath each other, never through a symlink), then the file or
    /// symlink itself.
    fn ship_tracked(&mut self, stack: &mut DirStack, rel: &Path) -> Result<(), WorkspaceError> {
        let comps: Vec<&OsStr> = rel.components().map(|c| c.as_os_str()).collect();
        let (name, parents) = comps.split_last().expect("checked: not empty");

        // Keep the directories this path shares with the previous one.
        let shared = stack
            .open
            .iter()
            .zip(parents.iter())
            .take_while(|((open, _), want)| open.as_os_str() == **want)
            .count();
        stack.open.truncate(shared);
        for (depth, comp) in parents.iter().enumerate().skip(shared) {
            let fd = match beneath::open_dir(stack.top(), comp) {
                Ok(fd) => fd,
                Err(OpenError::Symlink) => {
                    return Err(WorkspaceError::BeneathSymlink {
                        path: self.root.join(rel),
                    })
                }
                // The directory went away (or became a file): so did the
                // path. The selection already says why when it knew.
                Err(OpenError::Missing | OpenError::NotADirectory) => return Ok(()),
                Err(OpenError::Sys(e)) => {
                    let dir: PathBuf = parents[..=depth].iter().collect();
                    return Err(WorkspaceError::io(
                        "opening directory",
                        self.root.join(dir),
                        e.into(),
                    ));
                }
            };
            let dir: PathBuf = parents[..=depth].iter().collect();
            if !self.emitted_dirs.contains(&dir) {
                let st = fstat(&fd).map_err(|e| {
                    WorkspaceError::io("inspecting", self.root.join(&dir), e.into())
                })?;
                self.append_dir(&dir, &st)?;
                self.emitted_dirs.insert(dir);
            }
            stack.open.push((comp.to_os_string(), fd));
        }
        self.ship_entry(stack.top(), name, rel, false).map(|_| ())
    }

    /// Ships `name` in the directory `dir` as the archive path `rel`: a
    /// regular file or a symlink. Anything else is an error, except for
    /// sockets, FIFOs and devices when `skip_special` (inside .git).
    fn ship_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        skip_special: bool,
    ) -> Result<Shipped, WorkspaceError> {
        let full = || self.root.join(rel);
        let Some(st) = beneath::lstat_at(dir, name)
            .map_err(|e| WorkspaceError::io("inspecting", full(), e.into()))?
        else {
            return Ok(Shipped::Vanished);
        };
        if beneath::is_type(&st, SFlag::S_IFLNK) {
            return self.ship_symlink(dir, name, rel, &st);
        }
        if !beneath::is_type(&st, SFlag::S_IFREG) {
            if skip_special {
                return Ok(Shipped::Vanished);
            }
            return Err(WorkspaceError::UnsupportedFileType {
                path: full(),
                kind: kind_of(&st),
            });
        }
        let fd = match beneath::open_file(dir, name) {
            Ok(fd) => fd,
            Err(OpenError::Missing) => return Ok(Shipped::Vanished),
            Err(OpenError::Symlink) => {
                return Err(WorkspaceError::ChangedWhileReading {
                    path: full(),
                    what: "it became a symlink".into(),
                })
            }
            // (NotADirectory cannot come from a file open; reported as is.)
            Err(OpenError::NotADirectory) => {
                return Err(WorkspaceError::io("opening", full(), Errno::ENOTDIR.into()))
            }
            Err(OpenError::Sys(e)) => return Err(WorkspaceError::io("opening", full(), e.into())),
        };
        // Everything below comes from the descriptor actually opened.
        let st = fstat(&fd).map_err(|e| WorkspaceError::io("inspecting", full(), e.into()))?;
        if !beneath::is_type(&st, SFlag::S_IFREG) {
            return Err(WorkspaceError::ChangedWhileReading {
                path: full(),
                what: format!("it is now a {}", kind_of(&st)),
            });
        }
        self.append_file(rel, &st, File::from(fd))?;
        Ok(Shipped::Yes)
    }

    fn ship_symlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        st: &FileStat,
    ) -> Result<Shipped, WorkspaceError> {
        let target = match readlinkat(dir, name) {
            Ok(t) => t,
            Err(Errno::ENOENT) => return Ok(Shipped::Vanished),
            Err(Errno::EINVAL) => {
                return Err(WorkspaceError::ChangedWhileReading {
                    path: self.root.join(rel),
                    what: "it stopped being a symlink".into(),
                })
            }
            Err(e) => {
                return Err(WorkspaceError::io(
                    "reading symlink",
                    self.root.join(rel),
                    e.into(),
                ))
            }
        };
        let target = target.into_vec();
        let mut h = base_header(EntryType::Symlink, 0o777, st.st_mtime);
        // The target goes in byte for byte: Header::set_link_name would
        // normalise it ("a//b", "./x"), which changes what the link means
        // for no one's benefit. Long targets use a GNU long-link record.
        let field = h.as_old().linkname.len();
        if target.len() > field {
            self.append_long_link(rel, &target)?;
            h.set_link_name_literal(&target[..field])
        } else {
            h.set_link_name_literal(&target)
        }
        .map_err(|e| self.entry_error(rel, e))?;
        self.builder
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| self.entry_error(rel, e))?;
        self.entries += 1;
        Ok(Shipped::Yes)
    }

    /// The GNU `K` record carrying a symlink target longer than the header
    /// field, as tar::Builder::append_link writes it.
    fn append_long_link(&mut self, rel: &Path, target: &[u8]) -> Result<(), WorkspaceError> {
        let mut h = Header::new_gnu();
        let name = b"././@LongLink";
        h.as_gnu_mut().expect("a GNU header").name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // The trailing NUL is part of the record, as GNU tar writes it.
        h.set_size(target.len() as u64 + 1);
        h.set_entry_type(EntryType::GNULongLink);
        h.set_cksum();
        self.builder
            .append(&h, target.chain(&[0u8][..]))
            .map_err(|e| self.entry_error(rel, e))
    }

    fn append_dir(&mut self, rel: &Path, st: &FileStat) -> Result<(), WorkspaceError> {
        let mut h = base_header(EntryType::Directory, 0o755, st.st_mtime);
        // "dir/" is how tar names directories.
        let mut name = rel.as_os_str().to_os_string();
        name.push("/");
        self.builder
            .append_data(&mut h, Path::new(&name), io::empty())
            .map_err(|e| self.entry_error(rel, e))?;
        self.entries += 1;
        Ok(())
    }

    /// A regular file: the header with the size fstat gave for the opened
    /// descriptor, then exactly that many bytes read from it.
    fn append_file(
        &mut self,
        rel: &Path,
        st: &FileStat,
        mut file: File,
    ) -> Result<(), WorkspaceError> {
        let size = st.st_size as u64;
        let mut h = base_header(EntryType::Regular, st.st_mode & 0o777, st.st_mtime);
        h.set_size(size);
        // The builder writes the header (and a GNU long-name record first
        // when the name needs one); an empty reader means it writes no
        // data and no padding, which follow here.
        self.builder
            .append_data(&mut h, rel, io::empty())
            .map_err(|e| self.entry_error(rel, e))?;

        self.copy_exact(rel, size, &mut file)?;
        let pad = (BLOCK - size % BLOCK) % BLOCK;
        self.builder
            .get_mut()
            .write_all(&[0u8; BLOCK as usize][..pad as usize])
            .map_err(WorkspaceError::WriteArchive)?;
        self.entries += 1;
        Ok(())
    }

    /// Copies exactly `size` bytes of `file` into the archive; a file that
    /// ends early or has more to give is an error (the header already
    /// announced `size`).
    fn copy_exact(
        &mut self,
        rel: &Path,
        size: u64,
        file: &mut impl Read,
    ) -> Result<(), WorkspaceError> {
        let changed = |what: String| WorkspaceError::ChangedWhileReading {
            path: self.root.join(rel),
            what,
        };
        let mut left = size;
        while left > 0 {
            let want = left.min(self.copy_buf.len() as u64) as usize;
            let n = match file.read(&mut self.copy_buf[..want]) {
                Ok(0) => {
                    return Err(changed(format!(
                        "it shrank from {size} to {} bytes",
                        size - left
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkspaceError::io("reading", self.root.join(rel), e)),
            };
            self.builder
                .get_mut()
                .write_all(&self.copy_buf[..n])
                .map_err(WorkspaceError::WriteArchive)?;
            left -= n as u64;
        }
        let mut probe = [0u8; 1];
        loop {
            match file.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(changed(format!("it grew past {size} bytes"))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkspaceError::io("reading", self.root.join(rel), e)),
            }
        }
    }

    /// Ships `<root>/.git` under `.git/`, walking it through descriptors:
    /// symlinks ship as symlinks, sockets, FIFOs, devices and `*.lock` files
    /// are left out (a lock belongs to a git process on this host).
    fn ship_git_dir(&mut self, root: &OwnedFd) -> Result<(), WorkspaceError> {
        let rel = PathBuf::from(".git");
        let fd = match beneath::open_dir(root, rel.as_os_str()) {
            Ok(fd) => fd,
            Err(OpenError::Symlink) => {
                return Err(WorkspaceError::BeneathSymlink {
                    path: self.root.join(&rel),
                })
            }
            Err(OpenError::Missing | OpenError::NotADirectory) => {
                return Err(WorkspaceError::GitDirNotInRoot {
                    root: self.root.clone(),
                    git_dir: self.root.join(&rel),
                })
            }
            Err(OpenError::Sys(e)) => {
                return Err(WorkspaceError::io(
                    "opening",
                    self.root.join(&rel),
                    e.into(),
                ))
            }
        };
        self.walk_dir(fd, &rel, true)
    }

    fn walk_dir(&mut self, fd: OwnedFd, rel: &Path, top: bool) -> Result<(), WorkspaceError> {
        let full = self.root.join(rel);
        let st = fstat(&fd).map_err(|e| WorkspaceError::io("inspecting", &full, e.into()))?;
        if !self.emitted_dirs.contains(rel) {
            self.append_dir(rel, &st)?;
            self.emitted_dirs.insert(rel.to_path_buf());
        }
        let mut dir = nix::dir::Dir::from_fd(fd)
            .map_err(|e| WorkspaceError::io("listing", &full, e.into()))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| WorkspaceError::io("listing", &full, e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort();
        for name in names {
            let child = rel.join(&name);
            if skip_in_git_dir(&name, top) {
                continue;
            }
            let st = match beneath::lstat_at(&dir, &name) {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(e) => {
                    return Err(WorkspaceError::io(
                        "inspecting",
                        self.root.join(&child),
                        e.into(),
                    ))
                }
            };
            if beneath::is_type(&st, SFlag::S_IFDIR) {
                match beneath::open_dir(&dir, &name) {
                    Ok(sub) => self.walk_dir(sub, &child, false)?,
                    // Gone, or swapped for something else since the lstat.
                    Err(OpenError::Missing | OpenError::NotADirectory | OpenError::Symlink) => {}
                    Err(OpenError::Sys(e)) => {
                        return Err(WorkspaceError::io(
                            "opening directory",
                            self.root.join(&child),
                            e.into(),
                        ))
                    }
                }
            } else {
                self.ship_entry(dir.as_fd(), &name, &child, true)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<TarStats, WorkspaceError> {
        self.builder
            .finish()
            .map_err(WorkspaceError::WriteArchive)?;
        let sink = self.builder.get_mut();
        sink.flush().map_err(WorkspaceError::WriteArchive)?;
        Ok(TarStats {
            entries: self.entries,
            bytes: sink.written,
        })
    }

    /// An error from the tar builder: a failed write to the output, or a
    /// name the archive cannot hold.
    fn entry_error(&self, rel: &Path, e: io::Error) -> WorkspaceError {
        if self.builder.get_ref().write_failed {
            WorkspaceError::WriteArchive(e)
        } else {
            WorkspaceError::io("adding to the archive", self.root.join(rel), e)
        }
    }
}

/// Files in the git directory that must not ship: locks held by git on
/// this host, and this crate's own temporary indexes.
fn skip_in_git_dir(name: &OsStr, top: bool) -> bool {
    let b = name.as_bytes();
    b.ends_with(b".lock")
        || (top && (b.starts_with(b"banger-export-index.") || b.starts_with(b"banger-apply-")))
}

fn base_header(kind: EntryType, mode: u32, mtime: i64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    // "root" fits both fields; these cannot fail.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

fn kind_of(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFIFO => "fifo",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFBLK | SFlag::S_IFCHR => "device",
        SFlag::S_IFLNK => "symlink",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use crate::{open, select};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    #[derive(Debug)]
    struct Item {
        name: Vec<u8>,
        kind: EntryType,
        mode: u32,
        link: Option<Vec<u8>>,
        data: Vec<u8>,
    }

    fn read_back(archive: &[u8]) -> Vec<Item> {
        let mut ar = tar::Archive::new(archive);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header();
                assert_eq!(h.uid().unwrap(), 0);
                assert_eq!(h.gid().unwrap(), 0);
                assert_eq!(h.username().unwrap(), Some("root"));
                assert_eq!(h.groupname().unwrap(), Some("root"));
                let kind = h.entry_type();
                let mode = h.mode().unwrap();
                let name = e.path_bytes().into_owned();
                let link = e.link_name_bytes().map(|l| l.into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                Item {
                    name,
                    kind,
                    mode,
                    link,
                    data,
                }
            })
            .collect()
    }

    fn names(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| String::from_utf8_lossy(&i.name).into_owned())
            .collect()
    }

    fn item<'a>(items: &'a [Item], name: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.name == name.as_bytes())
            .unwrap_or_else(|| panic!("{name} not in {:?}", names(items)))
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn tar_of(root: &Path, untracked: bool, git_dir: bool) -> (Vec<u8>, TarStats) {
        let repo = open(root).unwrap();
        let sel = select(&repo, untracked).unwrap();
        let mut out = Vec::new();
        let stats = write_tar(&repo, &sel, git_dir, &mut out).unwrap();
        (out, stats)
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn ships_files_with_modes_and_each_parent_once_first() {
        let (_t, root) = repo_with_commit();
        write(&root, "src/main.rs", b"fn main() {}\n");
        write(&root, "src/util/mod.rs", b"pub mod x;\n");
        write(&root, "src/util/x.rs", b"");
        write(&root, "bin/run.sh", b"#!/bin/sh\necho hi\n");
        set_mode(&root.join("bin/run.sh"), 0o755);
        write(&root, "a/b/c/deep.txt", &vec![b'z'; 70_000]);
        write(&root, "private.key", b"k");
        set_mode(&root.join("private.key"), 0o600);
        commit_all(&root, "tree");
        write(&root, "src/untracked.rs", b"//\n");

        let (out, stats) = tar_of(&root, false, false);
        let items = read_back(&out);
        assert_eq!(
            names(&items),
            [
                "README",
                "a/",
                "a/b/",
                "a/b/c/",
                "a/b/c/deep.txt",
                "bin/",
                "bin/run.sh",
                "private.key",
                "src/",
                "src/main.rs",
                "src/util/",
                "src/util/mod.rs",
                "src/util/x.rs",
            ]
        );
        assert_eq!(stats.entries, items.len() as u64);
        assert_eq!(stats.bytes, out.len() as u64);
        assert_eq!(out.len() % 512, 0);

        for dir in ["a/", "a/b/", "bin/", "src/util/"] {
            let d = item(&items, dir);
            assert_eq!(d.kind, EntryType::Directory);
            assert_eq!(d.mode, 0o755);
        }
        let run = item(&items, "bin/run.sh");
        assert_eq!(run.kind, EntryType::Regular);
        assert_eq!(run.mode, 0o755);
        assert_eq!(run.data, b"#!/bin/sh\necho hi\n");
        assert_eq!(item(&items, "README").mode, 0o644);
        assert_eq!(item(&items, "private.key").mode, 0o600);
        assert_eq!(item(&items, "a/b/c/deep.txt").data, vec![b'z'; 70_000]);
        assert!(item(&items, "src/util/x.rs").data.is_empty());
    }

    #[test]
    fn symlinks_ship_as_links_and_are_never_followed() {
        let (t, root) = repo_with_commit();
        let secret_dir = t.path().join("secret");
        write(&secret_dir, "token", b"SECRET-OUTSIDE-THE-REPO-1234");
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("../secret/token", root.join("up")).unwrap();
        symlink("../secret", root.join("secret-dir")).unwrap();
        symlink("a//./b/", root.join("odd")).unwrap();
        let long_target = format!("{}/target", "t".repeat(150));
        symlink(&long_target, root.join("long-link")).unwrap();
        let long_name = format!("{}/{}.txt", "d".repeat(120), "n".repeat(120));
        write(&root, &long_name, b"long name content");
        commit_all(&root, "links");

        let (out, _) = tar_of(&root, false, false);
        let items = read_back(&out);
        for (name, target) in [
            ("passwd", "/etc/passwd"),
            ("up", "../secret/token"),
            ("secret-dir", "../secret"),
            ("odd", "a//./b/"),
            ("long-link", long_target.as_str()),
        ] {
            let i = item(&items, name);
            assert_eq!(i.kind, EntryType::Symlink, "{name}");
            assert_eq!(i.link.as_deref(), Some(target.as_bytes()), "{name}");
            assert!(i.data.is_empty());
        }
        assert_eq!(item(&items, &long_name).data, b"long name content");
        assert!(!contains(&out, b"SECRET-OUTSIDE-THE-REPO"));
        let passwd = std::fs::read("/etc/passwd").unwrap();
        let first_line = passwd.split(|b| *b == b'\n').next().unwrap();
        assert!(!first_line.is_empty());
        assert!(!contains(&out, first_line), "bytes of /etc/passwd shipped");
    }

    /// The index still lists `inner/secret.txt`, but `inner` is now a
    /// symlink to a directory outside the repo holding a file of that name.
    #[test]
    fn refuses_a_path_beneath_a_symlink() {
        let (t, root) = repo_with_commit();
        write(&root, "inner/secret.txt", b"harmless\n");
        commit_all(&root, "inner");
        let outside = t.path().join("outside");
        write(&outside, "secret.txt", b"TOP-SECRET-CONTENT-5678\n");
        std::fs::remove_dir_all(root.join("inner")).unwrap();
        symlink(&outside, root.join("inner")).unwrap();

        let repo = open(&root).unwrap();
        let sel = select(&repo, false).unwrap();
        assert!(sel.files.contains(&PathBuf::from("inner/secret.txt")));
        let mut out = Vec::new();
        let err = write_tar(&repo, &sel, false, &mut out).unwrap_err();
        assert!(
            matches!(&err, WorkspaceError::BeneathSymlink { path } if path.ends_with("inner/secret.txt")),
            "{err:?}"
        );
        assert!(err.to_string().contains("lies beneath a symlink"), "{err}");
        assert!(!contains(&out, b"TOP-SECRET"));
        // Abandoned: no end-of-archive blocks were written after the error.
        assert!(!out.ends_with(&[0u8; 1024]));
    }

    #[test]
    fn git_dir_ships_only_when_asked() {
        let (_t, root) = repo_with_commit();
        let (out, _) = tar_of(&root, false, false);
        assert!(names(&read_back(&out))
            .iter()
            .all(|n| !n.starts_with(".git")));

        write(&root, ".git/index.lock", b"held by a running git");
        symlink("/etc/passwd", root.join(".git/evil-link")).unwrap();
        nix::unistd::mkfifo(&root.join(".git/a-fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let (out, stats) = tar_of(&root, false, true);
        let items = read_back(&out);
        let all = names(&items);
        assert_eq!(stats.entries, items.len() as u64);
        assert!(all.contains(&".git/".to_string()));
        assert!(all.contains(&".git/objects/".to_string()));
        assert!(all.contains(&".git/refs/heads/main".to_string()));
        assert_eq!(
            item(&items, ".git/HEAD").data,
            std::fs::read(root.join(".git/HEAD")).unwrap()
        );
        assert_eq!(
            item(&items, ".git/index").data,
            std::fs::read(root.join(".git/index")).unwrap()
        );
        let link = item(&items, ".git/evil-link");
        assert_eq!(link.kind, EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(&b"/etc/passwd"[..]));
        assert!(!all
            .iter()
            .any(|n| n.ends_with(".lock") || n.contains("a-fifo")));
        // Each directory once, before its contents.
        let mut seen = HashSet::new();
        for n in &all {
            assert!(seen.insert(n.clone()), "{n} twice");
            let parent = Path::new(n.trim_end_matches('/')).parent().unwrap();
            if !parent.as_os_str().is_empty() {
                let p = format!("{}/", parent.display());
                assert!(seen.contains(&p), "{n} before {p}");
            }
        }
    }

    #[test]
    fn git_dir_elsewhere_is_refused() {
        let (_t, root) = repo_with_commit();
        let mut repo = open(&root).unwrap();
        repo.git_dir = root.join("elsewhere");
        let err = write_tar(&repo, &Selection::default(), true, Vec::new()).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::GitDirNotInRoot { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn vanished_files_are_skipped_and_odd_ones_refused() {
        let (_t, root) = repo_with_commit();
        let repo = open(&root).unwrap();
        let sel = Selection {
            files: vec!["README".into(), "gone/file".into(), "vanished.txt".into()],
            ..Selection::default()
        };
        let mut out = Vec::new();
        let stats = write_tar(&repo, &sel, false, &mut out).unwrap();
        assert_eq!(names(&read_back(&out)), ["README"]);
        assert_eq!(stats.entries, 1);

        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(root.join("adir")).unwrap();
        for (name, kind) in [("fifo", "fifo"), ("adir", "directory")] {
            let sel = Selection {
                files: vec![name.into()],
                ..Selection::default()
            };
            let err = write_tar(&repo, &sel, false, Vec::new()).unwrap_err();
            assert!(
                matches!(&err, WorkspaceError::UnsupportedFileType { kind: k, .. } if *k == kind),
                "{err:?}"
            );
        }
    }

    #[test]
    fn selection_paths_must_stay_inside() {
        let (_t, root) = repo_with_commit();
        let repo = open(&root).unwrap();
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./README"] {
            let sel = Selection {
                files: vec![bad.into()],
                ..Selection::default()
            };
            let err = write_tar(&repo, &sel, false, Vec::new()).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::InvalidSelectionPath { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_file_changing_size_is_an_error() {
        let mut w = TarWriter::new(Vec::new(), PathBuf::from("/repo"));
        let err = w
            .copy_exact(Path::new("f"), 10, &mut &b"short"[..])
            .unwrap_err();
        assert!(
            err.to_string().contains("shrank from 10 to 5 bytes"),
            "{err}"
        );
        let err = w
            .copy_exact(Path::new("f"), 3, &mut &b"longer"[..])
            .unwrap_err();
        assert!(err.to_string().contains("grew past 3 bytes"), "{err}");
        w.copy_exact(Path::new("f"), 6, &mut &b"length"[..])
            .unwrap();
    }

    #[test]
    fn a_failing_output_is_a_write_error() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (_t, root) = repo_with_commit();
        let repo = open(&root).unwrap();
        let sel = select(&repo, false).unwrap();
        let err = write_tar(&repo, &sel, true, Full).unwrap_err();
        assert!(matches!(err, WorkspaceError::WriteArchive(_)), "{err:?}");
    }

    /// GNU tar reads what we write, long names and targets included, and
    /// extracts the same tree.
    #[test]
    fn gnu_tar_extracts_the_same_tree() {
        let (t, root) = repo_with_commit();
        for i in 0..40 {
            write(
                &root,
                format!("dir{}/sub{}/f{i}.txt", i % 4, i % 3),
                format!("{i}\n").as_bytes(),
            );
        }
        let long = format!("{}/{}", "x".repeat(101), "y".repeat(150));
        write(&root, &long, b"long");
        symlink("t".repeat(200), root.join("long-link")).unwrap();
        write(&root, "name with\nnewline", b"nl");
        commit_all(&root, "many");

        let (out, _) = tar_of(&root, false, true);
        let archive = t.path().join("out.tar");
        std::fs::write(&archive, &out).unwrap();
        let dest = t.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"long");
        assert_eq!(
            std::fs::read(dest.join("name with\nnewline")).unwrap(),
            b"nl"
        );
        assert_eq!(
            std::fs::read_link(dest.join("long-link")).unwrap(),
            PathBuf::from("t".repeat(200))
        );
        // The extracted copy is a working checkout with nothing changed.
        let status = git(&dest, &["status", "--porcelain"]);
        assert!(status.is_empty(), "{}", String::from_utf8_lossy(&status));
    }
}
