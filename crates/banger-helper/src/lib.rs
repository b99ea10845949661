//! The banger root helper.
//!
//! bangerd runs unprivileged; the few things that need root (the bridge,
//! taps, starting QEMU as the owner, signalling VMMs, handing files over)
//! go through this helper: a separate process on its own Unix socket that
//! performs a closed, typed set of operations and validates every input as
//! if the daemon were compromised.
//!
//! - [`proto`]: the request/response types (`POST /v1/op`).
//! - [`validate`]: the input checks.
//! - [`ops`]: carrying out validated requests.
//! - [`dmsnap`]: the dm-snapshot ops (copy-on-write root disks).
//! - [`firecracker`]: the Firecracker ops (jailer chroot, launch, cleanup).
//! - [`resolver`]: `~vm` routing in systemd-resolved (best effort).
//! - [`server`]: the socket, peer checks, routing and logging.
//! - [`client`]: [`HelperClient`], used by the daemon.

pub mod client;
pub mod dmsnap;
pub mod firecracker;
pub mod ops;
pub mod pidfd;
pub mod proto;
pub mod resolver;
pub mod server;
pub mod validate;

pub use client::{HelperClient, HelperError};
pub use ops::{Helper, HelperConfig};
pub use proto::{HelperRequest, HelperResponse};
pub use validate::Roots;

#[cfg(test)]
pub(crate) mod testutil {
    /// Whether the tests run as root (the privileged paths need it; CI is).
    pub fn is_root() -> bool {
        crate::firecracker::fsx::euid() == 0
    }
}
