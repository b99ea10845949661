//! The host client against a scripted peer on a real Unix socket pair.
#![cfg(feature = "client")]

use std::time::Duration;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use banger_agent_proto::client::{wait_ready, AgentClient, ClientError, ExecEvent, TarInReport};
use banger_agent_proto::{decode, encode, Event, GuestFrame, HostFrame, Request};
use banger_agent_proto::{HostDecoder, HostInput, MAX_CHUNK_IN_BYTES};
use banger_agent_proto::{ListenPort, PortProto};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf};
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
        instance_id: None,
        features: Vec::new(),
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
async fn ports_returns_the_listed_sockets() {
    let (client, mut peer) = pair();
    let c = client.clone();
    let ports = tokio::spawn(async move { c.ports(T).await });
    let f = peer.recv().await;
    assert_eq!(f.req, Request::Ports);
    let listed = vec![ListenPort {
        proto: PortProto::Tcp,
        addr: "0.0.0.0".into(),
        port: 22,
        process: Some("sshd".into()),
        pid: Some(300),
    }];
    peer.send(
        f.id,
        Event::Ports {
            ports: listed.clone(),
        },
    )
    .await;
    assert_eq!(ports.await.unwrap().unwrap(), listed);

    // A wrong answer and an old agent's refusal are errors naming the request.
    let c = client.clone();
    let ports = tokio::spawn(async move { c.ports(T).await });
    let f = peer.recv().await;
    peer.send(f.id, Event::Ok).await;
    let err = ports.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unexpected {
                request: "ports",
                event: "ok"
            }
        ),
        "{err}"
    );
    let c = client.clone();
    let ports = tokio::spawn(async move { c.ports(T).await });
    let f = peer.recv().await;
    peer.send(
        f.id,
        Event::Error {
            message: "unsupported request: unknown variant `ports`".into(),
        },
    )
    .await;
    let err = ports.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: "ports",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn reidentify_sends_the_identity_and_waits_for_ok() {
    let (client, mut peer) = pair();
    let id = banger_agent_proto::testkit::valid_identity();
    let c = client.clone();
    let sent = id.clone();
    let call = tokio::spawn(async move { c.reidentify(&sent, T).await });
    let f = peer.recv().await;
    assert_eq!(
        f.req,
        Request::Reidentify {
            identity: id.clone()
        }
    );
    peer.send(f.id, Event::Ok).await;
    call.await.unwrap().unwrap();

    // The guest now reports the instance id in its Pong.
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let f = peer.recv().await;
    peer.send(
        f.id,
        Event::Pong {
            boot_id: "b00t".into(),
            hostname: "web-2".into(),
            agent_version: "0.2.0".into(),
            instance_id: Some("vm-7".into()),
            features: vec![banger_agent_proto::FEATURE_REIDENTIFY.into()],
        },
    )
    .await;
    assert_eq!(
        ping.await.unwrap().unwrap().instance_id.as_deref(),
        Some("vm-7")
    );

    // A failed step comes back as an Agent error naming the request.
    let c = client.clone();
    let sent = id.clone();
    let call = tokio::spawn(async move { c.reidentify(&sent, T).await });
    let f = peer.recv().await;
    peer.send(
        f.id,
        Event::Error {
            message: "set mac on eth0: RTNETLINK answers: Operation not permitted".into(),
        },
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    match err {
        ClientError::Agent { request, message } => {
            assert_eq!(request, "reidentify");
            assert!(message.starts_with("set mac on eth0: "), "{message}");
        }
        other => panic!("expected an Agent error, got {other}"),
    }

    // A wrong answer is Unexpected; no answer at all is a Timeout.
    let c = client.clone();
    let sent = id.clone();
    let call = tokio::spawn(async move { c.reidentify(&sent, T).await });
    let f = peer.recv().await;
    peer.send(f.id, pong()).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unexpected {
                request: "reidentify",
                event: "pong"
            }
        ),
        "{err}"
    );
    let err = client
        .reidentify(&id, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                request: "reidentify",
                ..
            }
        ),
        "{err}"
    );
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

/// The far end for uploads: reads frames and chunk payloads the way the
/// agent does.
struct RawPeer {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    decoder: HostDecoder,
    /// Decoded frames; a chunk header comes with its whole payload.
    queue: VecDeque<(HostFrame, Vec<u8>)>,
    partial: Option<(HostFrame, Vec<u8>)>,
}

impl RawPeer {
    fn new(peer: Peer) -> RawPeer {
        RawPeer {
            r: peer.lines.into_inner().into_inner(),
            w: peer.w,
            decoder: HostDecoder::new(),
            queue: VecDeque::new(),
            partial: None,
        }
    }

    async fn recv(&mut self) -> (HostFrame, Vec<u8>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(next) = self.queue.pop_front() {
                return next;
            }
            let n = timeout(T, self.r.read(&mut buf))
                .await
                .expect("a frame in time")
                .unwrap();
            assert_ne!(n, 0, "EOF while waiting for a frame");
            let (queue, partial) = (&mut self.queue, &mut self.partial);
            self.decoder.push(&buf[..n], |input| match input {
                HostInput::Frame(f) => match f.req {
                    Request::Chunk { len: 0 } => queue.push_back((f, vec![])),
                    Request::Chunk { .. } => *partial = Some((f, vec![])),
                    _ => queue.push_back((f, vec![])),
                },
                HostInput::ChunkData {
                    data, remaining, ..
                } => {
                    let (_, payload) = partial.as_mut().expect("payload after a header");
                    payload.extend_from_slice(data);
                    if remaining == 0 {
                        queue.extend(partial.take());
                    }
                }
                HostInput::Invalid { line, .. } => {
                    panic!("bad line {:?}", String::from_utf8_lossy(line))
                }
                HostInput::TooLong(n) => panic!("overlong line of {n}"),
            });
        }
    }

    async fn send(&mut self, id: u64, event: Event) {
        self.w
            .write_all(&encode(&GuestFrame { id, event }))
            .await
            .unwrap();
    }
}

fn raw_pair() -> (AgentClient, RawPeer) {
    let (client, peer) = pair();
    (client, RawPeer::new(peer))
}

#[tokio::test]
async fn tar_in_streams_raw_chunks_then_ends() {
    let (client, mut peer) = raw_pair();
    let input: Vec<u8> = (0..MAX_CHUNK_IN_BYTES * 5 / 2)
        .map(|i| (i % 251) as u8)
        .collect();
    let upload = {
        let (c, input) = (client.clone(), input.clone());
        tokio::spawn(async move { c.tar_in("/src", true, &input[..], T).await })
    };
    let (open, _) = peer.recv().await;
    assert_eq!(
        open.req,
        Request::TarIn {
            dest: "/src".into(),
            clear: true
        }
    );
    let mut got = Vec::new();
    loop {
        let (f, payload) = peer.recv().await;
        assert_eq!(f.id, open.id);
        match f.req {
            Request::Chunk { len } => {
                assert_eq!(len as usize, payload.len());
                assert!(payload.len() <= MAX_CHUNK_IN_BYTES);
                assert!(!payload.is_empty());
                got.extend_from_slice(&payload);
            }
            Request::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == input, "the payload arrives intact");
    peer.send(
        open.id,
        Event::Extracted {
            entries: 3,
            bytes: 7,
        },
    )
    .await;
    let report = upload.await.unwrap().unwrap();
    assert_eq!(
        report,
        TarInReport {
            entries: 3,
            bytes: 7
        }
    );

    // An empty input is an upload without chunks; the answer is awaited
    // for at most answer_timeout.
    let upload = {
        let c = client.clone();
        tokio::spawn(async move {
            c.tar_in("/src", false, &b""[..], Duration::from_millis(100))
                .await
        })
    };
    let (open, _) = peer.recv().await;
    let (end, _) = peer.recv().await;
    assert_eq!((end.id, end.req), (open.id, Request::End));
    let err = upload.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                request: "tar_in",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tar_in_stops_at_an_early_agent_error() {
    let (client, mut peer) = raw_pair();
    let upload = {
        let c = client.clone();
        // Endless input: only the agent's error can end this upload.
        tokio::spawn(async move { c.tar_in("/src", false, tokio::io::repeat(b'x'), T).await })
    };
    let (open, _) = peer.recv().await;
    peer.send(
        open.id,
        Event::Error {
            message: "bad dest".into(),
        },
    )
    .await;
    // Keep reading what was already on its way, as the agent does.
    let reader = tokio::spawn(async move {
        loop {
            peer.recv().await;
        }
    });
    let err = timeout(T, upload).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: "tar_in",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bad dest"), "{err}");
    reader.abort();
}

/// Yields some bytes, then fails.
struct FailingReader {
    sent: bool,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.sent {
            return Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        self.sent = true;
        buf.put_slice(b"some bytes");
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_input_cancels_the_upload() {
    let (client, mut peer) = raw_pair();
    let upload = {
        let c = client.clone();
        tokio::spawn(async move {
            c.tar_in("/src", false, FailingReader { sent: false }, T)
                .await
        })
    };
    let (open, _) = peer.recv().await;
    let (cancel, _) = peer.recv().await;
    assert_eq!((cancel.id, cancel.req), (open.id, Request::Cancel));
    let err = upload.await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Input { .. }), "{err}");
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_dropped_upload_is_canceled_and_the_stream_stays_in_step() {
    let (client, mut peer) = raw_pair();
    let upload = {
        let c = client.clone();
        tokio::spawn(async move { c.tar_in("/src", false, tokio::io::repeat(b'\n'), T).await })
    };
    let (open, _) = peer.recv().await;
    let (first, payload) = peer.recv().await;
    assert_eq!(
        first.req,
        Request::Chunk {
            len: MAX_CHUNK_IN_BYTES as u64
        }
    );
    assert!(payload.iter().all(|&b| b == b'\n'));
    upload.abort();
    // Whatever chunks were under way arrive whole, then the Cancel.
    loop {
        let (f, _) = peer.recv().await;
        assert_eq!(f.id, open.id);
        match f.req {
            Request::Chunk { .. } => {}
            Request::Cancel => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let c = client.clone();
    let ping = tokio::spawn(async move { c.ping(T).await });
    let (f, _) = peer.recv().await;
    assert_eq!(f.req, Request::Ping);
    peer.send(f.id, pong()).await;
    ping.await.unwrap().unwrap();
}
