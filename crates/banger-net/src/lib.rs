//! Host networking for banger: one Linux bridge, one persistent tap per VM,
//! optional outbound NAT per VM, and the pure helpers that pick a VM's
//! address, MAC and tap name.
//!
//! - [`alloc`]: address/MAC/tap-name allocation (pure, no privilege).
//! - [`ensure_bridge`], [`create_tap`], [`delete_tap`], [`link_exists`]:
//!   netlink (via `rtnetlink`) plus the tun ioctls, all of which need
//!   `CAP_NET_ADMIN`; the root helper is the only caller.
//! - [`nat`]: per-VM outbound NAT in banger's own nftables table
//!   ([`ensure_vm_nat`], [`remove_vm_nat`], [`list_vm_nat`]), through the
//!   `nft` binary; blocking, also `CAP_NET_ADMIN`, also only the helper.
//!
//! The async functions open a netlink socket in the calling thread's network
//! namespace and must run inside a tokio runtime.

pub mod alloc;
mod link;
pub mod nat;
mod tun;

pub use alloc::{
    allocate_ip, mac_for_ip, tap_name_for, Subnet, DEFAULT_BRIDGE, DEFAULT_GATEWAY, DEFAULT_PREFIX,
    TAP_PREFIX,
};
pub use link::{
    create_tap, delete_tap, ensure_bridge, ipv4_addresses, link, link_exists, list_links,
    rename_tap, set_down, Link, TunInfo,
};
pub use nat::{ensure_vm_nat, list_vm_nat, remove_vm_nat, NatChange, NatError};

/// Everything that can go wrong configuring host networking.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid prefix length /{0}")]
    InvalidPrefix(u8),
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op} for {name} failed: {source}")]
    Tun {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("interface {0} already exists")]
    Exists(String),
    #[error("interface {name} exists but is a {found}, not a {expected}")]
    WrongKind {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("bridge {name} already has {found}; wanted {want}")]
    AddressConflict {
        name: String,
        want: String,
        found: String,
    },
}
