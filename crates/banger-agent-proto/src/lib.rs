//! The banger agent protocol.
//!
//! One byte stream connects the host to the guest agent: a virtio-serial
//! port under QEMU, a vsock connection under Firecracker. Each direction
//! carries newline-delimited JSON frames. Every frame has an `id`: the host
//! picks a fresh id per request, and every event the agent sends back for
//! that request carries the same id, so many requests (several execs, a
//! ping) share one stream at once.
//!
//! Why lines and not length prefixes: a virtio-serial port outlives host
//! connections. When the daemon reconnects, the guest may still be writing
//! the tail of an earlier frame; a line protocol resynchronises at the next
//! newline (a partial line fails to parse and is dropped), where a length
//! prefix would desynchronise the stream for good.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
pub mod client;

/// Name of the virtio-serial port the agent listens on (QEMU backend).
pub const VIRTIO_PORT_NAME: &str = "banger.agent";
/// vsock port the agent listens on (Firecracker backend).
pub const VSOCK_PORT: u32 = 10700;
/// Longest frame either side accepts, in bytes (a line, before the newline).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Largest payload the agent puts in one stdout/stderr event.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFrame {
    pub id: u64,
    #[serde(flatten)]
    pub req: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`Event::Pong`]; the readiness probe.
    Ping,
    /// Run a command; answered with Stdout/Stderr events then one Exit (or Error).
    Exec {
        argv: Vec<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
        #[serde(default)]
        cwd: Option<String>,
    },
    /// Flush every filesystem to its disk; answered with Ok once sync(2) returned.
    Sync,
    /// Sync, then power the guest off; answered with Ok before powering off.
    Poweroff,
}

/// An event from the guest, answering the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFrame {
    pub id: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Pong {
        /// /proc/sys/kernel/random/boot_id: changes on every boot.
        boot_id: String,
        hostname: String,
        agent_version: String,
    },
    /// Base64 of bytes the command wrote to stdout.
    Stdout { data: String },
    /// Base64 of bytes the command wrote to stderr.
    Stderr { data: String },
    /// The command ended: its exit code, or 128+N when killed by signal N.
    Exit { code: i32 },
    /// The request succeeded (Sync, Poweroff).
    Ok,
    /// The request failed; the message says why.
    Error { message: String },
}

impl Event {
    pub fn stdout(bytes: &[u8]) -> Event {
        Event::Stdout {
            data: b64().encode(bytes),
        }
    }

    pub fn stderr(bytes: &[u8]) -> Event {
        Event::Stderr {
            data: b64().encode(bytes),
        }
    }

    /// True for events after which no more events come for that id.
    pub fn is_final(&self) -> bool {
        !matches!(self, Event::Stdout { .. } | Event::Stderr { .. })
    }
}

/// Decodes the base64 payload of a Stdout/Stderr event.
pub fn decode_data(data: &str) -> Result<Vec<u8>, ProtoError> {
    b64()
        .decode(data)
        .map_err(|e| ProtoError::BadData(e.to_string()))
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("bad base64 payload: {0}")]
    BadData(String),
}

/// Serialises a frame as one line, newline included.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("frames always serialise");
    line.push(b'\n');
    line
}

/// Parses one line (with or without its trailing newline).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ProtoError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::TooLong(line.len()));
    }
    Ok(serde_json::from_slice(line)?)
}

/// One complete line handed out by [`LineSplitter::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line without its newline; never empty, at most [`MAX_FRAME_BYTES`].
    Frame(&'a [u8]),
    /// A line longer than [`MAX_FRAME_BYTES`] was dropped; its length.
    TooLong(usize),
}

/// Cuts a byte stream into newline-terminated lines, both sides' reader.
///
/// Bytes go in as they arrive ([`push`](Self::push)); whole lines come out.
/// A line longer than [`MAX_FRAME_BYTES`] is never buffered: its bytes are
/// counted and dropped up to the next newline, and it comes out as
/// [`Line::TooLong`]. Empty lines are skipped silently (a writer that was
/// interrupted mid-frame terminates the torn line with a bare newline).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes dropped so far of an overlong line; `None` when not discarding.
    discarding: Option<usize>,
}

impl LineSplitter {
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Feeds bytes; calls `on_line` for every line they complete.
    pub fn push(&mut self, data: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let head = &rest[..pos];
            rest = &rest[pos + 1..];
            if let Some(dropped) = self.discarding.take() {
                on_line(Line::TooLong(dropped + head.len()));
            } else if self.buf.is_empty() {
                // Fast path: the whole line lies in `data`, no copy.
                if head.len() > MAX_FRAME_BYTES {
                    on_line(Line::TooLong(head.len()));
                } else if !head.is_empty() {
                    on_line(Line::Frame(head));
                }
            } else {
                let len = self.buf.len() + head.len();
                if len > MAX_FRAME_BYTES {
                    on_line(Line::TooLong(len));
                } else {
                    self.buf.extend_from_slice(head);
                    on_line(Line::Frame(&self.buf));
                }
                self.buf.clear();
            }
        }
        if rest.is_empty() {
            return;
        }
        match &mut self.discarding {
            Some(dropped) => *dropped += rest.len(),
            None if self.buf.len() + rest.len() > MAX_FRAME_BYTES => {
                self.discarding = Some(self.buf.len() + rest.len());
                self.buf = Vec::new();
            }
            None => self.buf.extend_from_slice(rest),
        }
    }

    /// Forgets a partial line, e.g. when the peer on the other end changed.
    /// Returns how many bytes were dropped.
    pub fn reset(&mut self) -> usize {
        let dropped = self.buf.len() + self.discarding.take().unwrap_or(0);
        self.buf = Vec::new();
        dropped
    }

    /// Bytes of the current, unfinished line.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.discarding.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_flat_tagged_lines() {
        let f = HostFrame {
            id: 7,
            req: Request::Exec {
                argv: vec!["sh".into(), "-c".into(), "exit 42".into()],
                env: vec![],
                cwd: None,
            },
        };
        let line = encode(&f);
        assert!(line.ends_with(b"\n"));
        let s = std::str::from_utf8(&line).unwrap();
        assert!(
            s.starts_with(r#"{"id":7,"type":"exec","argv":["sh","-c","exit 42"]"#),
            "{s}"
        );
        assert_eq!(decode::<HostFrame>(&line).unwrap(), f);

        let g = GuestFrame {
            id: 7,
            event: Event::Exit { code: 42 },
        };
        assert_eq!(
            std::str::from_utf8(&encode(&g)).unwrap(),
            "{\"id\":7,\"type\":\"exit\",\"code\":42}\n"
        );
    }

    #[test]
    fn partial_lines_fail_to_parse_and_resync() {
        // The tail of a frame left over from an earlier connection.
        assert!(decode::<GuestFrame>(b"e\":42}\n").is_err());
        assert!(decode::<GuestFrame>(b"{\"id\":1,\"type\":\"ok\"}\n").is_ok());
    }

    #[test]
    fn payloads_round_trip() {
        let ev = Event::stderr(b"err\n\x00\xff");
        match ev {
            Event::Stderr { ref data } => assert_eq!(decode_data(data).unwrap(), b"err\n\x00\xff"),
            _ => unreachable!(),
        }
        assert!(!ev.is_final());
        assert!(Event::Ok.is_final());
    }

    fn lines(splitter: &mut LineSplitter, data: &[u8]) -> Vec<Result<Vec<u8>, usize>> {
        let mut out = Vec::new();
        splitter.push(data, |line| match line {
            Line::Frame(b) => out.push(Ok(b.to_vec())),
            Line::TooLong(n) => out.push(Err(n)),
        });
        out
    }

    #[test]
    fn splitter_joins_pieces_and_skips_empty_lines() {
        let mut s = LineSplitter::new();
        assert!(lines(&mut s, b"ab").is_empty());
        assert_eq!(s.pending(), 2);
        assert_eq!(
            lines(&mut s, b"c\n\nd\ne"),
            vec![Ok(b"abc".to_vec()), Ok(b"d".to_vec())]
        );
        assert_eq!(s.reset(), 1);
        assert_eq!(lines(&mut s, b"f\n"), vec![Ok(b"f".to_vec())]);
    }

    #[test]
    fn splitter_drops_overlong_lines_and_resyncs() {
        let mut s = LineSplitter::new();
        let big = vec![b'x'; MAX_FRAME_BYTES];
        assert!(lines(&mut s, &big).is_empty());
        assert!(lines(&mut s, b"yy").is_empty());
        assert_eq!(s.pending(), MAX_FRAME_BYTES + 2);
        assert_eq!(
            lines(&mut s, b"z\nok\n"),
            vec![Err(MAX_FRAME_BYTES + 3), Ok(b"ok".to_vec())]
        );
        // Exactly the limit is fine, one more is not, even within one push.
        let mut exact = big.clone();
        exact.push(b'\n');
        assert_eq!(lines(&mut s, &exact), vec![Ok(big.clone())]);
        let mut over = big;
        over.extend_from_slice(b"x\n");
        assert_eq!(lines(&mut s, &over), vec![Err(MAX_FRAME_BYTES + 1)]);
    }
}
