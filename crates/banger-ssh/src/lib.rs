//! Host-side SSH pieces for reaching VMs.
//!
//! `banger vm ssh <vm>` and plain `ssh <name>.vm` reach a VM's sshd as root
//! with a banger-managed client key and banger-managed known_hosts: no
//! prompts, no trust on first use. The daemon generates each VM's host key
//! before the VM boots, so it can pin it in known_hosts from the start.
//!
//! - [`keys`]: the client key, per-VM host keys and known_hosts lines.
//! - [`argv`]: the `ssh` argv for `banger vm ssh`, and POSIX shell quoting.
//! - [`config`]: the banger-managed ssh_config include file.
//! - [`include`]: adding (and removing) that include to `~/.ssh/config`.
//! - [`fsutil`]: atomic file replacement.
//!
//! Nothing here reads `$HOME` or other environment: callers pass paths.

pub mod argv;
pub mod config;
pub mod fsutil;
pub mod include;
pub mod keys;

#[cfg(test)]
mod sshd_tests;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use argv::{shell_quote, ssh_argv, SshTarget};
pub use config::render_config;
pub use fsutil::write_atomic;
pub use include::{install_include, uninstall_include};
pub use keys::{ensure_client_key, generate_host_key, known_hosts_line, ClientKey, HostKey};

/// Everything that can go wrong here; each message names the file or value
/// concerned.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{context} {}: {source}", .path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot parse ssh private key {}: {source} (banger will not overwrite it; move it away to get a new key)",
        .path.display()
    )]
    BadKey {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("ssh private key {} is passphrase-protected; banger needs an unencrypted key there", .path.display())]
    EncryptedKey { path: PathBuf },
    #[error(
        "ssh private key {} has mode {mode:04o}; ssh refuses keys that others can read (chmod 600 it)",
        .path.display()
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("encoding ssh key: {0}")]
    Encode(#[source] ssh_key::Error),
    #[error("reading random bytes for a new ssh key: {0}")]
    Random(#[source] rand::rand_core::OsError),
    #[error("invalid ssh host alias {alias:?}: {reason}")]
    InvalidAlias { alias: String, reason: &'static str },
    #[error("invalid ssh public key: {reason}")]
    InvalidPublicKey { reason: String },
    #[error("path {} cannot be used in an ssh config: {reason}", .path.display())]
    UnusablePath { path: PathBuf, reason: &'static str },
    #[error(
        "{} is a symlink to {}, which banger will not replace with a file; {advice}",
        .path.display(),
        .target.display()
    )]
    ConfigSymlink {
        path: PathBuf,
        target: PathBuf,
        advice: String,
    },
    #[error("{} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
}

impl SshError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SshError {
        let path = path.into();
        move |source| SshError::Io {
            context,
            path,
            source,
        }
    }
}
