//! The real agent binary, served over a Unix socket, driven by the real
//! host client.

use std::process::Stdio;
use std::time::Duration;

use banger_agent_proto::client::{AgentClient, ClientError, ExecEvent, ExecOutput};
use banger_agent_proto::{decode, Event, GuestFrame, MAX_CHUNK_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::{timeout, Instant};

mod common;
use common::{spawn_agent, start_raw, Agent, T};

async fn start() -> (Agent, AgentClient) {
    let (agent, stream) = start_raw().await;
    (agent, AgentClient::new(stream))
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

async fn run(client: &AgentClient, args: &[&str]) -> Result<ExecOutput, ClientError> {
    let stream = client.exec(argv(args), vec![], None).await?;
    timeout(T, stream.collect())
        .await
        .expect("command ends in time")
}

#[tokio::test]
async fn ping_answers_with_the_boot_id() {
    let (_agent, client) = start().await;
    let pong = client.ping(T).await.unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(pong.boot_id, boot_id.trim());
    assert!(!pong.boot_id.is_empty());
    assert_eq!(pong.agent_version, env!("CARGO_PKG_VERSION"));
    // The daemon makes warm snapshots only of guests whose agent says this.
    assert!(pong.has(banger_agent_proto::FEATURE_REIDENTIFY), "{pong:?}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(pong.hostname, hostname.trim());
}

#[tokio::test]
async fn ports_lists_this_process_listeners_with_their_owner() {
    use banger_agent_proto::PortProto;
    let (_agent, client) = start().await;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // A connected UDP socket serves no one: not listed.
    let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    connected.connect(udp.local_addr().unwrap()).unwrap();
    let ports = client.ports(T).await.unwrap();
    let me = std::process::id();
    let find = |proto, port| {
        ports
            .iter()
            .find(|p| p.proto == proto && p.port == port && p.addr == "127.0.0.1")
    };
    for (proto, port) in [
        (PortProto::Tcp, tcp.local_addr().unwrap().port()),
        (PortProto::Udp, udp.local_addr().unwrap().port()),
    ] {
        let p = find(proto, port).unwrap_or_else(|| panic!("{proto} {port} in {ports:?}"));
        assert_eq!(p.pid, Some(me), "{p:?}");
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(p.process.as_deref(), Some(comm.trim_end()), "{p:?}");
    }
    assert!(find(PortProto::Udp, connected.local_addr().unwrap().port()).is_none());
    let mut sorted = ports.clone();
    sorted.sort_by_key(|p| (p.proto, p.port));
    assert_eq!(
        sorted.iter().map(|p| (p.proto, p.port)).collect::<Vec<_>>(),
        ports.iter().map(|p| (p.proto, p.port)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn stats_reports_this_machine() {
    let (_agent, client) = start().await;
    let s = client.stats(T).await.unwrap();
    assert!(s.cpus >= 1, "{s:?}");
    assert!(s.mem_total_bytes > 0 && s.mem_available_bytes <= s.mem_total_bytes);
    assert!(s.uptime_secs > 0.0 && s.load_avg.iter().all(|l| *l >= 0.0));
    let paths: Vec<&str> = s.filesystems.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/", "/root"], "{s:?}");
    let root = &s.filesystems[0];
    assert!(root.total_bytes >= root.used_bytes && root.total_bytes > 0);
}

#[tokio::test]
async fn exec_streams_stdout_stderr_and_the_exit_code() {
    let (_agent, client) = start().await;
    let out = run(&client, &["sh", "-c", "echo out; echo err >&2; exit 42"])
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.code, 42);
}

#[tokio::test]
async fn a_signal_death_is_128_plus_the_signal() {
    let (_agent, client) = start().await;
    let out = run(&client, &["sh", "-c", "kill -9 $$"]).await.unwrap();
    assert_eq!(out.code, 137);
}

#[tokio::test]
async fn a_missing_command_is_an_error_naming_it() {
    let (_agent, client) = start().await;
    let err = run(&client, &["no-such-command-banger"]).await.unwrap_err();
    assert!(matches!(err, ClientError::Agent { .. }), "{err}");
    assert!(err.to_string().contains("no-such-command-banger"), "{err}");

    let err = run(&client, &[]).await.unwrap_err();
    assert!(matches!(err, ClientError::Agent { .. }), "{err}");

    let stream = client
        .exec(argv(&["true"]), vec![], Some("/no/such/dir".into()))
        .await
        .unwrap();
    let err = stream.collect().await.unwrap_err();
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
    // The agent is still serving.
    client.ping(T).await.unwrap();
}

#[tokio::test]
async fn exec_gets_a_clean_environment_plus_its_own() {
    let (_agent, client) = start().await;
    let stream = client
        .exec(
            argv(&["sh", "-c", "echo $FOO; pwd; echo ${TERM-unset}; echo $PATH"]),
            vec![("FOO".into(), "bar baz".into())],
            Some("/tmp".into()),
        )
        .await
        .unwrap();
    let out = timeout(T, stream.collect()).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "bar baz\n/tmp\nunset\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let stream = client
        .exec(
            argv(&["sh", "-c", "echo $TERM $HOME"]),
            vec![("TERM".into(), "xterm".into())],
            None,
        )
        .await
        .unwrap();
    let out = timeout(T, stream.collect()).await.unwrap().unwrap();
    assert_eq!(out.stdout, b"xterm /root\n");
}

#[tokio::test]
async fn concurrent_execs_share_the_connection() {
    let (_agent, client) = start().await;
    let script = |tag: &str| {
        format!("for i in 1 2 3 4 5; do echo {tag}$i; echo e{tag}$i >&2; sleep 0.05; done; exit 7")
    };
    let (script_a, script_b) = (script("a"), script("b"));
    let (argv_a, argv_b) = (["sh", "-c", &script_a], ["sh", "-c", &script_b]);
    let (a, b, pong) = tokio::join!(run(&client, &argv_a), run(&client, &argv_b), async {
        // A ping while both run is answered promptly.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.ping(Duration::from_secs(5)).await
    },);
    pong.unwrap();
    for (out, tag) in [(a.unwrap(), "a"), (b.unwrap(), "b")] {
        let want: String = (1..=5).map(|i| format!("{tag}{i}\n")).collect();
        let want_err: String = (1..=5).map(|i| format!("e{tag}{i}\n")).collect();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
        assert_eq!(String::from_utf8(out.stderr).unwrap(), want_err);
        assert_eq!(out.code, 7);
    }
}

#[tokio::test]
async fn output_streams_before_the_command_ends() {
    let (_agent, client) = start().await;
    let started = Instant::now();
    let mut stream = client
        .exec(
            argv(&["sh", "-c", "echo first; sleep 3; echo second"]),
            vec![],
            None,
        )
        .await
        .unwrap();
    let first = timeout(T, stream.next_event()).await.unwrap().unwrap();
    assert_eq!(first, Some(ExecEvent::Stdout(b"first\n".to_vec())));
    assert!(started.elapsed() < Duration::from_millis(2500));
    let second = timeout(T, stream.next_event()).await.unwrap().unwrap();
    assert_eq!(second, Some(ExecEvent::Stdout(b"second\n".to_vec())));
    assert_eq!(stream.next_event().await.unwrap(), Some(ExecEvent::Exit(0)));
    assert_eq!(stream.next_event().await.unwrap(), None);
}

#[tokio::test]
async fn large_output_arrives_complete_in_bounded_chunks() {
    let (_agent, client) = start().await;
    const N: usize = 5_000_000;
    let mut stream = client
        .exec(
            argv(&[
                "sh",
                "-c",
                "head -c 5000000 /dev/urandom | tee /dev/stderr | sha256sum",
            ]),
            vec![],
            None,
        )
        .await
        .unwrap();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let code = loop {
        match timeout(T, stream.next_event()).await.unwrap().unwrap() {
            Some(ExecEvent::Stdout(b)) => {
                assert!(b.len() <= MAX_CHUNK_BYTES);
                stdout.extend_from_slice(&b);
            }
            Some(ExecEvent::Stderr(b)) => {
                assert!(b.len() <= MAX_CHUNK_BYTES);
                stderr.extend_from_slice(&b);
            }
            Some(ExecEvent::Exit(code)) => break code,
            None => panic!("stream ended without Exit"),
        }
    };
    assert_eq!(code, 0);
    assert_eq!(stderr.len(), N);
    // The agent's copy and ours hash the same.
    let ours = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&stderr)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stdout).split_whitespace().next(),
        String::from_utf8_lossy(&ours.stdout)
            .split_whitespace()
            .next()
    );

    let out = run(&client, &["head", "-c", "5000000", "/dev/zero"])
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), N);
    assert!(out.stdout.iter().all(|&b| b == 0));
    assert_eq!(out.code, 0);
}

#[tokio::test]
async fn garbage_and_torn_frames_are_ignored() {
    let (_agent, stream) = start_raw().await;
    let (r, mut w) = stream.into_split();
    w.write_all(
        b"garbage\n\
          \"id\":3,\"type\":\"pi\n\
          {\"id\":4,\"type\":\"no_such_request\"}\n\
          \n\
          {\"id\":5,\"type\":\"exec\",\"argv\":\"not a list\"}\n",
    )
    .await
    .unwrap();
    // A line over the frame limit is dropped too, without being buffered.
    let big = vec![b'x'; banger_agent_proto::MAX_FRAME_BYTES + 10];
    w.write_all(&big).await.unwrap();
    w.write_all(b"\n").await.unwrap();

    // Whole frames the agent does not understand get an Error; the noise
    // gets nothing.
    let mut r = BufReader::new(r);
    for want in [4, 5] {
        let mut line = String::new();
        timeout(T, r.read_line(&mut line)).await.unwrap().unwrap();
        let frame: GuestFrame = decode(line.as_bytes()).unwrap();
        assert_eq!(frame.id, want);
        assert!(matches!(frame.event, Event::Error { .. }), "{line}");
    }
    assert!(r.buffer().is_empty());

    // The head of a frame, never finished (a host that died mid-write): the
    // next client starts on a fresh line, so only this torn line is lost.
    w.write_all(b"{\"id\":6,\"type\":\"ex").await.unwrap();
    let client = AgentClient::from_split(r.into_inner(), w);
    let pong = client.ping(T).await.unwrap();
    assert!(!pong.boot_id.is_empty());
    let out = run(&client, &["echo", "still fine"]).await.unwrap();
    assert_eq!(out.stdout, b"still fine\n");
}

/// The real agent, under `--no-identity` so this host stays as it is:
/// invalid identities are refused by field, a valid one is checked and
/// then refused, and Pong has no instance id.
#[tokio::test]
async fn reidentify_checks_the_identity_over_the_wire() {
    let (_agent, client) = start().await;
    let agent_error = |err: ClientError| match err {
        ClientError::Agent { request, message } => {
            assert_eq!(request, "reidentify");
            message
        }
        other => panic!("expected an Agent error, got {other}"),
    };
    let mut bad = banger_agent_proto::testkit::valid_identity();
    bad.mac = "01:00:5e:00:00:01".into();
    let message = agent_error(client.reidentify(&bad, T).await.unwrap_err());
    assert!(message.starts_with("invalid identity: mac"), "{message}");
    assert!(message.contains("multicast"), "{message}");
    let mut bad = banger_agent_proto::testkit::valid_identity();
    bad.ssh_host_key_pub = "ssh-ed25519 AAAA\nssh-ed25519 BBBB".into();
    let message = agent_error(client.reidentify(&bad, T).await.unwrap_err());
    assert!(message.contains("ssh_host_key_pub"), "{message}");

    let message = agent_error(
        client
            .reidentify(&banger_agent_proto::testkit::valid_identity(), T)
            .await
            .unwrap_err(),
    );
    assert!(message.contains("--no-identity"), "{message}");
    assert_eq!(client.ping(T).await.unwrap().instance_id, None);
}

#[tokio::test]
async fn sync_and_poweroff_answer_ok() {
    let (_agent, client) = start().await;
    client.sync(T).await.unwrap();
    // --dry-poweroff: the reply path only.
    client.poweroff(T).await.unwrap();
    client.ping(T).await.unwrap();
}

#[tokio::test]
async fn the_agent_dying_fails_pending_requests() {
    let (mut agent, client) = start().await;
    let mut stream = client
        .exec(argv(&["sh", "-c", "echo started; sleep 30"]), vec![], None)
        .await
        .unwrap();
    assert_eq!(
        timeout(T, stream.next_event()).await.unwrap().unwrap(),
        Some(ExecEvent::Stdout(b"started\n".to_vec()))
    );
    agent.child.start_kill().unwrap();
    let err = timeout(T, stream.next_event()).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    assert!(client.is_closed());
    let err = client.ping(T).await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
}

#[tokio::test]
async fn the_agent_exits_when_its_socket_closes() {
    let (mut agent, client) = start().await;
    client.ping(T).await.unwrap();
    drop(client);
    let status = timeout(T, agent.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}

/// Listener mode (what the agent does on vsock under Firecracker): every
/// connection is its own session, and sessions run side by side.
#[tokio::test]
async fn listen_mode_serves_concurrent_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("listen.sock");
    let _child = spawn_agent("--listen", &sock);
    let deadline = Instant::now() + T;
    let (first, pong) = banger_agent_proto::client::wait_ready(&sock, deadline)
        .await
        .expect("first session");
    assert!(!pong.agent_version.is_empty());
    let second = AgentClient::connect_unix(&sock)
        .await
        .expect("second session");
    // A long command in the first session does not hold up the second.
    let slow = first
        .exec(argv(&["sleep", "2"]), vec![], None)
        .await
        .unwrap();
    let out = run(&second, &["sh", "-c", "echo hi; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.code, 3);
    assert_eq!(out.stdout, b"hi\n");
    let slow = timeout(T, slow.collect()).await.unwrap().unwrap();
    assert_eq!(slow.code, 0);
    // A session that ends leaves the listener serving new ones.
    drop(first);
    let third = AgentClient::connect_unix(&sock).await.unwrap();
    third.ping(T).await.unwrap();
}
