//! The host client against a scripted peer on a real Unix socket pair.
#![cfg(feature = "client")]

use std::time::Duration;

use banger_agent_proto::client::{wait_ready, AgentClient, ClientError, ExecEvent};
use banger_agent_proto::{decode, encode, Event, GuestFrame, HostFrame, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::{timeout, Instant};

const T: Duration = Duration::from_secs(10);

/// The far end of the stream, played by the test.
struct Peer {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Peer {
    async fn recv(&mut self) -> HostFrame {
        loop {
            let line = timeout(T, self.lines.next_line())
                .await
                .expect("request in time")
                .unwrap()
                .expect("a request, not EOF");
            // A new client starts with a newline, in case the stream holds
            // a torn line from an earlier connection.
            if !line.is_empty() {
                return decode(line.as_bytes()).unwrap();
            }
        }
    }

    async fn send(&mut self, id: u64, event: Event) {
        self.w
            .write_all(&encode(&GuestFrame { id, event }))
            .await
            .unwrap();
    }
}

fn pair() -> (AgentClient, Peer) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let client = AgentClient::new(UnixStream::from_std(a).unwrap());
    let (r, w) = UnixStream::from_std(b).unwrap().into_split();
    (
        client,
        Peer {
            lines: BufReader::new(r).lines(),
            w,
        },
    )
}

fn pong() -> Event {
    Event::Pong {
        boot_id: "b00t".into(),
        hostname: "vm".into(),
        agent_version: "0.1.0".into(),
    }
}

#[tokio::test]
async fn demultiplexes_interleaved_answers_and_drops_noise() {
    let (client, mut peer) = pair();
    let exec = {
        let c = client.clone();
        tokio::spawn(async move {
            let s = c.exec(vec!["x".into()], vec![], None).await.unwrap();
            s.collect().await.unwrap()
        })
    };
    let HostFrame { id: exec_id, req } = peer.recv().await;
    assert!(matches!(req, Request::Exec { .. }));
    let ping = {
        let c = client.clone();
        tokio::spawn(async move { c.ping(T).await })
    };
    let HostFrame { id: ping_id, req } = peer.recv().await;
    assert_eq!(req, Request::Ping);
    assert_ne!(exec_id, ping_id);

    peer.send(exec_id, Event::stdout(b"o1")).await;
    peer.w.write_all(b"garbage\n\"id\":1}\n\n").await.unwrap();
    peer.send(ping_id + 1000, Event::Ok).await; // unknown id
    peer.send(ping_id, pong()).await;
    peer.send(exec_id, Event::stderr(b"e")).await;
    peer.send(exec_id, Event::stdout(b"o2")).await;
    peer.send(exec_id, Event::Exit { code: 3 }).await;

    let p = ping.await.unwrap().unwrap();
    assert_eq!(p.boot_id, "b00t");
    let out = exec.await.unwrap();
    assert_eq!(out.stdout, b"o1o2");
    assert_eq!(out.stderr, b"e");
    assert_eq!(out.code, 3);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn agent_errors_and_timeouts_are_reported() {
    let (client, mut peer) = pair();
    let c = client.clone();
    let sync = tokio::spawn(async move { c.sync(T).await });
    let f = peer.recv().await;
    assert_eq!(f.req, Request::Sync);
    peer.send(
        f.id,
        Event::Error {
            message: "nope".into(),
        },
    )
    .await;
    let err = sync.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: "sync",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nope"), "{err}");

    let err = client.ping(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Timeout {
            request: "ping",
            ..
        }
    ));
    assert!(
        err.to_string().contains("ping") && err.to_string().contains("50ms"),
        "{err}"
    );
    // The late answer is dropped; the connection still works.
    let late = peer.recv().await;
    peer.send(late.id, pong()).await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let f = peer.recv().await;
    peer.send(f.id, pong()).await;
    ping.await.unwrap().unwrap();

    let mut s = client
        .exec(vec!["nope".into()], vec![], None)
        .await
        .unwrap();
    let f = peer.recv().await;
    peer.send(
        f.id,
        Event::Error {
            message: "cannot run \"nope\"".into(),
        },
    )
    .await;
    let err = s.next_event().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: "exec",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.next_event().await.unwrap(), None);
}

#[tokio::test]
async fn a_broken_stream_fails_every_pending_request() {
    let (client, mut peer) = pair();
    let mut exec = client
        .exec(vec!["sleep".into()], vec![], None)
        .await
        .unwrap();
    let f = peer.recv().await;
    peer.send(f.id, Event::stdout(b"partial")).await;
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(Duration::from_secs(60)).await });
    peer.recv().await;
    let c = client.clone();
    let sync = tokio::spawn(async move { c.sync(Duration::from_secs(60)).await });
    peer.recv().await;

    drop(peer);

    let err = timeout(T, ping).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    let err = timeout(T, sync).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    assert_eq!(
        exec.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(b"partial".to_vec()))
    );
    let err = timeout(T, exec.next_event()).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    assert!(client.is_closed());
    // Later requests fail at once.
    let err = client.ping(Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    let err = client
        .exec(vec!["x".into()], vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
}

#[tokio::test]
async fn wait_ready_probes_until_the_agent_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");

    // Nothing listens: NotReady, naming the path and the last failure.
    let err = wait_ready(&path, Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotReady { .. }), "{err}");
    assert!(err.to_string().contains("agent.sock"), "{err}");

    // Like QEMU: accept at once, but answer only from the third probe on,
    // over the same connection.
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let mut peer = Peer {
            lines: BufReader::new(r).lines(),
            w,
        };
        for _ in 0..2 {
            assert_eq!(peer.recv().await.req, Request::Ping);
        }
        let f = peer.recv().await;
        peer.send(f.id, pong()).await;
        // Keep the connection open until the client is done.
        let _ = peer.lines.next_line().await;
        listener
    });
    let started = Instant::now();
    let (client, pong) = wait_ready(&path, Instant::now() + Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(pong.hostname, "vm");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two probes timed out first"
    );
    assert!(!client.is_closed());
    drop(client);
    timeout(T, server).await.unwrap().unwrap();
}
