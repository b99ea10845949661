//! `~vm` routing in systemd-resolved, so `ssh box.vm` resolves on hosts
//! that run it: the bridge link gets banger's DNS server and the routing
//! domain `~vm` (queries for `*.vm` go there, nothing else does).
//!
//! Best effort: without `resolvectl`, or with systemd-resolved not
//! running, the op is skipped and says so. Commands run from argv, never
//! a shell, with inputs that passed [`crate::validate`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::ApiError;

use crate::proto::HelperResponse;

/// Where `resolvectl` may be; never looked up on PATH.
const RESOLVECTL: [&str; 2] = ["/usr/bin/resolvectl", "/bin/resolvectl"];

/// Exists while systemd-resolved runs (it is on /run, a tmpfs).
const RESOLVED_RUN_DIR: &str = "/run/systemd/resolve";

/// How long one `resolvectl` call may take (it talks D-Bus).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The two commands, as argv after the binary.
pub fn argvs(bridge: &str, server: &str) -> [Vec<String>; 2] {
    [
        vec!["dns".into(), bridge.into(), server.into()],
        vec!["domain".into(), bridge.into(), "~vm".into()],
    ]
}

/// Why the op is skipped on this host, if it is.
pub fn skip_reason(resolvectl: Option<&Path>, run_dir: &Path) -> Option<String> {
    if resolvectl.is_none() {
        return Some("skipped: resolvectl not installed".into());
    }
    if !run_dir.is_dir() {
        return Some("skipped: systemd-resolved not running".into());
    }
    None
}

fn find_resolvectl() -> Option<PathBuf> {
    RESOLVECTL.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Carries out the op (inputs already validated). Runs on a blocking thread.
pub fn sync(bridge: &str, server: &str) -> Result<HelperResponse, ApiError> {
    let bin = find_resolvectl();
    if let Some(reason) = skip_reason(bin.as_deref(), Path::new(RESOLVED_RUN_DIR)) {
        return Ok(HelperResponse::Skipped { reason });
    }
    let bin = bin.expect("skip_reason checked it");
    for argv in argvs(bridge, server) {
        run(&bin, &argv)?;
    }
    Ok(HelperResponse::Done)
}

fn run(bin: &Path, argv: &[String]) -> Result<(), ApiError> {
    let shown = format!("{} {}", bin.display(), argv.join(" "));
    let failed = |what: String| ApiError::failed(format!("{shown}: {what}"));
    let mut child = Command::new(bin)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {}s", TIMEOUT.as_secs())));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(s) = child.stderr.take() {
        let _ = s.take(2048).read_to_string(&mut err);
    }
    Err(failed(format!("{status}: {}", err.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_two_resolvectl_calls() {
        assert_eq!(
            argvs("br-fc", "172.30.0.1:42069"),
            [
                vec!["dns", "br-fc", "172.30.0.1:42069"],
                vec!["domain", "br-fc", "~vm"],
            ]
        );
    }

    #[test]
    fn skipped_without_resolvectl_or_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let bin = Path::new("/usr/bin/resolvectl");
        assert!(skip_reason(None, dir.path())
            .unwrap()
            .contains("resolvectl not installed"));
        assert_eq!(
            skip_reason(Some(bin), &dir.path().join("nope")).unwrap(),
            "skipped: systemd-resolved not running"
        );
        assert_eq!(skip_reason(Some(bin), dir.path()), None);
    }
}
