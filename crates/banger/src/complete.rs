//! Shell completion: `banger completion <shell>`.
//!
//! It uses clap_complete's dynamic engine: `banger completion
//! <shell>` prints a small registration script, and on every TAB the shell
//! runs `COMPLETE=<shell> banger -- <words>`, which `main` hands to
//! [`clap_complete::CompleteEnv`] before anything else happens. Arguments
//! that name a VM, an image or a kernel carry a completer from here that
//! asks the running daemon for the names; nothing else is asked of it, the
//! daemon is never started for a TAB, and a daemon that is down, slow or
//! another version yields no candidates instead of an error.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use banger_client::Client;
use clap::{Args, ValueEnum};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use clap_complete::env::Shells;

/// The environment variable the registration scripts set when they call
/// back into banger (clap_complete's default).
pub const COMPLETE_VAR: &str = "COMPLETE";

/// How long one TAB may wait for the daemon before offering nothing.
const TIMEOUT: Duration = Duration::from_millis(500);

/// What a completer lists: the daemon's endpoint and the field shown next to
/// each name (zsh and fish display it; bash shows names only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// `GET /v1/vms`, with the VM's state.
    Vms,
    /// `GET /v1/images`, with the image's source.
    Images,
    /// `GET /v1/kernels`, with the kernel's version.
    Kernels,
    /// `GET /v1/kernels/catalog`, with the kernel's version.
    CatalogKernels,
}

impl Names {
    fn path(self) -> &'static str {
        match self {
            Names::Vms => "/vms",
            Names::Images => "/images",
            Names::Kernels => "/kernels",
            Names::CatalogKernels => "/kernels/catalog",
        }
    }

    fn help_field(self) -> &'static str {
        match self {
            Names::Vms => "state",
            Names::Images => "source",
            Names::Kernels | Names::CatalogKernels => "version",
        }
    }
}

/// Completer for an argument that takes a VM name.
pub fn vms() -> ArgValueCompleter {
    ArgValueCompleter::new(|cur: &OsStr| complete(Names::Vms, cur))
}

/// Completer for an argument that takes an image name.
pub fn images() -> ArgValueCompleter {
    ArgValueCompleter::new(|cur: &OsStr| complete(Names::Images, cur))
}

/// Completer for an argument that takes an installed kernel's name.
pub fn kernels() -> ArgValueCompleter {
    ArgValueCompleter::new(|cur: &OsStr| complete(Names::Kernels, cur))
}

/// Completer for `kernel pull`: the names the catalog offers.
pub fn catalog_kernels() -> ArgValueCompleter {
    ArgValueCompleter::new(|cur: &OsStr| complete(Names::CatalogKernels, cur))
}

fn complete(what: Names, current: &OsStr) -> Vec<CompletionCandidate> {
    let socket = banger_paths::Layout::from_env().daemon_socket();
    candidates(fetch(what, &socket, TIMEOUT), current)
}

/// The `(name, help)` pairs the daemon at `socket` lists for `what`; empty
/// when it does not answer within `timeout` or answers something else.
pub fn fetch(what: Names, socket: &Path, timeout: Duration) -> Vec<(String, String)> {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let client = Client::new(socket);
    let answer = rt.block_on(async {
        tokio::time::timeout(timeout, client.get::<serde_json::Value>(what.path())).await
    });
    match answer {
        Ok(Ok(v)) => names_in(&v, what.help_field()),
        _ => Vec::new(),
    }
}

/// The `name` of every object in a JSON list, with its `help_field` (a
/// string) beside it. Read loosely so a daemon of another version, with
/// fields added or gone, still completes.
fn names_in(v: &serde_json::Value, help_field: &str) -> Vec<(String, String)> {
    let Some(items) = v.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|it| {
            let name = it.get("name")?.as_str()?.to_string();
            let help = it
                .get(help_field)
                .and_then(|h| h.as_str())
                .unwrap_or_default()
                .to_string();
            Some((name, help))
        })
        .collect()
}

/// The names that start with what is typed so far, sorted, with their help.
pub fn candidates(names: Vec<(String, String)>, current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let mut names: Vec<(String, String)> = names
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    names.sort();
    names.dedup_by(|a, b| a.0 == b.0);
    names
        .into_iter()
        .map(|(n, help)| {
            let help = (!help.is_empty()).then(|| help.into());
            CompletionCandidate::new(n).help(help)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
        }
    }
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to print the script for.
    shell: Shell,
}

/// `banger completion <shell>`: the registration script of the dynamic
/// engine, the same as `COMPLETE=<shell> banger` prints. It calls back into
/// this binary (by the name it was run as, made absolute when it was run by
/// a relative path), so names complete from the daemon on every TAB.
pub fn print_script(args: &CompletionArgs) -> anyhow::Result<u8> {
    let shells = Shells::builtins();
    let shell = shells
        .completer(args.shell.name())
        .context("clap_complete lost a built-in shell")?;
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("banger"));
    let completer = completer_path(&argv0, std::env::current_dir().ok().as_deref());
    let mut out = Vec::new();
    shell.write_registration(
        COMPLETE_VAR,
        "banger",
        "banger",
        &completer.to_string_lossy(),
        &mut out,
    )?;
    std::io::stdout().write_all(&out)?;
    Ok(0)
}

/// The program the script runs on TAB: a bare name stays a name (found on
/// PATH then, so it follows upgrades); a relative path becomes absolute so
/// the script works from any directory.
fn completer_path(argv0: &Path, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(cwd) if argv0.components().count() > 1 && argv0.is_relative() => cwd.join(argv0),
        _ => argv0.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(names: &[(&str, &str)]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect()
    }

    fn values(c: &[CompletionCandidate]) -> Vec<String> {
        c.iter()
            .map(|c| c.get_value().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn candidates_keep_the_typed_prefix_sorted_with_help() {
        let names = pairs(&[
            ("web", "running"),
            ("compbox", "stopped"),
            ("comp", "running"),
            ("db", ""),
        ]);
        let c = candidates(names.clone(), OsStr::new("com"));
        assert_eq!(values(&c), ["comp", "compbox"]);
        assert_eq!(
            c[1].get_help().map(|h| h.to_string()),
            Some("stopped".into())
        );
        assert_eq!(values(&candidates(names.clone(), OsStr::new(""))).len(), 4);
        assert!(candidates(names.clone(), OsStr::new("x")).is_empty());
        // No help rather than an empty one.
        let db = candidates(names, OsStr::new("d"));
        assert!(db[0].get_help().is_none());
    }

    #[test]
    fn names_are_read_loosely_from_any_list() {
        let v = serde_json::json!([
            {"name": "box", "state": "running", "extra": 1},
            {"name": "old"},
            {"no_name": true},
            "not an object"
        ]);
        assert_eq!(
            names_in(&v, "state"),
            pairs(&[("box", "running"), ("old", "")])
        );
        assert!(names_in(&serde_json::json!({"code": "x"}), "state").is_empty());
    }

    #[test]
    fn a_missing_daemon_gives_nothing_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        for what in [
            Names::Vms,
            Names::Images,
            Names::Kernels,
            Names::CatalogKernels,
        ] {
            let got = fetch(what, &dir.path().join("bangerd.sock"), TIMEOUT);
            assert!(got.is_empty());
        }
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_daemon_that_never_answers_is_given_up_on() {
        // A bound socket nobody serves: connect succeeds (the backlog takes
        // it), the request is never answered.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bangerd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::time::Instant::now();
        assert!(fetch(Names::Vms, &sock, Duration::from_millis(200)).is_empty());
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn the_completer_is_absolute_unless_found_on_path() {
        let cwd = Path::new("/home/me/src");
        assert_eq!(
            completer_path(Path::new("banger"), Some(cwd)),
            Path::new("banger")
        );
        assert_eq!(
            completer_path(Path::new("./build/bin/banger"), Some(cwd)),
            Path::new("/home/me/src/./build/bin/banger")
        );
        assert_eq!(
            completer_path(Path::new("/usr/local/bin/banger"), Some(cwd)),
            Path::new("/usr/local/bin/banger")
        );
    }
}
