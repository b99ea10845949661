//! Running host git: argv only, never a shell line, with the variables that
//! would point git at another repository than the one asked for removed.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::WorkspaceError;

/// Variables a caller (a git hook, a script run by git) may have set that
/// would redirect git away from the repository named with `-C`.
const REPO_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// One git invocation in `dir`.
pub(crate) struct Git<'a> {
    dir: &'a Path,
    args: Vec<OsString>,
    envs: Vec<(&'static str, OsString)>,
    stdin: Option<&'a [u8]>,
}

impl<'a> Git<'a> {
    pub(crate) fn new(dir: &'a Path) -> Self {
        Git {
            dir,
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
        }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub(crate) fn env(mut self, key: &'static str, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key, value.as_ref().to_owned()));
        self
    }

    pub(crate) fn stdin(mut self, data: &'a [u8]) -> Self {
        self.stdin = Some(data);
        self
    }

    /// The arguments as they appear in error messages.
    pub(crate) fn shown_args(&self) -> String {
        self.args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs git and returns its output whatever the exit status.
    pub(crate) fn output(&self) -> Result<Output, WorkspaceError> {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(self.dir).args(&self.args);
        for key in REPO_ENV {
            cmd.env_remove(key);
        }
        // Messages are matched in a few places ("not a git repository").
        cmd.env("LC_ALL", "C").env("LANGUAGE", "C");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let spawn_err = |source: io::Error| {
            if source.kind() == io::ErrorKind::NotFound {
                WorkspaceError::GitNotInstalled
            } else {
                WorkspaceError::GitSpawn {
                    dir: self.dir.to_path_buf(),
                    args: self.shown_args(),
                    source,
                }
            }
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let writer = match (self.stdin, child.stdin.take()) {
            (Some(data), Some(mut pipe)) => {
                let data = data.to_vec();
                // A thread feeds stdin while wait_with_output drains stdout
                // and stderr, so a large patch cannot deadlock on full pipes.
                Some(std::thread::spawn(move || {
                    // git may exit before reading everything (a bad patch);
                    // its exit status reports that, not the broken pipe.
                    let _ = pipe.write_all(&data);
                }))
            }
            _ => None,
        };
        let out = child.wait_with_output().map_err(spawn_err)?;
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(out)
    }

    /// Runs git; a non-zero exit is an error carrying git's stderr.
    pub(crate) fn run(&self) -> Result<Vec<u8>, WorkspaceError> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(&out))
        }
    }

    /// Runs git and returns stdout without its final newline, as a string.
    pub(crate) fn run_line(&self) -> Result<String, WorkspaceError> {
        let out = self.run()?;
        let line = strip_newline(&out);
        String::from_utf8(line.to_vec()).map_err(|_| self.unexpected(&out))
    }

    /// Runs git and returns stdout without its final newline, as a path.
    pub(crate) fn run_path(&self) -> Result<PathBuf, WorkspaceError> {
        let out = self.run()?;
        let line = strip_newline(&out);
        if line.is_empty() {
            return Err(self.unexpected(&out));
        }
        Ok(PathBuf::from(OsString::from_vec(line.to_vec())))
    }

    pub(crate) fn failed(&self, out: &Output) -> WorkspaceError {
        WorkspaceError::Git {
            dir: self.dir.to_path_buf(),
            args: self.shown_args(),
            status: out.status.to_string(),
            stderr: stderr_text(out),
        }
    }

    pub(crate) fn unexpected(&self, stdout: &[u8]) -> WorkspaceError {
        WorkspaceError::GitOutput {
            dir: self.dir.to_path_buf(),
            args: self.shown_args(),
            output: String::from_utf8_lossy(stdout).into_owned(),
        }
    }
}

/// git's stderr, trimmed, for an error message.
pub(crate) fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `out` without one trailing newline (paths may contain newlines, so only
/// the last one, which git adds, is dropped).
fn strip_newline(out: &[u8]) -> &[u8] {
    out.strip_suffix(b"\n").unwrap_or(out)
}

/// A hex object name of the length git prints (SHA-1 or SHA-256).
pub(crate) fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}
