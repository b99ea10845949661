//! Everything `banger system install|status|restart|uninstall` and
//! `banger update` do to a host's files, without the CLI around it.
//!
//! A system install is two systemd services: `bangerd.service` (the owner
//! user, never root) and `banger-helper.service` (root, a narrow capability
//! set), plus the binaries, a tmpfiles.d entry for the runtime dir and
//! [`system::INSTALL_FILE`]. Every path comes from [`banger_paths::system`].
//!
//! | module | job |
//! |---|---|
//! | [`install_meta`] | `/etc/banger/install.toml`: owner, build, install time |
//! | [`units`] | the two unit files and the tmpfiles.d line, from validated values |
//! | [`hardening`] | which required directives a unit file on disk lacks (doctor) |
//! | [`swap`] | replacing files by rename, keeping `.previous` for rollback |
//! | [`plan`] | every path an install creates; install steps and uninstall |
//!
//! Every function that touches the host takes a `root` prefix (normally `/`)
//! or a path built from one ([`rooted`]), so tests install into a tempdir and
//! compare the exact file set.
//!
//! Order matters to other processes: [`banger_paths::Layout`] switches every
//! banger process to the system paths as soon as `install.toml` exists, so an
//! install writes it last ([`plan::InstallPlan::write_meta`]) and an uninstall
//! removes it first.

pub mod hardening;
pub mod install_meta;
pub mod plan;
pub mod swap;
pub mod units;

mod fsutil;

use std::path::{Path, PathBuf};

pub use banger_paths::system;
pub use install_meta::{BuildInfo, InstallMeta, MetaError};
pub use plan::{Binary, InstallPlan, PlanError, UninstallOptions, UninstallReport};
pub use swap::{atomic_replace, rollback_replace, Swap, SwapError, BACKUP_SUFFIX};
pub use units::{Owner, UnitError, UnitParams, VmmBins};

/// `abs` (an absolute system path such as [`system::STATE_DIR`]) under
/// `root`: `rooted("/", "/var/lib/banger")` is `/var/lib/banger`,
/// `rooted("/tmp/t", "/var/lib/banger")` is `/tmp/t/var/lib/banger`.
pub fn rooted(root: &Path, abs: impl AsRef<Path>) -> PathBuf {
    let abs = abs.as_ref();
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooted_prefixes_absolute_paths() {
        assert_eq!(
            rooted(Path::new("/"), system::STATE_DIR),
            Path::new("/var/lib/banger")
        );
        assert_eq!(
            rooted(Path::new("/tmp/t"), system::HELPER_BIN),
            Path::new("/tmp/t/usr/local/lib/banger/banger-helper")
        );
    }
}
