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
//!
//! # Raw chunks (host to guest only)
//!
//! Uploads ([`Request::TarIn`]) carry bulk data, a whole source tree. Base64
//! inside JSON would cost a third more bytes and, worse, encoding and
//! decoding every byte on a guest CPU that may be emulated (QEMU TCG runs
//! 10-30x slower than native). So the bulk data travels raw: a
//! [`Request::Chunk`] header line
//!
//! ```text
//! {"id":N,"type":"chunk","len":L}\n<exactly L raw bytes>
//! ```
//!
//! is followed on the wire by exactly `L` payload bytes (any bytes,
//! newlines included; `L` at most [`MAX_CHUNK_IN_BYTES`]), after which line
//! mode resumes. The reader learns the length from the header it just
//! parsed ([`LineSplitter::push_with_raw`], [`HostDecoder`]), so the payload
//! is never scanned for newlines nor parsed. The writer sends header and
//! payload as one unit, so no other frame can land in between.
//!
//! An upload is `TarIn` (its id names the upload), then any number of
//! `Chunk`s with that id, then `End` (answered with [`Event::Extracted`] or
//! [`Event::Error`]) or `Cancel` (answered with an Error). Chunks whose id is
//! no open upload are read and dropped, so the stream stays in step. A
//! failing upload is answered with its Error at once, without waiting for
//! End; the host should stop sending then (the rest would be dropped).
//!
//! Backpressure: the agent hands chunks to the extracting thread through a
//! queue a few chunks deep and stops reading the stream while it is full,
//! so a slow guest disk slows the host down instead of filling guest
//! memory. The price: other requests on the same stream (a ping) may wait
//! until the upload catches up or ends.
//!
//! Resynchronising around raw chunks: when the host side of a virtio-serial
//! port goes away mid-chunk, the agent sees end-of-file and
//! [`reset`](HostDecoder::reset)s its decoder, which forgets the rest of the
//! chunk; the next host's bytes are read as lines again (its first frame
//! starts on a fresh line). The agent also aborts every upload still open,
//! so a half-sent archive is never taken for a whole one. One hole remains:
//! if a host disconnects mid-chunk and the next one connects before the
//! agent reads again, the agent never sees the end-of-file, and up to the
//! rest of that chunk (at most 1 MiB) of the new host's frames are eaten as
//! payload; those requests go unanswered (they time out) until the decoder
//! is back in line mode. (Under Firecracker every vsock connection is a
//! session of its own, so nothing carries over from one host to the next.)
//!
//! The guest never sends raw chunks: its replies stay JSON lines.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
pub mod client;
pub mod procfs;

/// Name of the virtio-serial port the agent listens on (QEMU backend).
pub const VIRTIO_PORT_NAME: &str = "banger.agent";
/// vsock port the agent listens on (Firecracker backend).
pub const VSOCK_PORT: u32 = 10700;
/// Longest frame either side accepts, in bytes (a line, before the newline).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Largest payload the agent puts in one stdout/stderr event.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Largest raw payload of one [`Request::Chunk`] (host to guest).
pub const MAX_CHUNK_IN_BYTES: usize = 1024 * 1024;

/// In [`Event::Pong`]'s `features`: the agent takes [`Request::Reidentify`]
/// (warm starts; a snapshot of a guest whose agent lacks it is useless).
pub const FEATURE_REIDENTIFY: &str = "reidentify";

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFrame {
    pub id: u64,
    #[serde(flatten)]
    pub req: Request,
}

// Reidentify carries a whole identity inline (a few hundred bytes) where the
// other variants are small: a Request lives for one frame, so the size does
// not matter, and an unboxed field keeps the variant as simple to build and
// match as the rest.
#[allow(clippy::large_enum_variant)]
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
    /// Opens an upload, named by this frame's id: a tar archive, sent in
    /// [`Chunk`](Request::Chunk)s, to unpack into the guest directory `dest`
    /// (absolute, normalised, not `/`; created if missing). `clear` empties
    /// `dest` first. Answered, once [`End`](Request::End) came, with
    /// [`Event::Extracted`]; or with an Error as soon as it fails (the
    /// remaining chunks are then read and dropped).
    TarIn {
        dest: String,
        #[serde(default)]
        clear: bool,
    },
    /// The next `len` bytes on the wire, right after this header's newline,
    /// are raw archive bytes for the upload with this id (see the module
    /// docs). `len` is at most [`MAX_CHUNK_IN_BYTES`]. Not answered.
    Chunk { len: u64 },
    /// No more chunks for the upload with this id.
    End,
    /// Abandons the upload with this id; answered with an Error ("upload
    /// canceled") unless the upload already sent its final answer.
    Cancel,
    /// Lists the guest's listening TCP sockets and unconnected UDP sockets;
    /// answered with [`Event::Ports`].
    Ports,
    /// The guest's CPUs, memory, load, uptime and the filesystems at `/`
    /// and `/root`; answered with [`Event::Stats`].
    Stats,
    /// Gives a VM restored from a memory snapshot (a warm start) its own
    /// identity: every clone of one snapshot wakes up with the template's
    /// MAC, address, hostname, clock, random state, machine-id and SSH host
    /// key, so the host sends this before any user command runs. The agent
    /// validates every field first (an invalid one changes nothing), then
    /// applies them in a fixed order and stops at the first step that
    /// fails. Answered with [`Event::Ok`], or [`Event::Error`] whose message
    /// names that step (e.g. "set mac on eth0: ..."). An agent from before
    /// this request answers with an Error ("unsupported request").
    Reidentify { identity: NewIdentity },
}

/// A restored VM's own identity (warm starts, [`Request::Reidentify`]).
/// Every field is validated by the agent.
///
/// `Debug` leaves out the secrets (`entropy`, `ssh_host_key`), so logging a
/// request does not leak the VM's host key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewIdentity {
    /// RFC 1123 label(s), dot separated, at most 64 bytes.
    pub hostname: String,
    /// `52:54:00:xx:xx:xx`: lowercase hex, unicast.
    pub mac: String,
    /// `A.B.C.D/PREFIX`.
    pub ip: String,
    /// `A.B.C.D`, inside the `ip` subnet.
    pub gateway: String,
    /// Name servers (`A.B.C.D`); empty leaves /etc/resolv.conf alone.
    #[serde(default)]
    pub dns: Vec<String>,
    /// The interface to configure; `None` means `eth0`.
    #[serde(default)]
    pub iface: Option<String>,
    /// The host's wall clock when sent, in nanoseconds since the Unix epoch:
    /// the restored guest's clock stands where the snapshot was taken.
    pub unix_time_ns: u64,
    /// Base64 (standard alphabet, padded) of 32 to 512 random bytes, mixed
    /// into the guest's pool and followed by a CRNG reseed, so clones stop
    /// sharing the template's random stream.
    pub entropy: String,
    /// 32 lowercase hex characters, not all zero (/etc/machine-id).
    pub machine_id: String,
    /// OpenSSH ed25519 private key text (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub ssh_host_key: String,
    /// Its public key, one line (`ssh-ed25519 AAAA... [comment]`).
    pub ssh_host_key_pub: String,
    /// Content for /root/.ssh/authorized_keys.
    pub authorized_keys: String,
    /// 1 to 64 characters of `[A-Za-z0-9-]`; reported back in
    /// [`Event::Pong`] from then on.
    pub instance_id: String,
}

impl std::fmt::Debug for NewIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewIdentity")
            .field("hostname", &self.hostname)
            .field("mac", &self.mac)
            .field("ip", &self.ip)
            .field("gateway", &self.gateway)
            .field("dns", &self.dns)
            .field("iface", &self.iface)
            .field("unix_time_ns", &self.unix_time_ns)
            .field(
                "entropy",
                &format_args!("<{} base64 chars>", self.entropy.len()),
            )
            .field("machine_id", &self.machine_id)
            .field("ssh_host_key", &format_args!("<redacted>"))
            .field("ssh_host_key_pub", &self.ssh_host_key_pub)
            .field("authorized_keys", &self.authorized_keys)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// An event from the guest, answering the request with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestFrame {
    pub id: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Pong {
        /// /proc/sys/kernel/random/boot_id: changes on every boot.
        boot_id: String,
        hostname: String,
        agent_version: String,
        /// The instance id of the last [`Request::Reidentify`] that succeeded
        /// in this guest since it booted (kept across agent restarts); `None`
        /// before any, and from agents that predate the field.
        #[serde(default)]
        instance_id: Option<String>,
        /// Requests this agent takes beyond the first protocol's (see
        /// [`FEATURE_REIDENTIFY`]): a host asks for a newer one only when
        /// it is listed. Empty from agents that predate the field.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// Base64 of bytes the command wrote to stdout.
    Stdout { data: String },
    /// Base64 of bytes the command wrote to stderr.
    Stderr { data: String },
    /// The command ended: its exit code, or 128+N when killed by signal N.
    Exit { code: i32 },
    /// The request succeeded (Sync, Poweroff, Reidentify).
    Ok,
    /// An upload ([`Request::TarIn`]) was unpacked: how many archive entries
    /// were extracted, and how many bytes of regular-file content written.
    Extracted { entries: u64, bytes: u64 },
    /// Answers [`Request::Ports`]: every listening socket, sorted by
    /// (proto, port, addr), without duplicates.
    Ports { ports: Vec<ListenPort> },
    /// Answers [`Request::Stats`].
    Stats { stats: GuestStats },
    /// The request failed; the message says why.
    Error { message: String },
}

/// The protocol family of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl PortProto {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Tcp6 => "tcp6",
            PortProto::Udp => "udp",
            PortProto::Udp6 => "udp6",
        }
    }
}

impl std::fmt::Display for PortProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One socket listening in the guest ([`Event::Ports`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenPort {
    pub proto: PortProto,
    /// The local address, as text (`0.0.0.0`, `::`, `127.0.0.1`, ...).
    pub addr: String,
    pub port: u16,
    /// The owning process's name (`comm`), when the agent found it.
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// What the guest says about itself ([`Event::Stats`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStats {
    /// CPUs online in the guest.
    pub cpus: u32,
    /// `MemTotal` of /proc/meminfo, in bytes.
    pub mem_total_bytes: u64,
    /// `MemAvailable` of /proc/meminfo, in bytes.
    pub mem_available_bytes: u64,
    /// /proc/loadavg: over 1, 5 and 15 minutes.
    pub load_avg: [f64; 3],
    /// /proc/uptime: seconds since boot.
    pub uptime_secs: f64,
    /// statvfs of `/` and `/root`, in that order; a path that cannot be
    /// read is left out.
    pub filesystems: Vec<FsStat>,
}

/// One filesystem's size, as statvfs(3) gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStat {
    /// The path asked about (`/`, `/root`).
    pub path: String,
    /// `f_blocks * f_frsize`.
    pub total_bytes: u64,
    /// `(f_blocks - f_bfree) * f_frsize`.
    pub used_bytes: u64,
    /// `f_bavail * f_frsize`: free for an unprivileged writer.
    pub available_bytes: u64,
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

/// One piece of input handed out by [`LineSplitter::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line without its newline; never empty, at most [`MAX_FRAME_BYTES`].
    Frame(&'a [u8]),
    /// A line longer than [`MAX_FRAME_BYTES`] was dropped; its length.
    TooLong(usize),
    /// Part of the raw payload announced after a frame (see
    /// [`LineSplitter::push_with_raw`]): the bytes, and how many payload
    /// bytes are still to come after them (0: this was the last piece).
    Raw { data: &'a [u8], remaining: u64 },
}

/// Cuts a byte stream into newline-terminated lines, both sides' reader.
///
/// Bytes go in as they arrive ([`push`](Self::push)); whole lines come out.
/// A line longer than [`MAX_FRAME_BYTES`] is never buffered: its bytes are
/// counted and dropped up to the next newline, and it comes out as
/// [`Line::TooLong`]. Empty lines are skipped silently (a writer that was
/// interrupted mid-frame terminates the torn line with a bare newline).
///
/// Raw mode: with [`push_with_raw`](Self::push_with_raw), the caller may
/// answer a frame with a byte count; that many bytes after the frame's
/// newline then come out as [`Line::Raw`] pieces, as they arrive (never
/// buffered, never scanned for newlines), and line mode resumes after them.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Bytes dropped so far of an overlong line; `None` when not discarding.
    discarding: Option<usize>,
    /// Raw payload bytes still expected before line mode resumes.
    raw_left: u64,
}

impl LineSplitter {
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Feeds bytes; calls `on_line` for every line they complete.
    pub fn push(&mut self, data: &[u8], mut on_line: impl FnMut(Line<'_>)) {
        self.push_with_raw(data, |line| {
            on_line(line);
            0
        });
    }

    /// Like [`push`](Self::push), but for every [`Line::Frame`] `on_line`
    /// returns how many raw bytes follow that frame on the wire (0: none).
    /// Those bytes come out as [`Line::Raw`] pieces; what `on_line` returns
    /// for other pieces is ignored.
    pub fn push_with_raw(&mut self, data: &[u8], mut on_line: impl FnMut(Line<'_>) -> u64) {
        let mut rest = data;
        while !rest.is_empty() {
            if self.raw_left > 0 {
                let n =
                    usize::try_from(self.raw_left).map_or(rest.len(), |left| left.min(rest.len()));
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                self.raw_left -= n as u64;
                on_line(Line::Raw {
                    data: piece,
                    remaining: self.raw_left,
                });
                continue;
            }
            let Some(pos) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            let head = &rest[..pos];
            rest = &rest[pos + 1..];
            if let Some(dropped) = self.discarding.take() {
                on_line(Line::TooLong(dropped + head.len()));
            } else if self.buf.is_empty() {
                // Fast path: the whole line lies in `data`, no copy.
                if head.len() > MAX_FRAME_BYTES {
                    on_line(Line::TooLong(head.len()));
                } else if !head.is_empty() {
                    self.raw_left = on_line(Line::Frame(head));
                }
            } else {
                let len = self.buf.len() + head.len();
                if len > MAX_FRAME_BYTES {
                    on_line(Line::TooLong(len));
                } else {
                    self.buf.extend_from_slice(head);
                    self.raw_left = on_line(Line::Frame(&self.buf));
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

    /// Forgets a partial line, and the rest of a raw payload being read,
    /// e.g. when the peer on the other end changed: the next byte is read
    /// as the start of a line. Returns how many bytes of a partial line were
    /// dropped.
    pub fn reset(&mut self) -> usize {
        let dropped = self.buf.len() + self.discarding.take().unwrap_or(0);
        self.buf = Vec::new();
        self.raw_left = 0;
        dropped
    }

    /// Bytes of the current, unfinished line.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.discarding.unwrap_or(0)
    }

    /// Raw payload bytes still expected before line mode resumes.
    pub fn raw_remaining(&self) -> u64 {
        self.raw_left
    }
}

/// One piece of host input handed out by [`HostDecoder::push`].
// Large only through Request::Reidentify; see there.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum HostInput<'a> {
    /// A whole request. After a [`Request::Chunk`] header, its payload comes
    /// as [`ChunkData`](HostInput::ChunkData) pieces (none when `len` is 0).
    Frame(HostFrame),
    /// Part of the payload of the last chunk header, whose id is `id`:
    /// `remaining` payload bytes are still to come after `data` (0: the
    /// chunk is complete). Every chunk's payload is handed out, even one
    /// larger than [`MAX_CHUNK_IN_BYTES`], so the stream stays in step.
    ChunkData {
        id: u64,
        data: &'a [u8],
        remaining: u64,
    },
    /// A whole line that is not a request this side understands.
    Invalid { line: &'a [u8], error: ProtoError },
    /// A line longer than [`MAX_FRAME_BYTES`] was dropped; its length.
    TooLong(usize),
}

/// The agent's reader: cuts the host's byte stream into requests, and
/// hands out the raw payload that follows each [`Request::Chunk`] header.
#[derive(Debug, Default)]
pub struct HostDecoder {
    lines: LineSplitter,
    /// Id of the chunk whose payload is being read.
    chunk_id: u64,
}

impl HostDecoder {
    pub fn new() -> HostDecoder {
        HostDecoder::default()
    }

    /// Feeds bytes as they arrive; calls `on_input` for every request and
    /// every piece of chunk payload they complete.
    pub fn push(&mut self, data: &[u8], mut on_input: impl FnMut(HostInput<'_>)) {
        let chunk_id = &mut self.chunk_id;
        self.lines.push_with_raw(data, |line| match line {
            Line::Frame(bytes) => match decode::<HostFrame>(bytes) {
                Ok(frame) => {
                    let raw = match frame.req {
                        Request::Chunk { len } => {
                            *chunk_id = frame.id;
                            len
                        }
                        _ => 0,
                    };
                    on_input(HostInput::Frame(frame));
                    raw
                }
                Err(error) => {
                    on_input(HostInput::Invalid { line: bytes, error });
                    0
                }
            },
            Line::TooLong(len) => {
                on_input(HostInput::TooLong(len));
                0
            }
            Line::Raw { data, remaining } => {
                on_input(HostInput::ChunkData {
                    id: *chunk_id,
                    data,
                    remaining,
                });
                0
            }
        });
    }

    /// Forgets a partial line and the rest of a chunk being read (the host
    /// went away); see [`LineSplitter::reset`].
    pub fn reset(&mut self) -> usize {
        self.lines.reset()
    }

    /// Raw chunk bytes still expected before line mode resumes.
    pub fn raw_remaining(&self) -> u64 {
        self.lines.raw_remaining()
    }
}

/// Fixtures for tests of this crate and of its users (feature `testkit`).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit {
    use super::NewIdentity;

    /// A one-line ed25519 public key and a private key block in OpenSSH's
    /// framing: the shapes the agent checks (not a usable key pair).
    pub const PRIVATE_KEY: &str =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";

    /// An identity the agent accepts: every field valid.
    pub fn valid_identity() -> NewIdentity {
        NewIdentity {
            hostname: "web-2".into(),
            mac: "52:54:00:1e:00:07".into(),
            ip: "172.30.0.7/24".into(),
            gateway: "172.30.0.1".into(),
            dns: vec!["172.30.0.1".into()],
            iface: None,
            unix_time_ns: 1_700_000_000_123_456_789,
            // 64 bytes of 7.
            entropy: "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw==".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            ssh_host_key: PRIVATE_KEY.into(),
            ssh_host_key_pub: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 web-2".into(),
            authorized_keys: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 banger".into(),
            instance_id: "vm-7".into(),
        }
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
    fn ports_frames_are_flat_tagged_lines() {
        let req = encode(&HostFrame {
            id: 5,
            req: Request::Ports,
        });
        assert_eq!(req, b"{\"id\":5,\"type\":\"ports\"}\n");
        assert_eq!(decode::<HostFrame>(&req).unwrap().req, Request::Ports);

        let g = GuestFrame {
            id: 5,
            event: Event::Ports {
                ports: vec![
                    ListenPort {
                        proto: PortProto::Tcp,
                        addr: "0.0.0.0".into(),
                        port: 22,
                        process: Some("sshd".into()),
                        pid: Some(310),
                    },
                    ListenPort {
                        proto: PortProto::Udp6,
                        addr: "::".into(),
                        port: 5353,
                        process: None,
                        pid: None,
                    },
                ],
            },
        };
        let line = encode(&g);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            concat!(
                r#"{"id":5,"type":"ports","ports":["#,
                r#"{"proto":"tcp","addr":"0.0.0.0","port":22,"process":"sshd","pid":310},"#,
                r#"{"proto":"udp6","addr":"::","port":5353,"process":null,"pid":null}]}"#,
                "\n"
            )
        );
        assert_eq!(decode::<GuestFrame>(&line).unwrap(), g);
        assert!(g.event.is_final());
        // Process and pid may be left out.
        let bare: GuestFrame =
            decode(br#"{"id":1,"type":"ports","ports":[{"proto":"tcp6","addr":"::1","port":80}]}"#)
                .unwrap();
        assert_eq!(
            bare.event,
            Event::Ports {
                ports: vec![ListenPort {
                    proto: PortProto::Tcp6,
                    addr: "::1".into(),
                    port: 80,
                    process: None,
                    pid: None,
                }]
            }
        );
    }

    #[test]
    fn stats_frames_are_flat_tagged_lines() {
        let req = encode(&HostFrame {
            id: 6,
            req: Request::Stats,
        });
        assert_eq!(req, b"{\"id\":6,\"type\":\"stats\"}\n");
        assert_eq!(decode::<HostFrame>(&req).unwrap().req, Request::Stats);
        let g = GuestFrame {
            id: 6,
            event: Event::Stats {
                stats: GuestStats {
                    cpus: 4,
                    mem_total_bytes: 1 << 30,
                    mem_available_bytes: 1 << 29,
                    load_avg: [0.5, 0.25, 0.0],
                    uptime_secs: 12.5,
                    filesystems: vec![FsStat {
                        path: "/".into(),
                        total_bytes: 100,
                        used_bytes: 40,
                        available_bytes: 60,
                    }],
                },
            },
        };
        let line = encode(&g);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            concat!(
                r#"{"id":6,"type":"stats","stats":{"cpus":4,"mem_total_bytes":1073741824,"#,
                r#""mem_available_bytes":536870912,"load_avg":[0.5,0.25,0.0],"uptime_secs":12.5,"#,
                r#""filesystems":[{"path":"/","total_bytes":100,"used_bytes":40,"available_bytes":60}]}}"#,
                "\n"
            )
        );
        assert_eq!(decode::<GuestFrame>(&line).unwrap(), g);
        assert!(g.event.is_final());
        // An agent from before this request says so with an Error: parsing
        // the request fails on its side, nothing else breaks.
    }

    #[test]
    fn reidentify_frames_are_flat_tagged_lines() {
        let mut identity = crate::testkit::valid_identity();
        identity.entropy = "AAECAw==".into();
        identity.ssh_host_key =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n".into();
        identity.ssh_host_key_pub = "ssh-ed25519 AAAAC3Nz web-2".into();
        identity.authorized_keys = "ssh-ed25519 AAAAC3Nz banger\n".into();
        let f = HostFrame {
            id: 11,
            req: Request::Reidentify { identity },
        };
        let line = encode(&f);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            concat!(
                r#"{"id":11,"type":"reidentify","identity":{"hostname":"web-2","#,
                r#""mac":"52:54:00:1e:00:07","ip":"172.30.0.7/24","gateway":"172.30.0.1","#,
                r#""dns":["172.30.0.1"],"iface":null,"unix_time_ns":1700000000123456789,"#,
                r#""entropy":"AAECAw==","machine_id":"0123456789abcdef0123456789abcdef","#,
                r#""ssh_host_key":"-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----\n","#,
                r#""ssh_host_key_pub":"ssh-ed25519 AAAAC3Nz web-2","#,
                r#""authorized_keys":"ssh-ed25519 AAAAC3Nz banger\n","instance_id":"vm-7"}}"#,
                "\n"
            )
        );
        assert_eq!(decode::<HostFrame>(&line).unwrap(), f);

        // dns and iface may be left out.
        let short: HostFrame = decode(
            concat!(
                r#"{"id":1,"type":"reidentify","identity":{"hostname":"a","mac":"52:54:00:00:00:01","#,
                r#""ip":"10.0.0.2/24","gateway":"10.0.0.1","unix_time_ns":1,"entropy":"","#,
                r#""machine_id":"","ssh_host_key":"","ssh_host_key_pub":"","authorized_keys":"","#,
                r#""instance_id":"i"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let Request::Reidentify { identity } = short.req else {
            panic!("expected Reidentify: {short:?}");
        };
        assert!(identity.dns.is_empty());
        assert_eq!(identity.iface, None);
        assert_eq!(identity.hostname, "a");
    }

    #[test]
    fn identity_debug_hides_the_secrets() {
        let shown = format!("{:?}", crate::testkit::valid_identity());
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("AAECAw=="), "{shown}");
        assert!(shown.contains("52:54:00:1e:00:07"), "{shown}");
    }

    #[test]
    fn pong_carries_the_instance_id_and_old_pongs_decode() {
        let old: GuestFrame = decode(
            br#"{"id":2,"type":"pong","boot_id":"b","hostname":"h","agent_version":"0.1.0"}"#,
        )
        .unwrap();
        assert_eq!(
            old.event,
            Event::Pong {
                boot_id: "b".into(),
                hostname: "h".into(),
                agent_version: "0.1.0".into(),
                instance_id: None,
                features: Vec::new(),
            }
        );
        let g = GuestFrame {
            id: 2,
            event: Event::Pong {
                boot_id: "b".into(),
                hostname: "h".into(),
                agent_version: "0.1.0".into(),
                instance_id: Some("vm-7".into()),
                features: vec![FEATURE_REIDENTIFY.into()],
            },
        };
        let line = encode(&g);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"id\":2,\"type\":\"pong\",\"boot_id\":\"b\",\"hostname\":\"h\",\"agent_version\":\"0.1.0\",\"instance_id\":\"vm-7\",\"features\":[\"reidentify\"]}\n"
        );
        assert_eq!(decode::<GuestFrame>(&line).unwrap(), g);
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
            Line::Raw { .. } => unreachable!("push never goes raw"),
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

    #[test]
    fn upload_frames_are_flat_tagged_lines() {
        let head = encode(&HostFrame {
            id: 9,
            req: Request::Chunk { len: 5 },
        });
        assert_eq!(head, b"{\"id\":9,\"type\":\"chunk\",\"len\":5}\n");
        let open: HostFrame = decode(br#"{"id":9,"type":"tar_in","dest":"/src"}"#).unwrap();
        assert_eq!(
            open.req,
            Request::TarIn {
                dest: "/src".into(),
                clear: false
            }
        );
        assert_eq!(
            std::str::from_utf8(&encode(&GuestFrame {
                id: 9,
                event: Event::Extracted {
                    entries: 3,
                    bytes: 10
                }
            }))
            .unwrap(),
            "{\"id\":9,\"type\":\"extracted\",\"entries\":3,\"bytes\":10}\n"
        );
        assert!(Event::Extracted {
            entries: 0,
            bytes: 0
        }
        .is_final());
    }

    /// What a [`HostDecoder`] made of some input, chunk payloads joined.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, PartialEq)]
    enum Got {
        Frame(HostFrame),
        Chunk(u64, Vec<u8>),
        Invalid(Vec<u8>),
        TooLong(usize),
    }

    #[derive(Default)]
    struct Collector {
        decoder: HostDecoder,
        got: Vec<Got>,
        payload: Vec<u8>,
    }

    impl Collector {
        fn push(&mut self, data: &[u8]) {
            let (got, payload) = (&mut self.got, &mut self.payload);
            self.decoder.push(data, |input| match input {
                HostInput::Frame(f) => got.push(Got::Frame(f)),
                HostInput::ChunkData {
                    id,
                    data,
                    remaining,
                } => {
                    assert!(!data.is_empty());
                    payload.extend_from_slice(data);
                    if remaining == 0 {
                        got.push(Got::Chunk(id, std::mem::take(payload)));
                    }
                }
                HostInput::Invalid { line, .. } => got.push(Got::Invalid(line.to_vec())),
                HostInput::TooLong(n) => got.push(Got::TooLong(n)),
            });
        }
    }

    fn frame(id: u64, req: Request) -> Vec<u8> {
        encode(&HostFrame { id, req })
    }

    fn chunk(id: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = frame(
            id,
            Request::Chunk {
                len: payload.len() as u64,
            },
        );
        out.extend_from_slice(payload);
        out
    }

    /// A small upload with payloads full of newlines and frame look-alikes.
    fn upload_message() -> (Vec<u8>, Vec<Got>) {
        let p1: &[u8] = b"\n{\"id\":1,\"type\":\"ping\"}\n\n\x00\xff";
        let p2: &[u8] = b"x\n";
        let mut wire = frame(
            3,
            Request::TarIn {
                dest: "/d".into(),
                clear: true,
            },
        );
        wire.extend(chunk(3, p1));
        wire.extend(frame(4, Request::Ping));
        wire.extend(chunk(3, b""));
        wire.extend(chunk(3, p2));
        wire.extend(b"junk\n");
        wire.extend(frame(3, Request::End));
        let want = vec![
            Got::Frame(HostFrame {
                id: 3,
                req: Request::TarIn {
                    dest: "/d".into(),
                    clear: true,
                },
            }),
            Got::Frame(HostFrame {
                id: 3,
                req: Request::Chunk {
                    len: p1.len() as u64,
                },
            }),
            Got::Chunk(3, p1.to_vec()),
            Got::Frame(HostFrame {
                id: 4,
                req: Request::Ping,
            }),
            Got::Frame(HostFrame {
                id: 3,
                req: Request::Chunk { len: 0 },
            }),
            Got::Frame(HostFrame {
                id: 3,
                req: Request::Chunk { len: 2 },
            }),
            Got::Chunk(3, p2.to_vec()),
            Got::Invalid(b"junk".to_vec()),
            Got::Frame(HostFrame {
                id: 3,
                req: Request::End,
            }),
        ];
        (wire, want)
    }

    #[test]
    fn decoder_handles_every_split_of_an_upload() {
        let (wire, want) = upload_message();
        // Whole, byte by byte, and cut at every pair of points.
        let mut c = Collector::default();
        c.push(&wire);
        assert_eq!(c.got, want);
        let mut c = Collector::default();
        for b in &wire {
            c.push(std::slice::from_ref(b));
        }
        assert_eq!(c.got, want);
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let mut c = Collector::default();
                c.push(&wire[..i]);
                c.push(&wire[i..j]);
                c.push(&wire[j..]);
                assert_eq!(c.got, want, "cut at {i} and {j}");
                assert_eq!(c.decoder.raw_remaining(), 0);
            }
        }
    }

    #[test]
    fn reset_mid_chunk_returns_to_line_mode() {
        let (wire, _) = upload_message();
        let header_end = wire.iter().position(|&b| b == b'\n').unwrap() + 1;
        let chunk_header_end =
            header_end + wire[header_end..].iter().position(|&b| b == b'\n').unwrap() + 1;
        // Everywhere inside the first chunk's payload, and inside its header.
        for cut in header_end + 1..chunk_header_end + 5 {
            let mut c = Collector::default();
            c.push(&wire[..cut]);
            c.decoder.reset();
            assert_eq!(c.decoder.raw_remaining(), 0);
            c.payload.clear();
            c.got.clear();
            // A new host starts on a fresh line.
            c.push(b"\n");
            c.push(&frame(8, Request::Ping));
            assert_eq!(
                c.got,
                vec![Got::Frame(HostFrame {
                    id: 8,
                    req: Request::Ping
                })],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_chunks_are_still_skipped_whole() {
        let mut c = Collector::default();
        let big = vec![b'\n'; MAX_CHUNK_IN_BYTES + 10];
        c.push(&chunk(5, &big));
        c.push(&frame(6, Request::Ping));
        assert_eq!(c.got.len(), 3);
        assert_eq!(c.got[1], Got::Chunk(5, big));
        assert_eq!(
            c.got[2],
            Got::Frame(HostFrame {
                id: 6,
                req: Request::Ping
            })
        );
    }

    #[test]
    fn splitter_raw_pieces_count_down() {
        let mut s = LineSplitter::new();
        let mut out = Vec::new();
        let mut feed = |s: &mut LineSplitter, data: &[u8]| {
            s.push_with_raw(data, |line| match line {
                Line::Frame(b) => {
                    out.push(format!("frame {}", String::from_utf8_lossy(b)));
                    if b == b"raw4" {
                        4
                    } else {
                        0
                    }
                }
                Line::Raw { data, remaining } => {
                    out.push(format!("raw {:?} {remaining}", data));
                    0
                }
                Line::TooLong(n) => {
                    out.push(format!("long {n}"));
                    0
                }
            })
        };
        feed(&mut s, b"raw4\na\n");
        assert_eq!(s.raw_remaining(), 2);
        feed(&mut s, b"\nbcd\n");
        assert_eq!(s.raw_remaining(), 0);
        assert_eq!(
            out,
            vec![
                "frame raw4".to_string(),
                "raw [97, 10] 2".into(),
                "raw [10, 98] 0".into(),
                "frame cd".into(),
            ]
        );
    }
}
