//! The server over real sockets: queries built with hickory-proto, sent
//! over UDP and TCP to a server on an ephemeral port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

type Map = Arc<Mutex<HashMap<String, Ipv4Addr>>>;

async fn start() -> (banger_dns::ServerHandle, Map) {
    let map: Map = Arc::new(Mutex::new(HashMap::from([(
        "box".to_string(),
        Ipv4Addr::new(172, 30, 0, 2),
    )])));
    let m = map.clone();
    let lookup: banger_dns::Lookup = Arc::new(move |n: &str| m.lock().unwrap().get(n).copied());
    let h = banger_dns::serve("127.0.0.1:0".parse().unwrap(), lookup)
        .await
        .unwrap();
    (h, map)
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(rand_id());
    m.set_message_type(MessageType::Query);
    m.set_op_code(OpCode::Query);
    m.set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn udp_raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn udp(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let q = query(name, t);
    let r = udp_raw(addr, &q).await.expect("an answer within 2s");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.id(), Message::from_vec(&q).unwrap().id());
    assert_eq!(m.message_type(), MessageType::Response);
    m
}

async fn tcp(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    let q = query(name, t);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<(Ipv4Addr, u32)> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((a.0, r.ttl())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_over_udp() {
    let (h, _) = start().await;
    let addr = h.local_addr();
    assert_ne!(addr.port(), 0);

    let m = udp(addr, "box.vm.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert!(!m.recursion_available());
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(172, 30, 0, 2), 0)]);
    assert_eq!(m.answers()[0].name().to_ascii(), "box.vm.");

    // Case does not matter.
    let m = udp(addr, "BOX.VM.", RecordType::A).await;
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(172, 30, 0, 2), 0)]);

    // Known name, other type: NOERROR, no answers, SOA for negative caching.
    let m = udp(addr, "box.vm.", RecordType::AAAA).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.answers().is_empty());
    assert!(m.authoritative());
    assert_eq!(m.name_servers().len(), 1);
    assert_eq!(m.name_servers()[0].record_type(), RecordType::SOA);

    for name in ["nosuch.vm.", "vm.", "_x.vm.", "a.box.vm."] {
        let m = udp(addr, name, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain, "{name}");
        assert!(m.authoritative(), "{name}");
        assert!(m.answers().is_empty(), "{name}");
    }

    for name in ["example.com.", "box.vm.example.com.", "."] {
        let m = udp(addr, name, RecordType::A).await;
        assert_eq!(m.response_code(), ResponseCode::Refused, "{name}");
        assert!(m.answers().is_empty(), "{name}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn answers_over_tcp() {
    let (h, _) = start().await;
    let m = tcp(h.local_addr(), "box.vm.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(172, 30, 0, 2), 0)]);
    let m = tcp(h.local_addr(), "example.com.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);
    h.shutdown().await;
}

#[tokio::test]
async fn lookup_changes_show_on_the_next_query() {
    let (h, map) = start().await;
    let addr = h.local_addr();
    let m = udp(addr, "new.vm.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    map.lock()
        .unwrap()
        .insert("new".into(), Ipv4Addr::new(172, 30, 0, 9));
    let m = udp(addr, "new.vm.", RecordType::A).await;
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(172, 30, 0, 9), 0)]);
    map.lock().unwrap().remove("box");
    let m = udp(addr, "box.vm.", RecordType::A).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_queries_do_not_stop_the_server() {
    let (h, _) = start().await;
    let addr = h.local_addr();
    // Too short for a header: no answer. Garbage after a header: FORMERR
    // or nothing. Two questions: FORMERR. Then a good query still works.
    assert!(udp_raw(addr, b"\x01\x02\x03").await.is_none());
    let mut junk = query("box.vm.", RecordType::A);
    junk.truncate(15);
    junk.extend_from_slice(&[0xff; 40]);
    if let Some(r) = udp_raw(addr, &junk).await {
        let m = Message::from_vec(&r).unwrap();
        assert_ne!(m.response_code(), ResponseCode::NoError);
    }
    let mut two = Message::new();
    two.set_id(7);
    two.add_query(Query::query(
        Name::from_ascii("box.vm.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("other.vm.").unwrap(),
        RecordType::A,
    ));
    let r = udp_raw(addr, &two.to_vec().unwrap()).await.unwrap();
    assert_eq!(
        Message::from_vec(&r).unwrap().response_code(),
        ResponseCode::FormErr
    );
    let mut update = Message::new();
    update.set_id(8);
    update.set_op_code(OpCode::Update);
    update.add_query(Query::query(
        Name::from_ascii("vm.").unwrap(),
        RecordType::SOA,
    ));
    let r = udp_raw(addr, &update.to_vec().unwrap()).await.unwrap();
    assert_eq!(
        Message::from_vec(&r).unwrap().response_code(),
        ResponseCode::NotImp
    );
    let m = udp(addr, "box.vm.", RecordType::A).await;
    assert_eq!(a_records(&m).len(), 1);
    h.shutdown().await;
}
