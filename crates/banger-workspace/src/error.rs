//! The one error type of this crate. Every variant names the path, commit
//! or branch it concerns, and says what to do where there is a fix.

use std::io;
use std::path::PathBuf;

/// Why a workspace step failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("git is not installed (no `git` on PATH); install it, e.g. `apt-get install git`")]
    GitNotInstalled,

    #[error("{path} does not exist")]
    PathMissing { path: PathBuf },

    #[error("{path} is not a directory; pass the directory of a git checkout")]
    NotADirectory { path: PathBuf },

    #[error("not a git repository: {path} (run `git init` there, or pass a checkout)")]
    NotARepository { path: PathBuf },

    #[error("{path} is a bare git repository; pass a checkout with a work tree")]
    BareRepository { path: PathBuf },

    #[error("{path} is inside a git directory, not a work tree; pass the checkout itself")]
    InsideGitDir { path: PathBuf },

    #[error(
        "{root} is a linked worktree/submodule (its .git is a file); prepare the main checkout"
    )]
    LinkedWorktree { root: PathBuf },

    #[error("running `git {args}` in {dir}: {source}")]
    GitSpawn {
        dir: PathBuf,
        args: String,
        #[source]
        source: io::Error,
    },

    #[error("`git {args}` in {dir} failed ({status}): {stderr}")]
    Git {
        dir: PathBuf,
        args: String,
        status: String,
        stderr: String,
    },

    #[error("`git {args}` in {dir} printed something unexpected: {output:?}")]
    GitOutput {
        dir: PathBuf,
        args: String,
        output: String,
    },

    #[error(
        "invalid path in the selection: {path:?} (paths must be relative, without `.` or `..`)"
    )]
    InvalidSelectionPath { path: PathBuf },

    #[error("{path} lies beneath a symlink; refusing to follow it out of the repo")]
    BeneathSymlink { path: PathBuf },

    #[error("{path} is a {kind}; only regular files, directories and symlinks ship")]
    UnsupportedFileType { path: PathBuf, kind: &'static str },

    #[error("{path} changed while it was being archived ({what}); run prepare again")]
    ChangedWhileReading { path: PathBuf, what: String },

    #[error("{git_dir} is not {root}/.git; only a checkout whose .git directory lies inside it can ship its git directory")]
    GitDirNotInRoot { root: PathBuf, git_dir: PathBuf },

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("writing the archive: {0}")]
    WriteArchive(#[source] io::Error),

    #[error("invalid base commit {commit:?}: expected 4 to 64 hex characters")]
    InvalidCommit { commit: String },

    #[error("commit {commit:?} not found in {root}: {stderr}")]
    UnknownCommit {
        root: PathBuf,
        commit: String,
        stderr: String,
    },

    #[error("invalid branch name {name:?}: {reason}")]
    InvalidBranchName { name: String, reason: String },

    #[error("branch {branch} already exists in {root}; pick another name, or delete it with `git branch -D {branch}`")]
    BranchExists { root: PathBuf, branch: String },

    #[error("nothing to apply: the patch is empty")]
    NothingToApply,

    #[error("the patch does not apply on {base} in {root}: {stderr}")]
    PatchDoesNotApply {
        root: PathBuf,
        base: String,
        stderr: String,
    },
}

impl WorkspaceError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WorkspaceError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
