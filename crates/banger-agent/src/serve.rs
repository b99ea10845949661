//! Reading requests, answering them.

use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::sleep;
use std::time::Duration;

use anyhow::Context as _;
use banger_agent_proto::{
    encode, Event, GuestFrame, HostDecoder, HostFrame, HostInput, Request, MAX_FRAME_BYTES,
};

use crate::channel::{Channel, Kind};
use crate::listen::Listener;
use crate::upload::Uploads;
use crate::{exec, Options};

/// How long to wait before reading again while no host is connected.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Bytes read from the channel at once.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Delay between answering Poweroff and powering off, so the answer leaves.
const POWEROFF_DELAY: Duration = Duration::from_millis(100);
/// Longest error message sent, in bytes.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// How a Poweroff request powers off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerOff {
    /// `--dry-poweroff`: answer, do nothing.
    Dry,
    /// Ask systemd (or power off directly if that fails).
    Systemd,
    /// Under the agent as init: no systemd; `init::power_off`.
    Init,
}

impl PowerOff {
    fn for_options(opts: &Options) -> PowerOff {
        if opts.dry_poweroff {
            PowerOff::Dry
        } else if opts.under_init {
            PowerOff::Init
        } else {
            PowerOff::Systemd
        }
    }
}

/// What a session's requests may do, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    power_off: PowerOff,
    /// Reidentify may change this machine (false under `--no-identity`).
    reidentify: bool,
}

/// The one writer every request thread shares.
pub struct Out {
    inner: Mutex<Writer>,
}

struct Writer {
    sink: Box<dyn Write + Send>,
    /// A write failed, maybe mid-frame.
    torn: bool,
}

impl Out {
    pub fn new(sink: Box<dyn Write + Send>) -> Out {
        Out {
            inner: Mutex::new(Writer { sink, torn: false }),
        }
    }

    /// Sends one frame, whole. Failures are logged; the reader notices a
    /// host that went away.
    pub fn send(&self, id: u64, event: Event) {
        let mut line = encode(&GuestFrame { id, event });
        if line.len() > MAX_FRAME_BYTES {
            let message = format!("reply of {} bytes is too large", line.len());
            line = encode(&GuestFrame {
                id,
                event: Event::Error { message },
            });
        }
        let mut w = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut *w;
        let result = (|| {
            if w.torn {
                // End the torn line so the host drops it, not this frame.
                w.sink.write_all(b"\n")?;
            }
            w.torn = true;
            w.sink.write_all(&line)?;
            w.sink.flush()?;
            w.torn = false;
            std::io::Result::Ok(())
        })();
        if let Err(e) = result {
            log!("request {id}: cannot send a reply: {e}");
        }
    }

    pub fn error(&self, id: u64, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.send(id, Event::Error { message });
    }
}

/// Serves every connection `listener` accepts, each on its own thread,
/// until accepting fails.
pub fn serve_sessions(listener: &Listener, opts: Options) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    loop {
        let chan = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("accept on {}", listener.describe())),
        };
        let opts = opts.clone();
        let spawned = std::thread::Builder::new()
            .name("session".into())
            .spawn(move || {
                if let Err(e) = serve(chan, &opts) {
                    log!("session ended: {e:#}");
                }
            });
        if let Err(e) = spawned {
            log!("cannot start a session thread: {e}");
        }
    }
}

/// Reads requests until the channel fails (or, for a socket, closes).
///
/// Requests run on threads of their own, except uploads: their frames and
/// chunks are handled right here (see `upload`), so this loop may wait on
/// a busy extractor, and other requests with it.
pub fn serve(chan: Channel, opts: &Options) -> anyhow::Result<()> {
    let Channel {
        mut reader,
        writer,
        kind,
        path,
    } = chan;
    let out = Arc::new(Out::new(writer));
    let mut decoder = HostDecoder::new();
    // Dropped on return, which aborts the session's open uploads.
    let mut uploads = Uploads::default();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut host_connected = true;
    let mut dropped = 0u64;
    let policy = Policy {
        power_off: PowerOff::for_options(opts),
        reidentify: !opts.no_identity,
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if n == 0 {
            match kind {
                Kind::Socket => {
                    log!("{} closed", path.display());
                    return Ok(());
                }
                Kind::Device => {
                    // virtio-serial: no host connected. A partial line is the
                    // tail of the previous host's frame, a partial chunk the
                    // end of its upload: forget them.
                    decoder.reset();
                    if host_connected {
                        log!("host not connected; waiting");
                        host_connected = false;
                        uploads.abort_all("the host disconnected");
                    }
                    sleep(IDLE_POLL);
                    continue;
                }
            }
        }
        if !host_connected {
            log!("host connected");
            host_connected = true;
        }
        decoder.push(&buf[..n], |input| match input {
            HostInput::Frame(HostFrame { id, req }) => match req {
                Request::TarIn { dest, clear } => uploads.open(id, dest, clear, &out),
                Request::Chunk { len } => uploads.chunk_start(id, len),
                Request::End => uploads.end(id),
                Request::Cancel => uploads.cancel(id),
                req => dispatch(id, req, &out, policy),
            },
            HostInput::ChunkData {
                data, remaining, ..
            } => uploads.chunk_data(data, remaining),
            // A whole frame with an id, but a request this agent does not
            // know (from a newer host?): say so rather than stay silent.
            HostInput::Invalid { line, error } => match frame_id(line) {
                Some(id) => {
                    log!("request {id}: unsupported: {error}");
                    out.error(id, format!("unsupported request: {error}"));
                }
                None => note_dropped(&mut dropped, line.len()),
            },
            HostInput::TooLong(len) => note_dropped(&mut dropped, len),
        });
    }
}

/// Notes a line that was not a frame (the tail of a frame from an earlier
/// host connection, noise): briefly, and not once per line of a flood.
fn note_dropped(dropped: &mut u64, len: usize) {
    *dropped += 1;
    if *dropped <= 10 || dropped.is_power_of_two() {
        log!("dropped an unparseable line of {len} bytes ({dropped} so far)");
    }
}

/// The id of a line that is a JSON object with an integer `id` and a string
/// `type`, i.e. a whole frame (a torn one is never valid JSON).
fn frame_id(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("type")?.as_str()?;
    value.get("id")?.as_u64()
}

fn dispatch(id: u64, req: Request, out: &Arc<Out>, policy: Policy) {
    let thread_out = out.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("req-{id}"))
        .spawn(move || handle(id, req, &thread_out, policy));
    if let Err(e) = spawned {
        log!("request {id}: cannot start a thread: {e}");
        out.error(id, format!("agent cannot start a thread: {e}"));
    }
}

fn handle(id: u64, req: Request, out: &Arc<Out>, policy: Policy) {
    match req {
        Request::Ping => out.send(
            id,
            Event::Pong {
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                hostname: read_trimmed("/proc/sys/kernel/hostname"),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                instance_id: crate::identity::instance_id(),
                features: vec![banger_agent_proto::FEATURE_REIDENTIFY.to_owned()],
            },
        ),
        Request::Ports => match crate::ports::list() {
            Ok(ports) => out.send(id, Event::Ports { ports }),
            Err(message) => out.error(id, message),
        },
        Request::Stats => match crate::stats::collect() {
            Ok(stats) => out.send(id, Event::Stats { stats }),
            Err(message) => out.error(id, message),
        },
        Request::Exec { argv, env, cwd } => exec::run(id, &argv, &env, cwd.as_deref(), out),
        Request::Reidentify { identity } => {
            match crate::reidentify::handle(&identity, policy.reidentify) {
                Ok(()) => out.send(id, Event::Ok),
                Err(message) => {
                    log!("request {id}: reidentify: {message}");
                    out.error(id, message);
                }
            }
        }
        Request::Sync => {
            sync();
            out.send(id, Event::Ok);
        }
        // Handled by the session's reader; never dispatched here.
        Request::TarIn { .. } | Request::Chunk { .. } | Request::End | Request::Cancel => {
            out.error(id, "upload frames are not requests of their own")
        }
        Request::Poweroff => {
            log!("request {id}: powering off");
            sync();
            out.send(id, Event::Ok);
            sleep(POWEROFF_DELAY);
            match policy.power_off {
                PowerOff::Dry => log!("--dry-poweroff: not powering off"),
                PowerOff::Systemd => poweroff(),
                PowerOff::Init => crate::init::power_off(),
            }
        }
    }
}

fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Asks systemd for a clean poweroff; if that fails, powers off directly.
fn poweroff() {
    let status = std::process::Command::new("systemctl")
        .args(["poweroff", "--no-block"])
        .stdin(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => return,
        Ok(s) => log!("systemctl poweroff failed ({s}); powering off directly"),
        Err(e) => log!("cannot run systemctl ({e}); powering off directly"),
    }
    sync();
    // SAFETY: reboot(2) with a valid command; it takes no pointers. On
    // success it does not return.
    let rc = unsafe { libc::reboot(libc::RB_POWER_OFF) };
    if rc != 0 {
        log!("reboot(RB_POWER_OFF): {}", std::io::Error::last_os_error());
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
