//! Test fixtures: real git repositories in temporary directories, with git
//! isolated from the machine's and the user's configuration.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use tempfile::TempDir;

/// Cuts every test's git (and the library's, which inherits this process's
/// environment) off from ~/.gitconfig, /etc/gitconfig and identity
/// variables. Each fixture calls it first; the `Once` makes it happen
/// before any test thread starts a git process.
pub fn isolate() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("GIT_CONFIG_GLOBAL", "/dev/null");
        std::env::set_var("GIT_CONFIG_NOSYSTEM", "1");
        for key in [
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_EMAIL",
            "GIT_AUTHOR_DATE",
            "GIT_COMMITTER_NAME",
            "GIT_COMMITTER_EMAIL",
            "GIT_COMMITTER_DATE",
            "EMAIL",
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
        ] {
            std::env::remove_var(key);
        }
    });
}

/// A git command in `dir` for the tests' own setup steps.
pub fn git_cmd(dir: &Path) -> Command {
    isolate();
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
    cmd
}

/// Runs git in `dir`, panicking with its stderr on failure; returns stdout.
pub fn git<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Vec<u8> {
    let out = git_cmd(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {:?} in {}: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Like [`git`], trimmed to one line of text.
pub fn git_line<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> String {
    String::from_utf8(git(dir, args))
        .unwrap()
        .trim()
        .to_string()
}

/// An empty repository at `<tmp>/repo` with a local identity, on `main`.
pub fn new_repo() -> (TempDir, PathBuf) {
    isolate();
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    std::fs::create_dir(&root).unwrap();
    git(&root, &["init", "-q", "-b", "main"]);
    git(&root, &["config", "user.name", "Test User"]);
    git(&root, &["config", "user.email", "test@example.com"]);
    (t, root)
}

/// A repository with one commit holding `README`.
pub fn repo_with_commit() -> (TempDir, PathBuf) {
    let (t, root) = new_repo();
    write(&root, "README", b"hello\n");
    commit_all(&root, "initial");
    (t, root)
}

/// Writes `rel` under `root`, creating its parents.
pub fn write(root: &Path, rel: impl AsRef<Path>, content: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Stages everything and commits; returns the new commit's sha.
pub fn commit_all(root: &Path, message: &str) -> String {
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "--no-verify", "-m", message]);
    git_line(root, &["rev-parse", "HEAD"])
}
