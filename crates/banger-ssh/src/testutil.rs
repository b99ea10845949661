//! Helpers for tests that use the real OpenSSH tools when they are installed.

use std::path::PathBuf;

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
