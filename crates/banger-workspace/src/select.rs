//! Which paths of a checkout ship: git's index (plus, on request, the
//! untracked files git does not ignore), never a directory walk.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::git::Git;
use crate::{Repo, WorkspaceError};

/// What [`write_tar`](crate::write_tar) will ship.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Paths relative to the repo root, sorted (component by component, so
    /// a directory's contents stay together), tracked first-class and
    /// untracked when asked for.
    pub files: Vec<PathBuf>,
    /// How many of `files` are untracked.
    pub untracked: usize,
    /// Paths left out, each with the reason: `submodule`, `deleted in the
    /// work tree`, `nested git repository`, or the kind of a file that
    /// cannot ship (`fifo`, `socket`, `device`, `directory`).
    pub skipped: Vec<(PathBuf, String)>,
}

pub const SKIP_SUBMODULE: &str = "submodule";
pub const SKIP_DELETED: &str = "deleted in the work tree";
pub const SKIP_NESTED_REPO: &str = "nested git repository";

/// Lists what ships from `repo`: every path in git's index except
/// submodules (gitlinks) and paths gone from the work tree, plus the
/// untracked, not ignored files when `include_untracked`.
pub fn select(repo: &Repo, include_untracked: bool) -> Result<Selection, WorkspaceError> {
    let mut files = BTreeSet::new();
    let mut skipped = Vec::new();

    let staged = Git::new(&repo.root)
        .args(["ls-files", "-z", "--cached", "--stage"])
        .run()?;
    let mut gitlinks = BTreeSet::new();
    for record in staged.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        // "<mode> <object> <stage>\t<path>"; an unmerged path has several
        // stages and ships once, as the work tree has it.
        let (meta, path) = split_stage_record(record).ok_or_else(|| {
            Git::new(&repo.root)
                .args(["ls-files", "-z", "--cached", "--stage"])
                .unexpected(record)
        })?;
        let path = PathBuf::from(OsStr::from_bytes(path));
        if meta.starts_with(b"160000 ") {
            gitlinks.insert(path);
        } else {
            files.insert(path);
        }
    }
    for path in gitlinks {
        if !files.contains(&path) {
            skipped.push((path, SKIP_SUBMODULE.to_string()));
        }
    }

    let mut shipped = Vec::with_capacity(files.len());
    for path in files {
        match work_tree_kind(&repo.root, &path)? {
            Kind::Ships => shipped.push(path),
            Kind::Missing => skipped.push((path, SKIP_DELETED.to_string())),
            Kind::Other(kind) => skipped.push((path, kind.to_string())),
        }
    }

    let mut untracked = 0;
    if include_untracked {
        let others = Git::new(&repo.root)
            .args(["ls-files", "-z", "--others", "--exclude-standard"])
            .run()?;
        for raw in others.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // Without --directory git names a nested repository (a
            // directory with its own .git) as "dir/" instead of listing
            // its files.
            if let Some(dir) = raw.strip_suffix(b"/") {
                let path = PathBuf::from(OsStr::from_bytes(dir));
                skipped.push((path, SKIP_NESTED_REPO.to_string()));
                continue;
            }
            let path = PathBuf::from(OsStr::from_bytes(raw));
            match work_tree_kind(&repo.root, &path)? {
                Kind::Ships => {
                    shipped.push(path);
                    untracked += 1;
                }
                // Gone since git listed it: nothing to say about it.
                Kind::Missing => {}
                Kind::Other(kind) => skipped.push((path, kind.to_string())),
            }
        }
    }

    shipped.sort();
    skipped.sort();
    Ok(Selection {
        files: shipped,
        untracked,
        skipped,
    })
}

fn split_stage_record(record: &[u8]) -> Option<(&[u8], &[u8])> {
    let tab = record.iter().position(|b| *b == b'\t')?;
    let path = &record[tab + 1..];
    (!path.is_empty()).then_some((&record[..tab], path))
}

enum Kind {
    Ships,
    Missing,
    Other(&'static str),
}

/// What the work tree holds at `rel`. An ancestor that became a symlink is
/// not judged here: write_tar refuses such a path.
fn work_tree_kind(root: &Path, rel: &Path) -> Result<Kind, WorkspaceError> {
    let full = root.join(rel);
    match std::fs::symlink_metadata(&full) {
        Ok(m) => {
            let t = m.file_type();
            Ok(if t.is_file() || t.is_symlink() {
                Kind::Ships
            } else {
                Kind::Other(kind_name(t))
            })
        }
        // ENOTDIR: an ancestor became a file, so the path is gone too.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            Ok(Kind::Missing)
        }
        Err(e) => Err(WorkspaceError::io("inspecting", full, e)),
    }
}

/// A word for a file type that does not ship.
pub(crate) fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open;
    use crate::testutil::*;
    use std::os::unix::ffi::OsStringExt;

    fn paths(sel: &Selection) -> Vec<&[u8]> {
        sel.files.iter().map(|p| p.as_os_str().as_bytes()).collect()
    }

    #[test]
    fn tracked_only_by_default() {
        let (_t, root) = repo_with_commit();
        write(&root, ".gitignore", b"*.log\n");
        write(&root, "src/main.rs", b"fn main() {}\n");
        commit_all(&root, "more");
        write(&root, "new.txt", b"untracked\n");
        write(&root, "debug.log", b"ignored\n");
        write(&root, "src/lib.rs", b"untracked too\n");

        let repo = open(&root).unwrap();
        let sel = select(&repo, false).unwrap();
        assert_eq!(
            paths(&sel),
            vec![&b".gitignore"[..], b"README", b"src/main.rs"]
        );
        assert_eq!(sel.untracked, 0);
        assert!(sel.skipped.is_empty(), "{:?}", sel.skipped);

        let sel = select(&repo, true).unwrap();
        assert_eq!(
            paths(&sel),
            vec![
                &b".gitignore"[..],
                b"README",
                b"new.txt",
                b"src/lib.rs",
                b"src/main.rs"
            ]
        );
        assert_eq!(sel.untracked, 2);
    }

    #[test]
    fn files_deleted_in_the_work_tree_are_skipped() {
        let (_t, root) = repo_with_commit();
        write(&root, "gone.txt", b"x");
        write(&root, "dir/gone.txt", b"x");
        commit_all(&root, "add");
        std::fs::remove_file(root.join("gone.txt")).unwrap();
        std::fs::remove_dir_all(root.join("dir")).unwrap();

        let sel = select(&open(&root).unwrap(), false).unwrap();
        assert_eq!(paths(&sel), vec![&b"README"[..]]);
        assert_eq!(
            sel.skipped,
            vec![
                (PathBuf::from("dir/gone.txt"), SKIP_DELETED.to_string()),
                (PathBuf::from("gone.txt"), SKIP_DELETED.to_string()),
            ]
        );
    }

    #[test]
    fn submodules_are_skipped() {
        let (_t, root) = repo_with_commit();
        let head = git_line(&root, &["rev-parse", "HEAD"]);
        // A gitlink entry, as `git submodule add` leaves in the index.
        git(
            &root,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{head},vendor/lib"),
            ],
        );
        std::fs::create_dir_all(root.join("vendor/lib")).unwrap();

        let sel = select(&open(&root).unwrap(), true).unwrap();
        assert_eq!(paths(&sel), vec![&b"README"[..]]);
        assert_eq!(
            sel.skipped,
            vec![(PathBuf::from("vendor/lib"), SKIP_SUBMODULE.to_string())]
        );
    }

    #[test]
    fn nested_repositories_and_fifos_are_skipped() {
        let (_t, root) = repo_with_commit();
        // Tracked as a file, a FIFO in the work tree now (git itself
        // never lists an untracked FIFO).
        write(&root, "pipe", b"was a file");
        commit_all(&root, "pipe");
        std::fs::remove_file(root.join("pipe")).unwrap();
        let nested = root.join("nested");
        std::fs::create_dir(&nested).unwrap();
        git(&nested, &["init", "-q"]);
        write(&nested, "inner.txt", b"x");
        nix::unistd::mkfifo(
            &root.join("pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();

        let sel = select(&open(&root).unwrap(), true).unwrap();
        assert_eq!(paths(&sel), vec![&b"README"[..]]);
        assert_eq!(
            sel.skipped,
            vec![
                (PathBuf::from("nested"), SKIP_NESTED_REPO.to_string()),
                (PathBuf::from("pipe"), "fifo".to_string()),
            ]
        );
    }

    #[test]
    fn odd_names_survive() {
        let (_t, root) = repo_with_commit();
        let spaced = "with space.txt";
        let newline = "line\nbreak.txt";
        let latin1 = std::ffi::OsString::from_vec(b"caf\xe9.txt".to_vec());
        write(&root, spaced, b"1");
        write(&root, newline, b"2");
        write(&root, &latin1, b"3");
        write(&root, "quote\"d.txt", b"4");
        git(&root, &["add", spaced, newline, "quote\"d.txt"]);
        git_cmd(&root)
            .args(["add", "--"])
            .arg(&latin1)
            .status()
            .unwrap();
        git(&root, &["commit", "-q", "-m", "odd"]);
        write(&root, "untracked name", b"5");

        let sel = select(&open(&root).unwrap(), true).unwrap();
        assert_eq!(
            paths(&sel),
            vec![
                &b"README"[..],
                b"caf\xe9.txt",
                b"line\nbreak.txt",
                b"quote\"d.txt",
                b"untracked name",
                b"with space.txt",
            ]
        );
        assert_eq!(sel.untracked, 1);
    }

    #[test]
    fn unmerged_paths_ship_once() {
        let (_t, root) = repo_with_commit();
        let base = git_line(&root, &["rev-parse", "HEAD"]);
        write(&root, "README", b"ours\n");
        commit_all(&root, "ours");
        git(&root, &["checkout", "-q", "-b", "other", &base]);
        write(&root, "README", b"theirs\n");
        commit_all(&root, "theirs");
        let out = git_cmd(&root)
            .args(["merge", "-q", "main"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the merge should conflict");

        let sel = select(&open(&root).unwrap(), false).unwrap();
        assert_eq!(paths(&sel), vec![&b"README"[..]]);
    }
}
