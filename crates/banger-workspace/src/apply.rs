//! Bringing an exported patch home as a new branch.
//!
//! The patch is applied to a temporary index seeded from the base commit,
//! never to the user's work tree or index: `git read-tree <base>`, `git
//! apply --cached --binary`, `git write-tree`, `git commit-tree`, and
//! finally `git branch`. Compared with applying in a temporary `git
//! worktree`, nothing gets checked out (fast on big repos), no checkout or
//! commit hooks run, clean/smudge filters cannot disagree with the patch
//! (it was made from index blobs and is applied to index blobs), and there
//! is no worktree to clean up: only the temporary index, removed whatever
//! happens.

use std::path::Path;

use crate::git::{self, Git};
use crate::{Repo, WorkspaceError};

/// Checks `name` is a branch name git accepts (`git check-ref-format
/// --branch`), and refuses a leading `-`, which git would read as an
/// option, as well as `@{-N}`-style names that only mean another branch.
pub fn validate_branch_name(name: &str) -> Result<(), WorkspaceError> {
    let invalid = |reason: &str| WorkspaceError::InvalidBranchName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.starts_with('-') {
        return Err(invalid("it starts with '-'"));
    }
    // Run from `/`, normally outside any repository. Inside one,
    // `--branch` would expand `@{-1}` to the previously checked-out branch
    // and succeed; comparing its answer with the name catches that.
    let check = Git::new(Path::new("/")).args(["check-ref-format", "--branch", name]);
    let out = check.output()?;
    if !out.status.success() {
        return Err(invalid(&format!(
            "{} (see `git help check-ref-format`)",
            git::stderr_text(&out).trim_start_matches("fatal: ")
        )));
    }
    if String::from_utf8_lossy(&out.stdout).trim_end_matches('\n') != name {
        return Err(invalid("it refers to another branch"));
    }
    Ok(())
}

/// Applies `patch` (the output of [`guest::export_argv`](crate::guest))
/// on top of `base` (a commit of `repo`) and records the result as the new
/// branch `branch`, committed with `message`. The user's checkout, index
/// and HEAD stay as they are. Refuses an existing branch and an empty
/// patch ("nothing to apply").
///
/// The commit carries the user's git identity; when none is configured it
/// falls back to `banger <banger@localhost>`. Returns the new commit's sha.
pub fn apply_to_branch(
    repo: &Repo,
    patch: &[u8],
    base: &str,
    branch: &str,
    message: &str,
) -> Result<String, WorkspaceError> {
    validate_branch_name(branch)?;
    if patch.iter().all(u8::is_ascii_whitespace) {
        return Err(WorkspaceError::NothingToApply);
    }
    let root = repo.root.as_path();
    let base_sha = resolve_commit(root, base)?;

    let exists = Git::new(root)
        .args(["show-ref", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .output()?;
    if exists.status.success() {
        return Err(WorkspaceError::BranchExists {
            root: root.to_path_buf(),
            branch: branch.to_string(),
        });
    }

    // Inside the git directory: same filesystem as the repo (git renames
    // `index.lock` into place), and removed with its lock file on drop.
    let tmp = tempfile::Builder::new()
        .prefix("banger-apply-")
        .tempdir_in(&repo.git_dir)
        .map_err(|e| WorkspaceError::io("creating a temporary index in", &repo.git_dir, e))?;
    let index = tmp.path().join("index");
    let with_index = |args: &[&str]| Git::new(root).args(args).env("GIT_INDEX_FILE", &index);

    with_index(&["read-tree", &base_sha]).run()?;
    let apply =
        with_index(&["apply", "--cached", "--binary", "--whitespace=nowarn", "-"]).stdin(patch);
    let out = apply.output()?;
    if !out.status.success() {
        return Err(WorkspaceError::PatchDoesNotApply {
            root: root.to_path_buf(),
            base: base.to_string(),
            stderr: git::stderr_text(&out),
        });
    }
    let tree = with_index(&["write-tree"]).run_line()?;

    let mut message = message.to_string();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let commit = identity(root)?
        .args(["commit-tree", &tree, "-p", &base_sha, "-F", "-"])
        .stdin(message.as_bytes());
    let sha = commit.run_line()?;
    if !git::is_object_id(&sha) {
        return Err(commit.unexpected(sha.as_bytes()));
    }

    let create = Git::new(root).args(["branch", branch, &sha]);
    let out = create.output()?;
    if !out.status.success() {
        let stderr = git::stderr_text(&out);
        if stderr.contains("already exists") {
            return Err(WorkspaceError::BranchExists {
                root: root.to_path_buf(),
                branch: branch.to_string(),
            });
        }
        return Err(create.failed(&out));
    }
    Ok(sha)
}

/// The full sha of the commit `base` names in the repo at `root`.
fn resolve_commit(root: &Path, base: &str) -> Result<String, WorkspaceError> {
    let unknown = |stderr: String| WorkspaceError::UnknownCommit {
        root: root.to_path_buf(),
        commit: base.to_string(),
        stderr,
    };
    if base.is_empty() || base.starts_with('-') {
        return Err(unknown("not a commit name".into()));
    }
    let git = Git::new(root)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{base}^{{commit}}"));
    let out = git.output()?;
    if !out.status.success() {
        let stderr = git::stderr_text(&out);
        return Err(unknown(if stderr.is_empty() {
            "no such commit".into()
        } else {
            stderr
        }));
    }
    let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !git::is_object_id(&sha) {
        return Err(git.unexpected(&out.stdout));
    }
    Ok(sha)
}

/// A git command in `root` that can commit: the user's identity when git
/// has one (`git var` fails exactly when `git commit` would refuse for
/// lack of one), else banger's.
fn identity(root: &Path) -> Result<Git<'_>, WorkspaceError> {
    for var in ["GIT_AUTHOR_IDENT", "GIT_COMMITTER_IDENT"] {
        if !Git::new(root).args(["var", var]).output()?.status.success() {
            return Ok(Git::new(root).args([
                "-c",
                "user.name=banger",
                "-c",
                "user.email=banger@localhost",
            ]));
        }
    }
    Ok(Git::new(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::export_argv;
    use crate::open;
    use crate::testutil::*;
    use std::path::PathBuf;
    use std::process::Command;

    #[test]
    fn branch_names() {
        isolate();
        for good in ["feature", "banger/vm-1", "fix.2", "a-b_c"] {
            validate_branch_name(good).unwrap();
        }
        for bad in [
            "", "-x", "--force", "a b", "a..b", "x.lock", "HEAD", "@{-1}", "a~1", "a:b", "/a", "a/",
        ] {
            let err = validate_branch_name(bad).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::InvalidBranchName { .. }),
                "{bad:?}: {err:?}"
            );
        }
    }

    /// A host repo and the patch a guest copy of it exports (against
    /// `base`): an edited file, a new file, a deleted file, a binary one.
    fn host_and_patch() -> (tempfile::TempDir, PathBuf, String, Vec<u8>) {
        let (t, host) = new_repo();
        write(&host, "edit.txt", b"one\ntwo\n");
        write(&host, "remove.txt", b"bye\n");
        write(&host, "bin.dat", &[0, 1, 2, 3]);
        let base = commit_all(&host, "base");

        let guest = t.path().join("guest");
        assert!(Command::new("cp")
            .arg("-a")
            .arg(&host)
            .arg(&guest)
            .status()
            .unwrap()
            .success());
        write(&guest, "edit.txt", b"one\nTWO\n");
        write(&guest, "dir/new.txt", b"new\n");
        write(&guest, "bin.dat", &[0, 1, 2, 3, 0, 9]);
        std::fs::remove_file(guest.join("remove.txt")).unwrap();
        let argv = export_argv(guest.to_str().unwrap(), Some(&base)).unwrap();
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (t, host, base, out.stdout)
    }

    fn worktrees(root: &Path) -> usize {
        String::from_utf8(git(root, &["worktree", "list", "--porcelain"]))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("worktree "))
            .count()
    }

    fn leftovers(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join(".git"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("banger-"))
            .collect()
    }

    #[test]
    fn applies_to_a_new_branch_without_touching_the_checkout() {
        let (_t, host, base, patch) = host_and_patch();
        // The user has moved on: a later commit, staged and unstaged work.
        write(&host, "later.txt", b"later\n");
        let head = commit_all(&host, "later");
        write(&host, "staged.txt", b"staged\n");
        git(&host, &["add", "staged.txt"]);
        write(&host, "edit.txt", b"local edit\n");
        let index_before = std::fs::read(host.join(".git/index")).unwrap();
        let status_before = git(&host, &["status", "--porcelain"]);

        let repo = open(&host).unwrap();
        let sha = apply_to_branch(&repo, &patch, &base, "banger/vm-1", "Work from vm-1").unwrap();

        assert_eq!(
            git_line(&host, &["rev-parse", "refs/heads/banger/vm-1"]),
            sha
        );
        assert_eq!(git_line(&host, &["rev-parse", &format!("{sha}^")]), base);
        let files = git_line(&host, &["ls-tree", "-r", "--name-only", &sha]);
        assert_eq!(
            files.lines().collect::<Vec<_>>(),
            ["bin.dat", "dir/new.txt", "edit.txt"]
        );
        assert_eq!(
            git(&host, &["show", &format!("{sha}:edit.txt")]),
            b"one\nTWO\n"
        );
        assert_eq!(
            git(&host, &["show", &format!("{sha}:bin.dat")]),
            [0, 1, 2, 3, 0, 9]
        );
        assert_eq!(
            git_line(&host, &["log", "-1", "--format=%s|%an <%ae>", &sha]),
            "Work from vm-1|Test User <test@example.com>"
        );

        assert_eq!(git_line(&host, &["rev-parse", "HEAD"]), head);
        assert_eq!(
            git_line(&host, &["symbolic-ref", "HEAD"]),
            "refs/heads/main"
        );
        assert_eq!(
            std::fs::read(host.join(".git/index")).unwrap(),
            index_before
        );
        assert_eq!(git(&host, &["status", "--porcelain"]), status_before);
        assert_eq!(
            std::fs::read(host.join("edit.txt")).unwrap(),
            b"local edit\n"
        );
        assert_eq!(worktrees(&host), 1);
        assert!(leftovers(&host).is_empty());

        // Again under the same name: refused, nothing changes.
        let err = apply_to_branch(&repo, &patch, &base, "banger/vm-1", "again").unwrap_err();
        assert!(
            matches!(err, WorkspaceError::BranchExists { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("git branch -D banger/vm-1"),
            "{err}"
        );
        assert_eq!(
            git_line(&host, &["rev-parse", "refs/heads/banger/vm-1"]),
            sha
        );
    }

    #[test]
    fn a_conflicting_patch_leaves_nothing_behind() {
        let (_t, host, _base, patch) = host_and_patch();
        // A base where edit.txt no longer has the lines the patch expects.
        write(&host, "edit.txt", b"rewritten\n");
        let other = commit_all(&host, "rewrite");
        let repo = open(&host).unwrap();
        let err = apply_to_branch(&repo, &patch, &other, "nope", "msg").unwrap_err();
        assert!(
            matches!(err, WorkspaceError::PatchDoesNotApply { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("edit.txt"), "{err}");
        let branches = git_line(&host, &["branch", "--list", "nope"]);
        assert!(branches.is_empty(), "{branches}");
        assert_eq!(worktrees(&host), 1);
        assert!(leftovers(&host).is_empty());
    }

    #[test]
    fn refuses_empty_patches_and_unknown_bases() {
        let (_t, host, base, patch) = host_and_patch();
        let repo = open(&host).unwrap();
        let err = apply_to_branch(&repo, b"", &base, "b1", "m").unwrap_err();
        assert!(matches!(err, WorkspaceError::NothingToApply), "{err:?}");
        assert!(err.to_string().starts_with("nothing to apply"));
        let err = apply_to_branch(&repo, b"\n \n", &base, "b1", "m").unwrap_err();
        assert!(matches!(err, WorkspaceError::NothingToApply), "{err:?}");

        for bad in ["deadbeefdeadbeef", "-h", "", "HEAD:edit.txt"] {
            let err = apply_to_branch(&repo, &patch, bad, "b1", "m").unwrap_err();
            assert!(
                matches!(err, WorkspaceError::UnknownCommit { .. }),
                "{bad:?}: {err:?}"
            );
        }
        let err = apply_to_branch(&repo, &patch, &base, "-b", "m").unwrap_err();
        assert!(
            matches!(err, WorkspaceError::InvalidBranchName { .. }),
            "{err:?}"
        );
        assert!(git_line(&host, &["branch", "--list", "b1"]).is_empty());
    }

    #[test]
    fn falls_back_to_banger_identity() {
        let (_t, host, base, patch) = host_and_patch();
        // No identity anywhere, and no guessing from the hostname.
        git(&host, &["config", "--unset", "user.name"]);
        git(&host, &["config", "--unset", "user.email"]);
        git(&host, &["config", "user.useConfigOnly", "true"]);
        let repo = open(&host).unwrap();
        let sha = apply_to_branch(&repo, &patch, &base, "anon", "m").unwrap();
        assert_eq!(
            git_line(&host, &["log", "-1", "--format=%an <%ae>|%cn <%ce>", &sha]),
            "banger <banger@localhost>|banger <banger@localhost>"
        );
    }
}
