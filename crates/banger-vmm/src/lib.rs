//! VMM backends.
//!
//! A backend turns a typed launch description into a running VMM process
//! whose lifetime is independent of whoever launched it: QEMU is started
//! with `-daemonize`, so it is reparented away from the root helper and a
//! helper or daemon restart never takes a guest down with it.
//!
//! - [`qemu`]: the QEMU backend (KVM when it really works, TCG otherwise).
//! - [`accel`]: the KVM probe that decides between the two.
//! - [`cow`]: copy-on-write root disks for Firecracker (dm-snapshot, or a
//!   reflink/sparse clone where device-mapper is missing).
//! - [`proc`]: reading `/proc` to tell whether a pid is still our VMM.
//! - [`host`]: the host's limits for a VM (CPUs, memory, free disk) and a
//!   VMM process's CPU time and resident memory.
//! - [`firecracker`]: the Firecracker API: typed bodies, a client for its
//!   socket, the launch plan, version and kernel-format handling, and the
//!   hybrid vsock handshake.
//! - [`jailer`]: Firecracker's chroot layout and argv, jailed or direct.
//! - [`spawn`]: dropping to the owner and starting a VMM detached.

pub mod accel;
pub mod cow;
pub mod firecracker;
pub mod host;
pub mod jailer;
pub mod proc;
pub mod qemu;
pub mod spawn;

pub use accel::{Accel, AccelProbe};
