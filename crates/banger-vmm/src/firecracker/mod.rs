//! The Firecracker backend's typed API layer.
//!
//! Firecracker is configured entirely over an HTTP API on a Unix socket:
//! start the process, wait for the socket, `PUT` each device, then
//! `InstanceStart`. The pieces:
//!
//! - [`models`]: the request and response bodies, named after the
//!   definitions in Firecracker's Swagger spec.
//! - [`client`]: [`FcClient`], an HTTP/1.1 client for one API socket, with
//!   a timeout on every call, and [`wait_for_socket`].
//! - [`launch`]: [`FcVmConfig`], banger's description of a microVM, and the
//!   ordered list of API calls ([`launch_plan`]) that configures and boots
//!   it; [`apply`] sends them.
//! - [`snapshot`]: warm starts: the calls that save a paused template as a
//!   snapshot ([`save_plan`]) and restore a new microVM from it with its own
//!   tap, vsock socket and drives ([`restore_plan`]).
//! - [`version`]: parsing `firecracker --version`, the supported range, and
//!   the version-dependent features banger adapts to.
//! - [`kernel`]: telling an ELF vmlinux from a bzImage, and extracting the
//!   ELF for releases that cannot boot a bzImage.
//! - [`vsock`]: the host side of the hybrid vsock handshake.
//! - [`cmdline`]: the guest kernel command line, by Firecracker version.
//!
//! Firecracker cannot run on banger's development machines, so the contract
//! is pinned differently: the tests validate every body banger can send
//! against the official API specs of 1.14.1 (tested) and 1.16.1 (newest),
//! with unknown fields forbidden, and replay whole launch, save and restore
//! plans against a fake API server that checks each request against those
//! specs, the order included (pre-boot/post-boot, snapshot load only on a
//! fresh process).

pub mod client;
pub mod cmdline;
pub mod kernel;
pub mod launch;
pub mod models;
pub mod snapshot;
pub mod version;
pub mod vsock;

pub use client::{wait_for_socket, FcClient, FcError};
pub use kernel::{kernel_for, KernelFormat};
pub use launch::{apply, launch_plan, ApiCall, FcVmConfig, PlanError};
pub use snapshot::{restore, restore_plan, save, save_plan, RestoreSpec, SnapshotError};
pub use version::{classify, features, Features, SemVer, Support};

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod spec;
#[cfg(test)]
mod spec_tests;
