//! What a binary says about itself: version, commit, build time.
//!
//! `scripts/build` sets `BANGER_VERSION` (a release tag such as `v0.2.0`),
//! `BANGER_COMMIT` and `BANGER_BUILT_AT` at compile time. Only the binary
//! crates depend on this one, so building a release with another version
//! recompiles this crate and the binaries, not the whole workspace.
//!
//! A build without `BANGER_VERSION` is a development build: its version ends
//! in `-dev`, and `banger doctor` does not compare it with the install.

/// The version: a release tag, or `v<crate version>-dev`.
pub const VERSION: &str = match option_env!("BANGER_VERSION") {
    Some(v) => v,
    None => concat!("v", env!("CARGO_PKG_VERSION"), "-dev"),
};

pub const COMMIT: &str = match option_env!("BANGER_COMMIT") {
    Some(v) => v,
    None => "unknown",
};

pub const BUILT_AT: &str = match option_env!("BANGER_BUILT_AT") {
    Some(v) => v,
    None => "unknown",
};

/// `<bin> <version> (commit <sha>, built <time>)`: the `--version` line.
pub fn version_line(bin: &str) -> String {
    format!("{bin} {}", version_detail())
}

/// `<version> (commit <sha>, built <time>)`, for clap's `long_version`
/// (clap puts the binary's name in front).
pub fn version_detail() -> String {
    format!("{VERSION} (commit {COMMIT}, built {BUILT_AT})")
}

/// The three-line form `banger version` prints and `banger update` parses
/// back from a freshly installed binary.
pub fn version_block() -> String {
    format!("version: {VERSION}\ncommit: {COMMIT}\nbuilt_at: {BUILT_AT}\n")
}

/// Development builds (and builds that cannot say what they are) are never
/// compared against an install's recorded version.
pub fn is_dev(version: &str) -> bool {
    version.is_empty() || version == "unknown" || version == "dev" || version.ends_with("-dev")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_the_binary_and_all_three_fields() {
        let l = version_line("bangerd");
        assert!(l.starts_with(&format!("bangerd {VERSION} (commit ")), "{l}");
        let b = version_block();
        assert_eq!(b.lines().count(), 3);
        assert!(b.starts_with("version: "));
    }

    #[test]
    fn dev_builds_are_recognised() {
        assert!(is_dev("v0.1.0-dev"));
        assert!(is_dev("dev"));
        assert!(is_dev(""));
        assert!(!is_dev("v0.1.0"));
        assert!(!is_dev("v0.1.0-rc.1"));
    }
}
