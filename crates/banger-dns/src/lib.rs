//! The daemon's DNS server: `<name>.vm` A records for running VMs.
//!
//! One job, one zone. The server is authoritative for `vm.` and nothing
//! else; it never recurses. Answers come from a lookup function called at
//! query time (the daemon reads its state database), so records follow VM
//! create/stop/delete at once; TTLs are 0 so no resolver caches them.
//!
//! | query                                  | answer                          |
//! |----------------------------------------|---------------------------------|
//! | `NAME.vm` A (or ANY), NAME is known    | NOERROR, one A record, AA       |
//! | `NAME.vm` other type, NAME is known    | NOERROR, no answers, SOA, AA    |
//! | `NAME.vm`, NAME unknown or not a label | NXDOMAIN, SOA, AA               |
//! | `vm.`, `a.b.vm`                        | NXDOMAIN, SOA, AA               |
//! | anything outside `vm.`, non-IN class   | REFUSED                         |
//! | not a standard query (UPDATE, NOTIFY)  | NOTIMP                          |
//!
//! Malformed messages are answered FORMERR by hickory-server (or dropped
//! when even the header is unreadable); nothing in a query can panic the
//! handler.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// The zone served.
pub const ZONE: &str = "vm.";

/// How long a TCP client may stay idle before its connection is closed.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Maps a VM name (lowercase, without `.vm`) to its address when the VM is
/// running.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: {0} is not an IPv4 address")]
    NotIpv4(SocketAddr),
}

/// What a query resolves to, before it is put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The VM's address (A or ANY query for a running VM).
    Address(Ipv4Addr),
    /// The name exists, the type does not (AAAA, MX, ...).
    NoData,
    /// No such name in `vm.`.
    NxDomain,
    /// Not ours: outside `vm.` or not class IN.
    Refused,
}

/// Decides the answer for one question. Pure apart from `lookup`.
pub fn resolve(qname: &LowerName, qtype: RecordType, qclass: DNSClass, lookup: &Lookup) -> Answer {
    let zone = zone();
    if qclass != DNSClass::IN || !zone.zone_of(qname) {
        return Answer::Refused;
    }
    let name = Name::from(qname.clone());
    // Exactly `<label>.vm.`: the apex and deeper names hold no records.
    if name.num_labels() != 2 {
        return Answer::NxDomain;
    }
    let Some(label) = name.iter().next() else {
        return Answer::NxDomain;
    };
    let Ok(label) = std::str::from_utf8(label) else {
        return Answer::NxDomain;
    };
    // LowerName has lowercased it already; VM names are lowercase labels.
    if banger_api::validate_vm_name(label).is_err() {
        return Answer::NxDomain;
    }
    match lookup(label) {
        None => Answer::NxDomain,
        Some(ip) if matches!(qtype, RecordType::A | RecordType::ANY) => Answer::Address(ip),
        Some(_) => Answer::NoData,
    }
}

fn zone() -> LowerName {
    LowerName::new(&Name::from_ascii(ZONE).expect("static zone name"))
}

/// The zone's SOA, sent in the authority section of negative answers.
/// Minimum (negative-caching TTL) 0: a VM created a moment later must
/// resolve.
fn soa_record() -> Record {
    let origin = Name::from_ascii(ZONE).expect("static zone name");
    let mname = Name::from_ascii("ns.vm.").expect("static name");
    let rname = Name::from_ascii("hostmaster.vm.").expect("static name");
    Record::from_rdata(
        origin,
        0,
        RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, 0)),
    )
}

/// The hickory-server request handler for the `vm.` zone.
pub struct VmHandler {
    lookup: Lookup,
    soa: Record,
}

impl VmHandler {
    pub fn new(lookup: Lookup) -> VmHandler {
        VmHandler {
            lookup,
            soa: soa_record(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for VmHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(false);
        let send_code = |mut header: Header, code: ResponseCode| {
            header.set_response_code(code);
            header
        };
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            let h = send_code(header, ResponseCode::NotImp);
            return send(&mut response_handle, builder.build_no_records(h), h).await;
        }
        // Exactly one question; anything else is a format error.
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                let h = send_code(header, ResponseCode::FormErr);
                return send(&mut response_handle, builder.build_no_records(h), h).await;
            }
        };
        let q = info.query;
        let answer = resolve(q.name(), q.query_type(), q.query_class(), &self.lookup);
        tracing::debug!(name = %q.name(), qtype = %q.query_type(), ?answer, "dns query");
        match answer {
            Answer::Refused => {
                let h = send_code(header, ResponseCode::Refused);
                send(&mut response_handle, builder.build_no_records(h), h).await
            }
            Answer::Address(ip) => {
                header.set_authoritative(true);
                let rec = Record::from_rdata(Name::from(q.name().clone()), 0, RData::A(A(ip)));
                let msg = builder.build(header, [&rec], [], [], []);
                send(&mut response_handle, msg, header).await
            }
            Answer::NoData | Answer::NxDomain => {
                header.set_authoritative(true);
                if answer == Answer::NxDomain {
                    header.set_response_code(ResponseCode::NXDomain);
                }
                let msg = builder.build(header, [], [], [&self.soa], []);
                send(&mut response_handle, msg, header).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    msg: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    header: Header,
) -> ResponseInfo {
    match handle.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!("dns: send response: {e}");
            let mut h = header;
            h.set_response_code(ResponseCode::ServFail);
            h.into()
        }
    }
}

/// A running server. Dropping it leaves the server running; call
/// [`ServerHandle::shutdown`] to stop it.
pub struct ServerHandle {
    addr: SocketAddr,
    server: ServerFuture<VmHandler>,
}

impl ServerHandle {
    /// The bound address (UDP and TCP share it; with port 0 the port the
    /// system picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting queries and waits for the listeners to finish.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Serves the `vm.` zone on UDP and TCP at `addr` (IPv4). Port 0 picks a
/// free port, the same for both. Must run inside a tokio runtime.
pub async fn serve(addr: SocketAddr, lookup: Lookup) -> Result<ServerHandle, DnsError> {
    if !addr.is_ipv4() {
        return Err(DnsError::NotIpv4(addr));
    }
    let bind_err = |proto, addr, source| DnsError::Bind {
        proto,
        addr,
        source,
    };
    // With port 0 the TCP port must match the UDP one the system picked;
    // another process can hold it over TCP, so try a few.
    let mut attempt = 0;
    let (udp, tcp, bound) = loop {
        attempt += 1;
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_err("udp", addr, e))?;
        let bound = udp.local_addr().map_err(|e| bind_err("udp", addr, e))?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => break (udp, tcp, bound),
            Err(e) if addr.port() == 0 && attempt < 8 => {
                tracing::debug!("dns: tcp port {} taken ({e}); retrying", bound.port());
            }
            Err(e) => return Err(bind_err("tcp", bound, e)),
        }
    };
    let mut server = ServerFuture::new(VmHandler::new(lookup));
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT);
    Ok(ServerHandle {
        addr: bound,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup() -> Lookup {
        Arc::new(|n: &str| (n == "box").then_some(Ipv4Addr::new(172, 30, 0, 2)))
    }

    fn q(name: &str, t: RecordType) -> Answer {
        let n = LowerName::new(&Name::from_ascii(name).unwrap());
        resolve(&n, t, DNSClass::IN, &lookup())
    }

    #[test]
    fn answers_by_name_and_type() {
        let ip = Ipv4Addr::new(172, 30, 0, 2);
        assert_eq!(q("box.vm.", RecordType::A), Answer::Address(ip));
        assert_eq!(q("BOX.Vm.", RecordType::A), Answer::Address(ip));
        assert_eq!(q("box.vm", RecordType::A), Answer::Address(ip));
        assert_eq!(q("box.vm.", RecordType::ANY), Answer::Address(ip));
        assert_eq!(q("box.vm.", RecordType::AAAA), Answer::NoData);
        assert_eq!(q("box.vm.", RecordType::MX), Answer::NoData);
        assert_eq!(q("nosuch.vm.", RecordType::A), Answer::NxDomain);
        assert_eq!(q("vm.", RecordType::A), Answer::NxDomain);
        assert_eq!(q("vm.", RecordType::SOA), Answer::NxDomain);
        assert_eq!(q("_x.vm.", RecordType::A), Answer::NxDomain);
        assert_eq!(q("a_b.vm.", RecordType::A), Answer::NxDomain);
        // Raw labels that Name::from_ascii would refuse still reach us on
        // the wire.
        for raw in [&b"-box"[..], b"box ", b";rm", b"\xff"] {
            let n = Name::from_labels([raw, b"vm"]).unwrap();
            let n = LowerName::new(&n);
            assert_eq!(
                resolve(&n, RecordType::A, DNSClass::IN, &lookup()),
                Answer::NxDomain
            );
        }
        assert_eq!(q("a.box.vm.", RecordType::A), Answer::NxDomain);
        assert_eq!(q("example.com.", RecordType::A), Answer::Refused);
        assert_eq!(q("box.vm.example.com.", RecordType::A), Answer::Refused);
        assert_eq!(q("vmx.", RecordType::A), Answer::Refused);
        assert_eq!(q(".", RecordType::NS), Answer::Refused);
        let n = LowerName::new(&Name::from_ascii("box.vm.").unwrap());
        assert_eq!(
            resolve(&n, RecordType::A, DNSClass::CH, &lookup()),
            Answer::Refused
        );
    }

    #[tokio::test]
    async fn ipv6_is_refused_with_the_address() {
        let e = serve("[::1]:0".parse().unwrap(), lookup())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("[::1]:0"), "{e}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let first = serve("127.0.0.1:0".parse().unwrap(), lookup())
            .await
            .unwrap();
        let addr = first.local_addr();
        let e = serve(addr, lookup()).await.unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()) && e.contains("bind"), "{e}");
        first.shutdown().await;
    }
}
