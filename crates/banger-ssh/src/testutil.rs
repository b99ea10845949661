//! Helpers for tests that use the real OpenSSH tools when they are installed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The path of `name` on `$PATH`, or `None` after printing why the calling
/// test skips its check (CI installs the tools with `scripts/install-deps`).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = find_on_path(name);
    if found.is_none() {
        eprintln!("note: `{name}` is not installed; skipping the check that runs it");
    }
    found
}

/// The path of `name` on `$PATH`, if it is there.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// `ssh -G` output for `host` under config file `config`, as
/// (keyword, value) pairs; `None` when ssh is not installed.
pub fn ssh_g(config: &Path, host: &str) -> Option<Vec<(String, String)>> {
    let ssh = tool("ssh")?;
    let out = Command::new(ssh)
        .arg("-G")
        .arg("-F")
        .arg(config)
        .arg(host)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Makes an Ed25519 key at `private` with ssh-keygen; `false` (after a
/// note) when ssh-keygen is not installed.
pub fn keygen(private: &Path, passphrase: &str, comment: &str) -> bool {
    let Some(keygen) = tool("ssh-keygen") else {
        return false;
    };
    let out = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(private)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
