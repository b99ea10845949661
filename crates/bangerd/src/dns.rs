//! The `.vm` DNS server in the daemon (see `banger-dns`): one listener on
//! `dns_addr` from the start, a second on the bridge's address (same port)
//! once the bridge exists, and systemd-resolved routing of `~vm` to it.
//! None of it is required: failures are warnings, shown by `doctor`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, Weak};

use banger_api::VmState;
use banger_dns::{DnsError, Lookup, ServerHandle};

use crate::daemon::{Daemon, Shared};

/// Where one listener stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// `dns_addr = "off"`.
    Off,
    /// Not tried yet (the bridge listener before the bridge exists).
    Pending,
    Listening(SocketAddr),
    Failed(String),
}

/// The daemon's DNS state.
pub struct Dns {
    primary: Mutex<Listener>,
    bridge: Mutex<Listener>,
    /// Serialises bridge attachment so it happens once.
    bridge_lock: tokio::sync::Mutex<()>,
    /// The running servers; dropping one would stop it.
    servers: Mutex<Vec<ServerHandle>>,
}

impl Default for Dns {
    fn default() -> Dns {
        Dns {
            primary: Mutex::new(Listener::Pending),
            bridge: Mutex::new(Listener::Pending),
            bridge_lock: tokio::sync::Mutex::new(()),
            servers: Mutex::new(Vec::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dns {
    pub fn primary(&self) -> Listener {
        lock(&self.primary).clone()
    }

    pub fn bridge(&self) -> Listener {
        lock(&self.bridge).clone()
    }
}

/// Answers from the state database at query time: a running VM's address.
/// Holds the daemon weakly (the daemon holds the servers).
fn lookup(d: Weak<Daemon>) -> Lookup {
    Arc::new(move |name: &str| {
        let d = d.upgrade()?;
        let rec = match d.store.vm_by_name(name) {
            Ok(r) => r?,
            Err(e) => {
                tracing::warn!(error = %e, "dns: store lookup failed");
                return None;
            }
        };
        if rec.state != VmState::Running.as_str() {
            return None;
        }
        rec.ip.parse().ok()
    })
}

/// The bridge listener's address: the gateway, on `dns_addr`'s port.
fn bridge_addr(gateway: Ipv4Addr, primary: SocketAddrV4) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(gateway), primary.port())
}

/// Whether a bind failed only because the address is not on any
/// interface yet (the bridge does not exist).
fn not_here_yet(e: &DnsError) -> bool {
    matches!(e, DnsError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrNotAvailable)
}

/// At daemon start: the `dns_addr` listener, and the bridge listener when
/// the bridge is already up (VMs from an earlier daemon run).
pub async fn start(d: &Shared) {
    let Some(addr) = d.cfg.settings.dns_addr else {
        *lock(&d.dns.primary) = Listener::Off;
        *lock(&d.dns.bridge) = Listener::Off;
        tracing::info!("dns: off (dns_addr = \"off\")");
        return;
    };
    let addr = SocketAddr::V4(addr);
    let state = match banger_dns::serve(addr, lookup(Arc::downgrade(d))).await {
        Ok(h) => {
            tracing::info!(addr = %h.local_addr(), "dns: serving .vm");
            let l = Listener::Listening(h.local_addr());
            lock(&d.dns.servers).push(h);
            l
        }
        Err(e) => {
            tracing::warn!(error = %e, "dns: not serving .vm; set dns_addr (or BANGER_DNS_ADDR) to a free IPv4:PORT, or \"off\"");
            Listener::Failed(e.to_string())
        }
    };
    *lock(&d.dns.primary) = state;
    // In the background: it may ask the helper, which must not hold up
    // the daemon's start.
    let d = d.clone();
    tokio::spawn(async move { attach(&d, "", true).await });
}

/// After `ensure_bridge` succeeded: [`attach`] in the background, unless
/// it already happened.
pub fn bridge_ready(d: &Shared, op_id: &str) {
    if d.dns.bridge() != Listener::Pending {
        return;
    }
    let (d, op_id) = (d.clone(), op_id.to_string());
    tokio::spawn(async move { attach(&d, &op_id, false).await });
}

/// Listen on the bridge's address and route `~vm` to it in
/// systemd-resolved. Once per daemon run. At daemon start (`at_start`) a
/// bridge that does not exist yet is not a failure: `ensure_bridge` will
/// call again.
async fn attach(d: &Shared, op_id: &str, at_start: bool) {
    let Some(primary) = d.cfg.settings.dns_addr else {
        return;
    };
    let _g = d.dns.bridge_lock.lock().await;
    if d.dns.bridge() != Listener::Pending {
        return;
    }
    let addr = bridge_addr(d.cfg.gateway, primary);
    // The primary may already cover it (dns_addr on the gateway or 0.0.0.0).
    let covered = primary.ip() == &d.cfg.gateway || primary.ip().is_unspecified();
    let state = if covered {
        match d.dns.primary() {
            Listener::Listening(_) => Listener::Listening(addr),
            other => other,
        }
    } else {
        match banger_dns::serve(addr, lookup(Arc::downgrade(d))).await {
            Ok(h) => {
                tracing::info!(addr = %h.local_addr(), "dns: serving .vm on the bridge");
                lock(&d.dns.servers).push(h);
                Listener::Listening(addr)
            }
            // At daemon start without a bridge: wait for ensure_bridge.
            Err(e) if at_start && not_here_yet(&e) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dns: not serving .vm on the bridge");
                Listener::Failed(e.to_string())
            }
        }
    };
    *lock(&d.dns.bridge) = state.clone();
    // resolved sends a link's queries out of that link, so the server it
    // is given must be on the bridge; without that listener, dns_addr.
    let server = match state {
        Listener::Listening(a) => a.to_string(),
        _ => primary.to_string(),
    };
    match d
        .helper
        .sync_resolver_routing(op_id, &d.cfg.bridge, &server)
        .await
    {
        Ok(None) => {
            tracing::info!(bridge = %d.cfg.bridge, %server, "dns: systemd-resolved routes ~vm to banger")
        }
        Ok(Some(why)) => tracing::info!(bridge = %d.cfg.bridge, "dns: resolver routing {why}"),
        Err(e) => {
            tracing::warn!(error = %e, "dns: resolver routing failed; *.vm resolves only by asking the server directly")
        }
    }
}

/// `banger doctor`'s "dns" line.
pub fn doctor_check(d: &Daemon) -> banger_api::DoctorCheck {
    use banger_api::CheckStatus;
    let how = format!(
        "set dns_addr in {} (or BANGER_DNS_ADDR) to a free IPv4:PORT",
        d.cfg.layout.config_file.display()
    );
    let (status, detail) = match d.dns.primary() {
        Listener::Listening(a) => {
            let bridge = match d.dns.bridge() {
                Listener::Listening(b) if b != a => format!(" and {b}"),
                Listener::Failed(e) => format!(" (not on the bridge: {e})"),
                _ => String::new(),
            };
            (
                CheckStatus::Pass,
                format!(
                    "serving <name>.vm on {a}{bridge} (try: dig @{} -p {} NAME.vm)",
                    a.ip(),
                    a.port()
                ),
            )
        }
        Listener::Off => (
            CheckStatus::Warn,
            format!("off (dns_addr = \"off\"): <name>.vm does not resolve; {how}"),
        ),
        Listener::Failed(e) => (
            CheckStatus::Warn,
            format!("not serving <name>.vm: {e}; {how}"),
        ),
        Listener::Pending => (CheckStatus::Warn, "not started yet".to_string()),
    };
    banger_api::DoctorCheck {
        name: "dns".into(),
        status,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_listener_uses_the_gateway_and_dns_port() {
        assert_eq!(
            bridge_addr(
                Ipv4Addr::new(172, 30, 0, 1),
                "127.0.0.1:42069".parse().unwrap()
            ),
            "172.30.0.1:42069".parse::<SocketAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn an_address_not_on_this_host_is_not_here_yet() {
        // TEST-NET-1 is on no interface.
        let e = banger_dns::serve("192.0.2.1:0".parse().unwrap(), Arc::new(|_: &str| None))
            .await
            .unwrap_err();
        assert!(not_here_yet(&e), "{e}");
    }
}
