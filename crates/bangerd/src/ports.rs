//! `GET /vms/{name}/ports`: the sockets listening in a running guest, as
//! the guest agent reads them from /proc (no ssh, nothing installed in the
//! guest), with the `<name>.vm:<port>` endpoint each is reachable at.

use std::net::IpAddr;
use std::time::Duration;

use banger_agent_proto::ListenPort;
use banger_api::{ApiError, PortInfo, VmPorts};

use crate::daemon::Shared;
use crate::vm::{self, agent_for, is_running};

/// How long dialling the agent (when no connection is cached) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to answer; it reads a few small /proc files.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn list(d: &Shared, name: &str) -> Result<VmPorts, ApiError> {
    let rec = vm::find(d, name)?;
    if !is_running(d, &rec) {
        return Err(ApiError::conflict(format!(
            "vm {name:?} is not running; start it with `banger vm start {name}`"
        )));
    }
    let agent = agent_for(d, &rec, CONNECT_TIMEOUT).await?;
    let ports = agent
        .ports(ANSWER_TIMEOUT)
        .await
        .map_err(|e| ApiError::failed(format!("listing the ports of vm {name:?}: {e}")))?;
    // `<name>.vm` only resolves while the daemon's DNS server is listening.
    let dns = matches!(d.dns.primary(), crate::dns::Listener::Listening(_))
        || matches!(d.dns.bridge(), crate::dns::Listener::Listening(_));
    Ok(VmPorts {
        vm: rec.name.clone(),
        ports: ports
            .into_iter()
            .map(|p| port_info(&rec.name, p, dns))
            .collect(),
    })
}

/// The API view of one listener; `dns`: whether `<vm>.vm` resolves. A
/// listener bound to loopback only gets no endpoint: the host cannot reach it.
fn port_info(vm: &str, p: ListenPort, dns: bool) -> PortInfo {
    let reachable = !is_loopback(&p.addr);
    PortInfo {
        endpoint: (dns && reachable).then(|| endpoint(vm, p.port)),
        proto: p.proto.to_string(),
        addr: p.addr,
        port: p.port,
        process: p.process,
        pid: p.pid,
    }
}

/// 127.0.0.0/8, ::1, or ::ffff:127.x (text that is no address is not).
fn is_loopback(addr: &str) -> bool {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.is_loopback(),
        Ok(IpAddr::V6(a)) => {
            a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// `<vm>.vm:<port>`: the name the daemon's DNS server answers for the VM.
pub fn endpoint(vm: &str, port: u16) -> String {
    format!("{vm}.vm:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_agent_proto::PortProto;

    #[test]
    fn listeners_map_to_port_info_with_the_endpoint() {
        let p = ListenPort {
            proto: PortProto::Tcp6,
            addr: "::".into(),
            port: 8080,
            process: Some("python3".into()),
            pid: Some(42),
        };
        assert_eq!(
            port_info("box", p.clone(), true),
            PortInfo {
                proto: "tcp6".into(),
                addr: "::".into(),
                port: 8080,
                process: Some("python3".into()),
                pid: Some(42),
                endpoint: Some("box.vm:8080".into()),
            }
        );
        assert_eq!(port_info("box", p.clone(), false).endpoint, None);
        for local in ["127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1"] {
            let lp = ListenPort {
                addr: local.into(),
                ..p.clone()
            };
            assert_eq!(port_info("box", lp, true).endpoint, None, "{local}");
        }
        for open in ["0.0.0.0", "::", "172.30.0.2", "::ffff:10.0.0.1"] {
            let lp = ListenPort {
                addr: open.into(),
                ..p.clone()
            };
            assert!(port_info("box", lp, true).endpoint.is_some(), "{open}");
        }
    }
}
