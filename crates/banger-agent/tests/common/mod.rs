//! The harness both agent test files share: the real agent binary on a
//! fresh Unix socket.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

pub const T: Duration = Duration::from_secs(30);

/// A running agent; it is killed when this is dropped.
pub struct Agent {
    // Each test file is its own crate; not every one looks at the child.
    #[allow(dead_code)]
    pub child: Child,
    _dir: tempfile::TempDir,
}

/// Runs the agent binary serving `sock` in `mode` (`--channel` or
/// `--listen`), without touching this host's identity or power.
pub fn spawn_agent(mode: &str, sock: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .arg(mode)
        .arg(sock)
        .args(["--no-identity", "--dry-poweroff"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Starts the agent on a fresh socket; returns it and the raw connection.
pub async fn start_raw() -> (Agent, UnixStream) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let child = spawn_agent("--channel", &sock);
    let (stream, _) = timeout(T, listener.accept())
        .await
        .expect("the agent connects")
        .unwrap();
    (Agent { child, _dir: dir }, stream)
}
