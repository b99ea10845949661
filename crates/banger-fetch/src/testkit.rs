//! Test helpers for code that downloads through this crate: a loopback
//! HTTP/1.1 server whose replies are raw bytes (so a test can make it lie
//! about `Content-Length`, send too much, or stall), and temp-dir helpers.
//!
//! Built for this crate's own tests and, behind the `testkit` feature, for
//! other crates' (`banger-fetch = { workspace = true, features = ["testkit"] }`
//! under `[dev-dependencies]`). Not for production code: it panics freely.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the loopback server does for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Write these bytes (head and body) and close.
    Raw(Vec<u8>),
    /// Write these bytes, then hold the connection open without sending more.
    Hang(Vec<u8>),
}

/// `200 OK` with a true `Content-Length`.
pub fn ok_with_length(body: &[u8]) -> Reply {
    lying_length(body.len(), body)
}

/// A response whose `Content-Length` says `claimed` but whose body is `body`.
pub fn lying_length(claimed: usize, body: &[u8]) -> Reply {
    let mut r =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

/// An empty response with status `code`; `extra` is more header lines, each
/// ending in `\r\n` (e.g. `"Location: /x\r\n"`).
pub fn status(code: u16, extra: &str) -> Reply {
    Reply::Raw(
        format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n")
            .into_bytes(),
    )
}

/// `200 OK` with no length: the body ends when the connection closes.
pub fn close_delimited(body: &[u8]) -> Reply {
    let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
    r.extend_from_slice(body);
    Reply::Raw(r)
}

/// `200 OK`, chunked: `chunk` sent `count` times.
pub fn chunked(chunk: &[u8], count: usize) -> Reply {
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..count {
        r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        r.extend_from_slice(chunk);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    Reply::Raw(r)
}

/// A tiny HTTP/1.1 responder on 127.0.0.1:0; returns its base URL
/// (`http://127.0.0.1:PORT`). `handler` gets each request's target (path and
/// query, as sent) and says what to answer. A TLS ClientHello is answered
/// with a plain-text 400, so an `https://` URL to it fails the handshake.
pub async fn serve(handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                    if req[0] == 0x16 {
                        // A TLS ClientHello: answer in plain text and close.
                        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        let _ = conn.shutdown().await;
                        return;
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let target = line.split(' ').nth(1).unwrap_or("/").to_string();
                match handler(&target) {
                    Reply::Raw(bytes) => {
                        let _ = conn.write_all(&bytes).await;
                        let _ = conn.shutdown().await;
                    }
                    Reply::Hang(bytes) => {
                        let _ = conn.write_all(&bytes).await;
                        tokio::time::sleep(Duration::from_secs(120)).await;
                    }
                }
            });
        }
    });
    base
}

/// A destination dir holding one unrelated file, `keep.txt`, so a test can
/// see that a failure left the dir as it was.
pub fn dest() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("keep.txt"), b"keep").unwrap();
    d
}

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
