//! Workspaces: a host git checkout copied into a VM, and what comes back.

use serde::{Deserialize, Serialize};

/// Where a workspace lands in the guest unless told otherwise. `/root` is
/// the VM's work disk, so the checkout survives stop/start.
pub const DEFAULT_GUEST_PATH: &str = "/root/repo";

/// How `prepare` lays the files down at the guest path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceMode {
    /// Extract over what is already there: files the host ships replace the
    /// guest's copies, files only the guest has (build outputs, caches)
    /// stay. A re-prepare after a host commit is cheap.
    #[default]
    Overlay,
    /// Empty the guest path first: the guest ends with exactly the host's
    /// selection and nothing else.
    FullCopy,
}

impl WorkspaceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::FullCopy => "full_copy",
        }
    }
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "overlay" => Ok(WorkspaceMode::Overlay),
            "full_copy" | "full-copy" => Ok(WorkspaceMode::FullCopy),
            other => Err(format!(
                "unknown workspace mode {other:?}: use overlay or full_copy"
            )),
        }
    }
}

impl std::fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM's prepared workspace, stored with the VM (survives daemon restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// Absolute path in the guest, e.g. `/root/repo`.
    pub guest_path: String,
    /// The host checkout it came from (its top-level directory).
    pub source_path: String,
    /// The host's HEAD when it was prepared; `None` for a repo with no
    /// commits yet.
    #[serde(default)]
    pub head_commit: Option<String>,
    pub mode: WorkspaceMode,
    #[serde(default)]
    pub include_untracked: bool,
    /// Unix seconds.
    pub prepared_at: i64,
}

/// `POST /v1/vms/{name}/workspace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareWorkspaceRequest {
    /// Absolute host path of the checkout (or a directory inside it).
    pub source_path: String,
    /// Default [`DEFAULT_GUEST_PATH`].
    #[serde(default)]
    pub guest_path: Option<String>,
    #[serde(default)]
    pub mode: WorkspaceMode,
    /// Ship untracked, non-ignored files too (default: git's index only).
    #[serde(default)]
    pub include_untracked: bool,
}

/// The answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareWorkspaceResult {
    pub workspace: WorkspaceInfo,
    /// Work-tree files shipped (the `.git` directory is not counted).
    pub files: u64,
    /// How many of `files` were untracked.
    pub untracked: u64,
    /// Tar entries the agent extracted, `.git` included.
    pub entries: u64,
    /// Payload bytes of the regular files extracted.
    pub bytes: u64,
    /// Paths not shipped, each with why (submodule, deleted in the work tree).
    #[serde(default)]
    pub skipped: Vec<String>,
    pub elapsed_ms: u64,
}

/// `POST /v1/vms/{name}/workspace/export`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportWorkspaceRequest {
    /// Diff against this commit instead of the guest's HEAD, so commits
    /// made in the guest are included.
    #[serde(default)]
    pub base_commit: Option<String>,
    /// Export this guest path instead of the recorded workspace.
    #[serde(default)]
    pub guest_path: Option<String>,
}

/// The patch of the guest's changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportWorkspaceResult {
    /// Base64 of `git diff --binary` output; empty when nothing changed.
    pub patch: String,
    pub guest_path: String,
    /// What the patch is relative to: the base commit given, else "HEAD".
    pub base: String,
}

/// `GET /v1/vms/{name}/ssh`: what `banger vm ssh` needs to reach the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshInfo {
    pub ip: String,
    /// `<name>.vm`, the host key alias in `known_hosts`.
    pub alias: String,
    pub user: String,
    /// banger's client key (private half).
    pub identity: String,
    /// A known_hosts file holding this VM's host key.
    pub known_hosts: String,
}

/// `GET /v1/ssh-config`: the include file `ssh-config --install` points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshConfigInfo {
    pub include_path: String,
}

/// Checks a guest path: absolute, normalized (no `.`/`..`/empty
/// components), not `/`, no control characters, at most 1024 bytes.
pub fn validate_guest_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("guest path {p:?} {why}"));
    if !p.starts_with('/') {
        return bad("must be absolute, e.g. /root/repo");
    }
    if p == "/" {
        return bad("cannot be / (pick a directory such as /root/repo)");
    }
    if p.len() > 1024 {
        return bad("is longer than 1024 bytes");
    }
    if p.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    if trimmed[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("must be normalized (no empty, '.' or '..' components)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        for ok in ["/root/repo", "/srv/x y", "/root/repo/", "/a"] {
            assert!(validate_guest_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "root/repo",
            "/root/../etc",
            "/root//repo",
            "/root/./x",
            "/a\nb",
        ] {
            assert!(validate_guest_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_guest_path(&format!("/{}", "a".repeat(1100))).is_err());
    }

    #[test]
    fn modes_parse_and_serialize() {
        assert_eq!("overlay".parse(), Ok(WorkspaceMode::Overlay));
        assert_eq!("full_copy".parse(), Ok(WorkspaceMode::FullCopy));
        assert!("copy".parse::<WorkspaceMode>().is_err());
        assert_eq!(
            serde_json::to_string(&WorkspaceMode::FullCopy).unwrap(),
            "\"full_copy\""
        );
    }
}
