//! Links and addresses through rtnetlink.
//!
//! Every function opens its own netlink socket, in the network namespace of
//! the calling thread, and drives it on the current tokio runtime; nothing is
//! cached between calls, so a namespace switch between calls is honoured.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_utils::nla::Nla;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::NetError;

// errno values as netlink reports them (negated in the message).
const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

// IFLA_TUN_* attributes inside IFLA_INFO_DATA of a `tun` link
// (include/uapi/linux/if_link.h); the packet crate leaves them raw.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The `IFLA_INFO_KIND` (`"bridge"`, `"tun"`, `"veth"`...), if any.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The ifindex of the bridge (or bond) this link is enslaved to.
    pub controller: Option<u32>,
    /// Present for tun/tap devices.
    pub tun: Option<TunInfo>,
}

/// The tun driver's view of a tun/tap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunInfo {
    /// `IFF_TAP` (as opposed to a layer-3 `IFF_TUN`).
    pub tap: bool,
    /// `TUNSETOWNER`, if set.
    pub owner: Option<u32>,
    /// `TUNSETGROUP`, if set.
    pub group: Option<u32>,
    pub persist: bool,
}

/// A netlink connection whose driver task dies with it.
struct Nl {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Nl {
    fn open() -> Result<Nl, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        let task = tokio::spawn(conn);
        Ok(Nl { handle, task })
    }

    async fn link(&self, name: &str) -> Result<Option<Link>, NetError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        match res {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("get link {name}"), e)),
        }
    }

    async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("list addresses of ifindex {index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
                // peer on point-to-point links and equal to it otherwise.
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                local.or(addr).map(|ip| (ip, m.header.prefix_len))
            })
            .collect())
    }

    /// The link `name`, which must exist.
    async fn existing(&self, name: &str) -> Result<Link, NetError> {
        self.link(name)
            .await?
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// The bridge `name`, which must exist and be a bridge.
    async fn bridge(&self, name: &str) -> Result<Link, NetError> {
        must_be_bridge(self.existing(name).await?)
    }

    /// Enslaves `link` to the bridge with index `bridge_index` unless it is.
    async fn set_controller(&self, link: &Link, bridge_index: u32) -> Result<(), NetError> {
        if link.controller == Some(bridge_index) {
            return Ok(());
        }
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .controller(bridge_index)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| nl_err(format!("attach {} to bridge", link.name), e))
    }

    /// Sets the link administratively up or down.
    async fn set_admin(&self, index: u32, name: &str, up: bool) -> Result<(), NetError> {
        let msg = LinkUnspec::new_with_index(index);
        let msg = if up { msg.up() } else { msg.down() };
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("set {name} {}", if up { "up" } else { "down" }), e))
    }

    async fn set_down(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.set_admin(index, name, false).await
    }

    async fn set_up(&self, index: u32, name: &str) -> Result<(), NetError> {
        self.set_admin(index, name, true).await
    }
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl_err(op: String, source: rtnetlink::Error) -> NetError {
    NetError::Netlink { op, source }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        tun: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Tun(nlas)) => {
                            let mut t = TunInfo {
                                tap: false,
                                owner: None,
                                group: None,
                                persist: false,
                            };
                            for nla in nlas {
                                let mut buf = vec![0u8; nla.value_len()];
                                nla.emit_value(&mut buf);
                                let u32v = || {
                                    buf.get(..4)
                                        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                                };
                                match nla.kind() {
                                    IFLA_TUN_OWNER => t.owner = u32v(),
                                    IFLA_TUN_GROUP => t.group = u32v(),
                                    IFLA_TUN_TYPE => {
                                        t.tap = buf.first() == Some(&(libc::IFF_TAP as u8))
                                    }
                                    IFLA_TUN_PERSIST => t.persist = buf.first() == Some(&1),
                                    _ => {}
                                }
                            }
                            link.tun = Some(t);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if link.kind.as_deref() == Some("tun") && link.tun.is_none() {
        // Kernels before 4.15 do not report IFLA_INFO_DATA for tun.
        link.tun = Some(TunInfo {
            tap: true,
            owner: None,
            group: None,
            persist: true,
        });
    }
    link
}

/// The kernel's idea of an interface name: 1..=15 bytes, no `/`, no
/// whitespace, no `:`, not `.` or `..` (see `dev_valid_name`).
pub(crate) fn check_ifname(name: &str) -> Result<(), NetError> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(NetError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// Why `name` is not a valid interface name, if it is not (the rules of
/// [`check_ifname`]).
pub(crate) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Some("must be 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return Some("reserved name");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return Some("only printable ASCII without '/' or ':'");
    }
    None
}

/// Looks a link up by name; `None` when it does not exist.
pub async fn link(name: &str) -> Result<Option<Link>, NetError> {
    check_ifname(name)?;
    Nl::open()?.link(name).await
}

/// True when an interface called `name` exists in this network namespace.
pub async fn link_exists(name: &str) -> Result<bool, NetError> {
    Ok(link(name).await?.is_some())
}

/// The IPv4 addresses (with prefix lengths) configured on `name`.
pub async fn ipv4_addresses(name: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    check_ifname(name)?;
    let nl = Nl::open()?;
    let link = nl.existing(name).await?;
    nl.ipv4_addresses(link.index).await
}

/// Makes sure the bridge `name` exists, carries `ip/prefix` and is up.
/// Idempotent: an existing bridge is reused, an existing address is kept.
/// Fails when `name` exists but is not a bridge, or when `ip` is already on
/// it with another prefix length.
pub async fn ensure_bridge(name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    check_ifname(name)?;
    if prefix > 32 {
        return Err(NetError::InvalidPrefix(prefix));
    }
    let nl = Nl::open()?;
    let link = match nl.link(name).await? {
        Some(l) => l,
        None => {
            match nl
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                // Lost a race with another creator: fine, check it below.
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(nl_err(format!("create bridge {name}"), e)),
            }
            nl.existing(name).await?
        }
    };
    let link = must_be_bridge(link)?;
    let addrs = nl.ipv4_addresses(link.index).await?;
    match addrs.iter().find(|(a, _)| *a == ip) {
        Some((_, p)) if *p == prefix => {}
        Some((_, p)) => {
            return Err(NetError::AddressConflict {
                name: name.to_string(),
                want: format!("{ip}/{prefix}"),
                found: format!("{ip}/{p}"),
            })
        }
        None => match nl
            .handle
            .address()
            .add(link.index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(nl_err(format!("add {ip}/{prefix} to {name}"), e)),
        },
    }
    if !link.up {
        nl.set_up(link.index, name).await?;
    }
    Ok(())
}

/// Creates the persistent tap `name` owned by `owner_uid`/`owner_gid` (so
/// an unprivileged QEMU can attach to it), enslaves it to `bridge` and sets
/// it up. Idempotent: an existing tap is re-owned if needed and re-attached.
/// Fails when the bridge is missing or `name` exists but is not a tap.
pub async fn create_tap(
    name: &str,
    bridge: &str,
    owner_uid: u32,
    owner_gid: u32,
) -> Result<(), NetError> {
    check_ifname(name)?;
    check_ifname(bridge)?;
    let nl = Nl::open()?;
    let br = nl.bridge(bridge).await?;
    let existing = nl.link(name).await?;
    let created = match &existing {
        Some(l) => {
            let tun = tap_info(l)?;
            if tun.owner != Some(owner_uid) || tun.group != Some(owner_gid) || !tun.persist {
                // Re-attaching by name re-owns the existing device. It fails
                // with EBUSY while a VMM holds it, which is the right answer.
                tun_ioctls(name, owner_uid, owner_gid).await?;
            }
            false
        }
        None => {
            tun_ioctls(name, owner_uid, owner_gid).await?;
            true
        }
    };
    let result = attach(&nl, name, br.index).await;
    if result.is_err() && created {
        // Do not leave a half-configured device behind.
        if let Ok(Some(l)) = nl.link(name).await {
            let _ = nl.handle.link().del(l.index).execute().await;
        }
    }
    result
}

async fn tun_ioctls(name: &str, uid: u32, gid: u32) -> Result<(), NetError> {
    // Deliberately inline, not spawn_blocking: the device is created in the
    // network namespace of the thread that opens /dev/net/tun, which must be
    // the caller's (tests run in a per-thread namespace). The ioctls never
    // sleep for long.
    crate::tun::create_persistent_tap(name, uid, gid)
}

/// `l`, refused unless it is a bridge.
fn must_be_bridge(l: Link) -> Result<Link, NetError> {
    if l.kind.as_deref() == Some("bridge") {
        return Ok(l);
    }
    Err(NetError::WrongKind {
        name: l.name,
        expected: "bridge",
        found: l.kind.unwrap_or_else(|| "unknown".into()),
    })
}

/// The tun driver's info of `l`, which must be a tap.
fn tap_info(l: &Link) -> Result<TunInfo, NetError> {
    match (&l.kind, l.tun) {
        (Some(k), Some(t)) if k == "tun" && t.tap => Ok(t),
        _ => Err(NetError::WrongKind {
            name: l.name.clone(),
            expected: "tap",
            found: l.kind.clone().unwrap_or_else(|| "unknown".into()),
        }),
    }
}

async fn attach(nl: &Nl, name: &str, bridge_index: u32) -> Result<(), NetError> {
    let tap = nl.existing(name).await?;
    nl.set_controller(&tap, bridge_index).await?;
    if !tap.up {
        nl.set_up(tap.index, name).await?;
    }
    Ok(())
}

/// Deletes the tap `name`. A tap that does not exist is not an error.
/// Refuses to delete anything that is not a tun/tap device.
pub async fn delete_tap(name: &str) -> Result<(), NetError> {
    check_ifname(name)?;
    let nl = Nl::open()?;
    let Some(link) = nl.link(name).await? else {
        return Ok(());
    };
    if link.kind.as_deref() != Some("tun") {
        return Err(NetError::WrongKind {
            name: name.to_string(),
            expected: "tap",
            found: link.kind.unwrap_or_else(|| "unknown".into()),
        });
    }
    let mut links = nl.handle.link();
    match links.del(link.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(nl_err(format!("delete {name}"), e)),
    }
}

/// Every link whose name starts with `prefix`, sorted by name.
pub async fn list_links(prefix: &str) -> Result<Vec<Link>, NetError> {
    let nl = Nl::open()?;
    let msgs: Vec<LinkMessage> = nl
        .handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list links".to_string(), e))?;
    let mut links: Vec<Link> = msgs
        .iter()
        .map(parse_link)
        .filter(|l| l.name.starts_with(prefix))
        .collect();
    links.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(links)
}

/// Renames the tap `from` to `to` on `bridge`, then leaves it up (`up`) or
/// down: how a warm tap becomes a VM's tap (up), and goes back to the pool
/// (down). The owner set at creation is kept. Refuses a `from` that is not
/// a tap, and a `to` that exists (the kernel never renames over a link).
///
/// The kernel renames only a link that is down, and applies a new name
/// before new flags, so a parked (down) tap is renamed and brought up in a
/// single netlink request: that is why pool taps are kept down.
pub async fn rename_tap(from: &str, to: &str, bridge: &str, up: bool) -> Result<(), NetError> {
    check_ifname(from)?;
    check_ifname(to)?;
    check_ifname(bridge)?;
    let nl = Nl::open()?;
    let br = nl.bridge(bridge).await?;
    let tap = nl.existing(from).await?;
    tap_info(&tap)?;
    nl.set_controller(&tap, br.index).await?;
    if tap.up {
        nl.set_down(tap.index, from).await?;
    }
    let msg = LinkUnspec::new_with_index(tap.index).name(to.to_string());
    let msg = if up { msg.up() } else { msg };
    match nl.handle.link().set(msg.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Err(NetError::Exists(to.to_string())),
        Err(e) => Err(nl_err(format!("rename {from} to {to}"), e)),
    }
}

/// Sets the link `name` down (a parked pool tap).
pub async fn set_down(name: &str) -> Result<(), NetError> {
    check_ifname(name)?;
    let nl = Nl::open()?;
    let l = nl.existing(name).await?;
    nl.set_down(l.index, name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::InfoKind;

    #[test]
    fn ifname_rules() {
        for ok in ["br-fc", "tap-bg-01234567", "a", "eth0.100"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "tap-bg-012345678",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\nb",
            "é",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn info_kind_strings_match_what_we_compare_against() {
        assert_eq!(InfoKind::Bridge.to_string(), "bridge");
        assert_eq!(InfoKind::Tun.to_string(), "tun");
    }
}
