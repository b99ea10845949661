//! The host side of Firecracker's hybrid vsock.
//!
//! Firecracker exposes the guest's vsock as a Unix socket (`uds_path` of
//! `PUT /vsock`). To reach a guest port, the host connects to it, writes
//! `CONNECT <port>\n`, and reads back `OK <host port>\n`; from then on the
//! stream is the guest connection. If nothing in the guest listens on the
//! port, Firecracker closes the connection instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// `OK ` plus a u32 plus `\n` fits easily; anything longer is not Firecracker.
const MAX_REPLY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the vsock socket {}: {source}", .uds.display())]
    Connect {
        uds: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock port {port} via {}: {source}", .uds.display())]
    Io {
        uds: PathBuf,
        port: u32,
        #[source]
        source: std::io::Error,
    },
    /// Firecracker (or whatever listens there) did not accept the port:
    /// typically nothing in the guest listens on it yet.
    #[error("vsock port {port} via {} refused: got {reply:?} instead of \"OK <port>\"", .uds.display())]
    Refused {
        uds: PathBuf,
        port: u32,
        /// What came back before the newline or EOF (possibly nothing).
        reply: String,
    },
    #[error("vsock port {port} via {}: no answer within {timeout:?}", .uds.display())]
    Timeout {
        uds: PathBuf,
        port: u32,
        timeout: Duration,
    },
}

/// Connects to guest vsock `port` through Firecracker's socket `uds`. The
/// returned stream starts right after the `OK` line: the reply is read one
/// byte at a time so not a byte of what the guest sends is swallowed.
pub async fn connect_hybrid(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    match tokio::time::timeout(timeout, handshake(uds, port)).await {
        Ok(r) => r,
        Err(_) => Err(VsockError::Timeout {
            uds: uds.to_path_buf(),
            port,
            timeout,
        }),
    }
}

async fn handshake(uds: &Path, port: u32) -> Result<UnixStream, VsockError> {
    let mut stream = UnixStream::connect(uds)
        .await
        .map_err(|source| VsockError::Connect {
            uds: uds.to_path_buf(),
            source,
        })?;
    let io = |source| VsockError::Io {
        uds: uds.to_path_buf(),
        port,
        source,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let complete = loop {
        let mut byte = [0u8; 1];
        // EOF (and a reset, which is how a refusal can arrive) ends the reply.
        match stream.read(&mut byte).await {
            Ok(0) => break false,
            Ok(_) if byte[0] == b'\n' => break true,
            Ok(_) if reply.len() < MAX_REPLY => reply.push(byte[0]),
            Ok(_) => break false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break false,
            Err(e) => return Err(io(e)),
        }
    };
    let text = String::from_utf8_lossy(&reply).into_owned();
    let accepted = complete
        && text
            .strip_prefix("OK ")
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !accepted {
        return Err(VsockError::Refused {
            uds: uds.to_path_buf(),
            port,
            reply: text,
        });
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    /// A server that behaves like Firecracker's documented hybrid vsock:
    /// reads `CONNECT <port>\n`, answers with `reply` and then echoes. The
    /// answer and the first guest bytes go out in one write, so a client
    /// that reads past the newline would lose them.
    fn serve(listener: UnixListener, reply: &'static [u8], then_echo: bool) {
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONNECT 52\n");
                    stream.get_mut().write_all(reply).await.unwrap();
                    if !then_echo {
                        return; // dropping the stream closes it
                    }
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        stream.get_mut().write_all(&buf[..n]).await.unwrap();
                    }
                });
            }
        });
    }

    fn listener() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        (dir, path, l)
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn connects_and_keeps_what_follows_the_ok_line() {
        let (_dir, path, l) = listener();
        serve(l, b"OK 1073741824\nhello from the guest\n", true);
        let mut s = connect_hybrid(&path, 52, T).await.unwrap();
        let mut first = vec![0u8; "hello from the guest\n".len()];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(first, b"hello from the guest\n");
        s.write_all(b"ping\n").await.unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping\n");
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_refusal_naming_the_port() {
        let (_dir, path, l) = listener();
        serve(l, b"", false);
        let err = connect_hybrid(&path, 52, T).await.unwrap_err();
        assert!(matches!(&err, VsockError::Refused { port: 52, reply, .. } if reply.is_empty()));
        assert!(err.to_string().contains("port 52"), "{err}");
    }

    #[tokio::test]
    async fn anything_but_ok_is_a_refusal() {
        for reply in [&b"NOPE\n"[..], b"OK\n", b"OK abc\n", b"OK 1073741824"] {
            let (_dir, path, l) = listener();
            serve(l, reply, false);
            let err = connect_hybrid(&path, 52, T).await.unwrap_err();
            let want = String::from_utf8_lossy(reply).trim_end().to_string();
            assert!(
                matches!(&err, VsockError::Refused { reply, .. } if *reply == want),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn times_out_and_fails_to_connect() {
        let (_dir, path, _l) = listener(); // bound, never accepted or answered
        let err = connect_hybrid(&path, 52, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, VsockError::Timeout { port: 52, .. }), "{err}");

        let missing = path.with_file_name("missing.sock");
        let err = connect_hybrid(&missing, 52, T).await.unwrap_err();
        assert!(matches!(err, VsockError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }
}
