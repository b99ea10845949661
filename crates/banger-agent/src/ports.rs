//! The Ports request: the guest's listening sockets, read from the kernel's
//! socket tables in /proc (no `ss` or `netstat` needed in the image).
//!
//! `/proc/net/{tcp,tcp6,udp,udp6}` list one socket per line:
//!
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
//!    0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 ...
//! ```
//!
//! Addresses are hex dumps of the kernel's in-memory (network order) bytes,
//! printed as native-endian 32-bit words: IPv4 `0100007F` is 127.0.0.1 on a
//! little-endian guest; IPv6 is four such words. Ports are plain hex.
//! A TCP socket listens in state `0A` (LISTEN); a UDP socket "listens" when
//! it is unconnected: state `07` (CLOSE) with an all-zero remote address.
//!
//! Owners: each socket has an inode; a process holding it has a link
//! `/proc/PID/fd/N -> socket:[INODE]`. Best effort: unreadable processes
//! (gone, or another user's when the agent is not root) are skipped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use banger_agent_proto::{ListenPort, PortProto};

/// TCP_LISTEN, as /proc/net/tcp prints it.
const TCP_LISTEN: &str = "0A";
/// TCP_CLOSE: the state of a UDP socket that is not connected.
const UDP_UNCONNECTED: &str = "07";

/// One listening socket as a table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub proto: PortProto,
    pub addr: IpAddr,
    pub port: u16,
    /// 0 when the kernel shows none.
    pub inode: u64,
}

/// Every listening socket in the guest, with its owner where found.
/// Fails only when no table at all could be read (a guest without IPv6
/// has no tcp6/udp6 tables; that is fine).
pub fn list() -> Result<Vec<ListenPort>, String> {
    let tables = [
        ("/proc/net/tcp", PortProto::Tcp),
        ("/proc/net/tcp6", PortProto::Tcp6),
        ("/proc/net/udp", PortProto::Udp),
        ("/proc/net/udp6", PortProto::Udp6),
    ];
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    for (path, proto) in tables {
        match std::fs::read_to_string(path) {
            Ok(text) => sockets.extend(parse_table(&text, proto)),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    if errors.len() == tables.len() {
        return Err(format!(
            "cannot read the socket tables: {}",
            errors.join("; ")
        ));
    }
    let owners = find_owners(&sockets);
    Ok(assemble(sockets, &owners))
}

/// The listening sockets of one table's text (`proto` says which table).
/// The header line and lines that do not parse are skipped.
pub fn parse_table(text: &str, proto: PortProto) -> Vec<Socket> {
    let (v6, listen_state) = match proto {
        PortProto::Tcp => (false, TCP_LISTEN),
        PortProto::Tcp6 => (true, TCP_LISTEN),
        PortProto::Udp => (false, UDP_UNCONNECTED),
        PortProto::Udp6 => (true, UDP_UNCONNECTED),
    };
    let udp = matches!(proto, PortProto::Udp | PortProto::Udp6);
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
            if fields.len() < 10 || !fields[0].ends_with(':') {
                return None;
            }
            if !fields[3].eq_ignore_ascii_case(listen_state) {
                return None;
            }
            let (addr, port) = parse_endpoint(fields[1], v6)?;
            let (remote, remote_port) = parse_endpoint(fields[2], v6)?;
            if udp && (!remote.is_unspecified() || remote_port != 0) {
                // A connected UDP socket talks to one peer; it serves no one.
                return None;
            }
            let inode = fields[9].parse().ok()?;
            Some(Socket {
                proto,
                addr,
                port,
                inode,
            })
        })
        .collect()
}

/// `0100007F:1F90` (or 32 hex digits for IPv6) to an address and port.
fn parse_endpoint(s: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let addr = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
            word.copy_from_slice(&hex_word(&addr[i * 8..i * 8 + 8])?);
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if addr.len() != 8 {
            return None;
        }
        IpAddr::V4(Ipv4Addr::from(hex_word(addr)?))
    };
    Some((addr, port))
}

/// One 8-digit word of an address: the kernel printed the network-order
/// bytes as a native-endian u32, so native-endian bytes give them back.
fn hex_word(s: &str) -> Option<[u8; 4]> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(u32::from_str_radix(s, 16).ok()?.to_ne_bytes())
}

/// The inode of an fd link's target `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Owner (pid, comm) of each socket inode in `sockets`: the lowest pid
/// holding it (a forking server's parent), so the answer is stable.
fn find_owners(sockets: &[Socket]) -> HashMap<u64, (u32, Option<String>)> {
    let wanted: std::collections::HashSet<u64> = sockets
        .iter()
        .map(|s| s.inode)
        .filter(|&i| i != 0)
        .collect();
    let mut owners: HashMap<u64, (u32, Option<String>)> = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            if !wanted.contains(&inode) || owners.contains_key(&inode) {
                continue;
            }
            let name = comm
                .get_or_insert_with(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .ok()
                        .map(|c| c.trim_end_matches('\n').to_owned())
                })
                .clone();
            owners.insert(inode, (pid, name));
        }
        if owners.len() == wanted.len() {
            break;
        }
    }
    owners
}

/// The answer: sockets with their owners, sorted by (proto, port, addr),
/// one entry per (proto, addr, port) (several sockets share one with
/// SO_REUSEPORT; an entry with a known owner wins).
pub fn assemble(
    sockets: Vec<Socket>,
    owners: &HashMap<u64, (u32, Option<String>)>,
) -> Vec<ListenPort> {
    let mut rows: Vec<(Socket, Option<u32>, Option<String>)> = sockets
        .into_iter()
        .map(|s| {
            let (pid, process) = match owners.get(&s.inode) {
                Some((pid, comm)) => (Some(*pid), comm.clone()),
                None => (None, None),
            };
            (s, pid, process)
        })
        .collect();
    // Owned before unowned, then the lower pid, so dedup keeps the best.
    rows.sort_by(|(a, apid, _), (b, bpid, _)| {
        (a.proto, a.port, a.addr, apid.is_none(), apid).cmp(&(
            b.proto,
            b.port,
            b.addr,
            bpid.is_none(),
            bpid,
        ))
    });
    rows.dedup_by(|(later, ..), (first, ..)| {
        (later.proto, later.port, later.addr) == (first.proto, first.port, first.addr)
    });
    rows.into_iter()
        .map(|(s, pid, process)| ListenPort {
            proto: s.proto,
            addr: s.addr.to_string(),
            port: s.port,
            process,
            pid,
        })
        .collect()
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:D3A4 01 00000000:00000000 02:0008A7F3 00000000     0        0 333 4 0000000000000000 20 4 29 10 -1
   3: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: garbage
   5: ZZZZZZZZ:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0000000000000000 100 0 0 10 0
   6: 00000000:12345 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 223 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0a 00000000:00000000 00:00000000 00000000  1000        0 224 1 0000000000000000 100 0 0 10 0
   2: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 225 1 0000000000000000 100 0 0 10 0
   3: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 226 1 0000000000000000 100 0 0 10 0
";

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 15633 2 0000000000000000 0
  200: 0F02000A:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 15700 2 0000000000000000 0
  201: 0F02000A:A1B3 08080808:0035 07 00000000:00000000 00:00000000 00000000     0        0 15701 2 0000000000000000 0
  300: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 15800 2 0000000000000000 0
";

    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  9535: 00000000000000000000000000000000:CA2F 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 849501 2 00000000a7ba6833 0
  9536: 00000000000000000000000001000000:0035 00000000000000000000000001000000:1F90 07 00000000:00000000 00:00000000 00000000     0        0 849502 2 00000000a7ba6833 0
";

    fn sock(proto: PortProto, addr: &str, port: u16, inode: u64) -> Socket {
        Socket {
            proto,
            addr: addr.parse().unwrap(),
            port,
            inode,
        }
    }

    #[test]
    fn tcp_keeps_listeners_only_and_decodes_addresses() {
        // Row 2 is ESTABLISHED, row 3 TIME_WAIT, rows 4-6 malformed.
        assert_eq!(
            parse_table(TCP, PortProto::Tcp),
            vec![
                sock(PortProto::Tcp, "127.0.0.1", 8080, 12345),
                sock(PortProto::Tcp, "0.0.0.0", 22, 222),
            ]
        );
    }

    #[test]
    fn tcp6_words_are_little_endian() {
        assert_eq!(
            parse_table(TCP6, PortProto::Tcp6),
            vec![
                sock(PortProto::Tcp6, "::", 22, 223),
                sock(PortProto::Tcp6, "::1", 3000, 224),
                sock(PortProto::Tcp6, "2001:db8::1", 80, 225),
                sock(PortProto::Tcp6, "::ffff:127.0.0.1", 80, 226),
            ]
        );
    }

    #[test]
    fn udp_keeps_unconnected_sockets_only() {
        // 200 is connected (ESTABLISHED), 201 has a peer despite state 07.
        assert_eq!(
            parse_table(UDP, PortProto::Udp),
            vec![
                sock(PortProto::Udp, "0.0.0.0", 68, 15633),
                sock(PortProto::Udp, "127.0.0.53", 53, 15800),
            ]
        );
        assert_eq!(
            parse_table(UDP6, PortProto::Udp6),
            vec![sock(PortProto::Udp6, "::", 51759, 849501)]
        );
    }

    #[test]
    fn empty_and_header_only_tables_list_nothing() {
        assert!(parse_table("", PortProto::Tcp).is_empty());
        assert!(parse_table(TCP.lines().next().unwrap(), PortProto::Tcp).is_empty());
    }

    #[test]
    fn fd_links_name_socket_inodes() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("socket:[]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn assemble_sorts_dedups_and_names_owners() {
        let sockets = vec![
            sock(PortProto::Udp, "0.0.0.0", 68, 5),
            sock(PortProto::Tcp6, "::", 22, 4),
            sock(PortProto::Tcp, "127.0.0.1", 8080, 3),
            sock(PortProto::Tcp, "0.0.0.0", 8080, 2),
            // SO_REUSEPORT: two sockets, one port; the owned one stays.
            sock(PortProto::Tcp, "0.0.0.0", 22, 9),
            sock(PortProto::Tcp, "0.0.0.0", 22, 1),
        ];
        let owners = HashMap::from([
            (1, (310, Some("sshd".to_string()))),
            (4, (310, Some("sshd".to_string()))),
            (3, (77, None)),
        ]);
        let got = assemble(sockets, &owners);
        let brief: Vec<String> = got
            .iter()
            .map(|p| {
                format!(
                    "{} {}:{} {} {}",
                    p.proto,
                    p.addr,
                    p.port,
                    p.process.as_deref().unwrap_or("-"),
                    p.pid.map_or("-".into(), |p| p.to_string())
                )
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                "tcp 0.0.0.0:22 sshd 310",
                "tcp 0.0.0.0:8080 - -",
                "tcp 127.0.0.1:8080 - 77",
                "tcp6 :::22 sshd 310",
                "udp 0.0.0.0:68 - -",
            ]
        );
    }
}
