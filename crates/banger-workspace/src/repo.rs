//! Finding the checkout a path belongs to.

use std::io;
use std::path::{Path, PathBuf};

use crate::git::{self, Git};
use crate::WorkspaceError;

/// A git checkout on the host, as git sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// The top of the work tree (`git rev-parse --show-toplevel`).
    pub root: PathBuf,
    /// The absolute git directory (`git rev-parse --absolute-git-dir`);
    /// `<root>/.git` for every repo [`open`] accepts, unless git was told
    /// otherwise by its config (`core.worktree`).
    pub git_dir: PathBuf,
    /// The commit HEAD points at; `None` while the repo has no commits yet.
    pub head: Option<String>,
}

/// Opens the checkout that contains `path` (the checkout itself or any
/// directory below it).
///
/// Refused: a path that does not exist or is not a directory, a path
/// outside any git work tree, a bare repository, a path inside a `.git`
/// directory, and linked worktrees and submodule checkouts (their `.git`
/// is a file pointing elsewhere; shipping those is out of scope).
pub fn open(path: &Path) -> Result<Repo, WorkspaceError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(WorkspaceError::NotADirectory {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WorkspaceError::PathMissing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(WorkspaceError::io("inspecting", path, e)),
    }

    let probe = Git::new(path).args(["rev-parse", "--is-bare-repository", "--is-inside-work-tree"]);
    let out = probe.output()?;
    if !out.status.success() {
        let stderr = git::stderr_text(&out);
        if stderr.contains("not a git repository") {
            return Err(WorkspaceError::NotARepository {
                path: path.to_path_buf(),
            });
        }
        // Everything else (dubious ownership, a broken config) is best
        // explained by git itself.
        return Err(probe.failed(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (bare, in_work_tree) = (lines.next(), lines.next());
    if bare == Some("true") {
        return Err(WorkspaceError::BareRepository {
            path: path.to_path_buf(),
        });
    }
    if in_work_tree != Some("true") {
        return Err(WorkspaceError::InsideGitDir {
            path: path.to_path_buf(),
        });
    }

    // Asked separately: a path may contain a newline, so each answer is
    // exactly one line with git's trailing newline removed.
    let root = Git::new(path)
        .args(["rev-parse", "--show-toplevel"])
        .run_path()?;
    let git_dir = Git::new(path)
        .args(["rev-parse", "--absolute-git-dir"])
        .run_path()?;

    let dot_git = root.join(".git");
    match std::fs::symlink_metadata(&dot_git) {
        Ok(m) if m.file_type().is_file() => {
            return Err(WorkspaceError::LinkedWorktree { root });
        }
        Ok(_) => {}
        // No .git at all (core.worktree pointing here from elsewhere): the
        // repo opens, but its git directory cannot ship (see write_tar).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(WorkspaceError::io("inspecting", dot_git, e)),
    }

    let head = head_commit(&root)?;
    Ok(Repo {
        root,
        git_dir,
        head,
    })
}

/// The commit HEAD of the repo at `root` points at, or `None` when the
/// repo has no commits yet.
pub fn head_commit(root: &Path) -> Result<Option<String>, WorkspaceError> {
    let git = Git::new(root).args(["rev-parse", "--verify", "-q", "HEAD"]);
    let out = git.output()?;
    if out.status.success() {
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !git::is_object_id(&sha) {
            return Err(git.unexpected(&out.stdout));
        }
        return Ok(Some(sha));
    }
    // `--verify -q` exits 1 without a word when HEAD does not resolve
    // (unborn branch); 128 means something else is wrong.
    if out.status.code() == Some(1) && out.stderr.is_empty() {
        return Ok(None);
    }
    let stderr = git::stderr_text(&out);
    if stderr.contains("not a git repository") {
        return Err(WorkspaceError::NotARepository {
            path: root.to_path_buf(),
        });
    }
    Err(git.failed(&out))
}

/// The mise config at the top of `root` that makes a tool bootstrap
/// necessary: `.mise.toml`, `mise.toml` or `.tool-versions`, the first one
/// present (a symlink counts: it ships as one and mise follows it).
pub fn mise_config(root: &Path) -> Option<&'static str> {
    [".mise.toml", "mise.toml", ".tool-versions"]
        .into_iter()
        .find(|name| std::fs::symlink_metadata(root.join(name)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn opens_a_checkout_with_its_head() {
        let (_t, root) = repo_with_commit();
        let repo = open(&root).unwrap();
        assert_eq!(repo.root, root.canonicalize().unwrap());
        assert_eq!(repo.git_dir, repo.root.join(".git"));
        let head = git_line(&root, &["rev-parse", "HEAD"]);
        assert_eq!(repo.head.as_deref(), Some(head.as_str()));
        assert_eq!(head_commit(&root).unwrap(), Some(head));
    }

    #[test]
    fn unborn_repo_has_no_head() {
        let (_t, root) = new_repo();
        let repo = open(&root).unwrap();
        assert_eq!(repo.head, None);
        assert_eq!(head_commit(&root).unwrap(), None);
    }

    #[test]
    fn a_subdirectory_resolves_to_the_root() {
        let (_t, root) = repo_with_commit();
        std::fs::create_dir_all(root.join("deep/er")).unwrap();
        let repo = open(&root.join("deep/er")).unwrap();
        assert_eq!(repo.root, root.canonicalize().unwrap());
    }

    #[test]
    fn refuses_a_plain_directory() {
        isolate();
        let t = tempfile::tempdir().unwrap();
        let err = open(t.path()).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::NotARepository { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("not a git repository: "), "{msg}");
        assert!(msg.contains("git init"), "{msg}");
        assert!(head_commit(t.path()).is_err());
    }

    #[test]
    fn refuses_missing_paths_and_files() {
        let (_t, root) = repo_with_commit();
        let err = open(&root.join("nope")).unwrap_err();
        assert!(matches!(err, WorkspaceError::PathMissing { .. }), "{err:?}");
        let err = open(&root.join("README")).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::NotADirectory { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_bare_repos_and_git_dirs() {
        let (_t, root) = repo_with_commit();
        let err = open(&root.join(".git")).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::InsideGitDir { .. }),
            "{err:?}"
        );

        let t = tempfile::tempdir().unwrap();
        let bare = t.path().join("bare.git");
        git(t.path(), &["init", "-q", "--bare", "bare.git"]);
        let err = open(&bare).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::BareRepository { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_a_linked_worktree() {
        let (t, root) = repo_with_commit();
        let wt = t.path().join("linked");
        git(
            &root,
            &["worktree", "add", "-q", "--detach", wt.to_str().unwrap()],
        );
        let err = open(&wt).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::LinkedWorktree { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("prepare the main checkout"));
    }

    #[test]
    fn finds_mise_configs_in_order() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(mise_config(t.path()), None);
        std::fs::write(t.path().join(".tool-versions"), "node 20\n").unwrap();
        assert_eq!(mise_config(t.path()), Some(".tool-versions"));
        std::fs::write(t.path().join("mise.toml"), "").unwrap();
        assert_eq!(mise_config(t.path()), Some("mise.toml"));
        std::fs::write(t.path().join(".mise.toml"), "").unwrap();
        assert_eq!(mise_config(t.path()), Some(".mise.toml"));
    }
}
