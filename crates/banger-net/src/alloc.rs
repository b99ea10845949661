//! Pure address and name allocation: no I/O, no privilege.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// The bridge every VM tap is attached to.
pub const DEFAULT_BRIDGE: &str = "br-fc";
/// The host's address on the bridge, which is the guests' gateway.
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// Prefix length of the default VM subnet.
pub const DEFAULT_PREFIX: u8 = 24;
/// Every tap banger creates starts with this; nothing else is ever touched.
pub const TAP_PREFIX: &str = "tap-bg-";

/// The VM subnet, described by the gateway (the bridge's address) and the
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Default for Subnet {
    fn default() -> Self {
        Subnet {
            gateway: DEFAULT_GATEWAY,
            prefix: DEFAULT_PREFIX,
        }
    }
}

impl Subnet {
    pub fn new(gateway: Ipv4Addr, prefix: u8) -> Self {
        Subnet { gateway, prefix }
    }

    /// The netmask as a host-order integer (`None` for a prefix over 32).
    fn mask(self) -> Option<u32> {
        match self.prefix {
            0 => Some(0),
            1..=32 => Some(u32::MAX << (32 - u32::from(self.prefix))),
            _ => None,
        }
    }

    /// The network address (all host bits clear).
    pub fn network(self) -> Ipv4Addr {
        let mask = self.mask().unwrap_or(u32::MAX);
        Ipv4Addr::from(u32::from(self.gateway) & mask)
    }

    /// The broadcast address (all host bits set).
    pub fn broadcast(self) -> Ipv4Addr {
        let mask = self.mask().unwrap_or(u32::MAX);
        Ipv4Addr::from(u32::from(self.gateway) | !mask)
    }

    /// True when `ip` lies inside the subnet (network and broadcast included).
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        match self.mask() {
            Some(mask) => u32::from(ip) & mask == u32::from(self.gateway) & mask,
            None => false,
        }
    }
}

/// The lowest free host address of `subnet`: never the network address, the
/// gateway, the broadcast address or anything in `used`. `None` when the
/// subnet is full (or has no host addresses at all, as with /31 and /32).
pub fn allocate_ip(subnet: Subnet, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    subnet.mask()?;
    let network = u32::from(subnet.network());
    let broadcast = u32::from(subnet.broadcast());
    if broadcast.saturating_sub(network) < 2 {
        return None;
    }
    let gateway = u32::from(subnet.gateway);
    let used: HashSet<u32> = used.iter().map(|ip| u32::from(*ip)).collect();
    (network + 1..broadcast)
        .find(|a| *a != gateway && !used.contains(a))
        .map(Ipv4Addr::from)
}

/// A stable MAC for a guest address: QEMU's locally administered `52:54:00`
/// prefix followed by the last three octets of the IP, so the same address
/// always gets the same MAC and two guests on one /24 never collide.
pub fn mac_for_ip(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// The tap of a VM: [`TAP_PREFIX`] plus the first 8 characters of its id,
/// 15 bytes in all, which is exactly the kernel's interface name limit.
pub fn tap_name_for(vm_id: &str) -> String {
    let mut name = String::from(TAP_PREFIX);
    name.extend(vm_id.chars().take(8));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn default_subnet_shape() {
        let s = Subnet::default();
        assert_eq!(s.gateway, ip("172.30.0.1"));
        assert_eq!(s.prefix, 24);
        assert_eq!(s.network(), ip("172.30.0.0"));
        assert_eq!(s.broadcast(), ip("172.30.0.255"));
        assert!(s.contains(ip("172.30.0.77")));
        assert!(!s.contains(ip("172.30.1.1")));
    }

    #[test]
    fn allocation_table() {
        let def = Subnet::default();
        let cases: Vec<(Subnet, Vec<Ipv4Addr>, Option<Ipv4Addr>)> = vec![
            // Empty: first host after the gateway.
            (def, vec![], Some(ip("172.30.0.2"))),
            // Skips used addresses, takes the lowest hole.
            (
                def,
                vec![ip("172.30.0.2"), ip("172.30.0.3"), ip("172.30.0.5")],
                Some(ip("172.30.0.4")),
            ),
            // Used addresses outside the subnet are irrelevant.
            (def, vec![ip("10.0.0.2")], Some(ip("172.30.0.2"))),
            // Gateway in the middle of the range is skipped.
            (
                Subnet::new(ip("10.1.0.2"), 29),
                vec![ip("10.1.0.1")],
                Some(ip("10.1.0.3")),
            ),
            // Gateway at the top: .1 is free.
            (
                Subnet::new(ip("10.1.0.6"), 29),
                vec![],
                Some(ip("10.1.0.1")),
            ),
            // /30 has two hosts; one is the gateway.
            (
                Subnet::new(ip("10.2.0.1"), 30),
                vec![],
                Some(ip("10.2.0.2")),
            ),
            (Subnet::new(ip("10.2.0.1"), 30), vec![ip("10.2.0.2")], None),
            // No host addresses at all.
            (Subnet::new(ip("10.3.0.1"), 31), vec![], None),
            (Subnet::new(ip("10.3.0.1"), 32), vec![], None),
            // Nonsense prefix.
            (Subnet::new(ip("10.3.0.1"), 33), vec![], None),
        ];
        for (subnet, used, want) in cases {
            assert_eq!(allocate_ip(subnet, &used), want, "{subnet:?} used={used:?}");
        }
    }

    #[test]
    fn full_subnet_yields_none() {
        let s = Subnet::default();
        let used: Vec<Ipv4Addr> = (2..=254).map(|h| Ipv4Addr::new(172, 30, 0, h)).collect();
        assert_eq!(allocate_ip(s, &used), None);
        // Freeing one address makes exactly that one available.
        let mut fewer = used.clone();
        fewer.retain(|a| *a != ip("172.30.0.200"));
        assert_eq!(allocate_ip(s, &fewer), Some(ip("172.30.0.200")));
    }

    #[test]
    fn never_network_gateway_or_broadcast() {
        let s = Subnet::default();
        let mut used = Vec::new();
        while let Some(a) = allocate_ip(s, &used) {
            assert_ne!(a, s.network());
            assert_ne!(a, s.gateway);
            assert_ne!(a, s.broadcast());
            assert!(s.contains(a));
            used.push(a);
        }
        assert_eq!(used.len(), 253);
    }

    #[test]
    fn macs_are_stable_and_locally_administered() {
        assert_eq!(mac_for_ip(ip("172.30.0.2")), "52:54:00:1e:00:02");
        assert_eq!(mac_for_ip(ip("10.255.171.205")), "52:54:00:ff:ab:cd");
        assert_eq!(mac_for_ip(ip("172.30.0.2")), mac_for_ip(ip("172.30.0.2")));
        assert_ne!(mac_for_ip(ip("172.30.0.2")), mac_for_ip(ip("172.30.0.3")));
        // 0x52 has the locally-administered bit set and the multicast bit clear.
        assert_eq!(0x52 & 0b11, 0b10);
    }

    #[test]
    fn tap_names_fit_ifnamsiz() {
        assert_eq!(tap_name_for("0123456789ab"), "tap-bg-01234567");
        assert_eq!(tap_name_for("0123456789ab").len(), 15);
        assert!(tap_name_for("abc").starts_with(TAP_PREFIX));
    }
}
