//! The host side of the agent channel (feature `client`).
//!
//! An [`AgentClient`] owns one connected byte stream to one guest agent and
//! multiplexes any number of concurrent requests over it. A background task
//! reads [`GuestFrame`]s and routes each to the request with the same id
//! (frames for unknown ids, e.g. answers to requests that already timed out
//! or that an earlier connection sent, are dropped). Writes go through one
//! mutex so frames never interleave.
//!
//! When the stream breaks (EOF, read or write error), the client is closed
//! for good: every pending and every later request fails with
//! [`ClientError::Disconnected`]. Make a new client to reconnect.
//!
//! The clients are cheap to clone; clones share the connection. The
//! connection ends when the last clone and the last [`ExecStream`] are gone.
//!
//! Uploads ([`AgentClient::tar_in`]) send raw chunks: a header line and
//! its payload go out as one write, on a task of their own, so that a caller
//! giving up halfway (a dropped future) cannot leave the agent expecting
//! payload bytes that never come. An abandoned upload is canceled.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Mutex};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{decode, decode_data, encode, Event, GuestFrame, HostFrame, Line, LineSplitter};
use crate::{GuestStats, ListenPort, NewIdentity, ProtoError, Request, MAX_CHUNK_IN_BYTES};

/// Interval between readiness probes in [`wait_ready`].
const READY_RETRY: Duration = Duration::from_millis(200);
/// How long one readiness probe waits for its Pong in [`wait_ready`].
const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What went wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The stream to the agent broke (or was already broken).
    #[error("the connection to the guest agent was lost")]
    Disconnected,
    /// No final answer arrived in time. The connection stays usable.
    #[error("the guest agent did not answer the {request} request within {timeout:?}")]
    Timeout {
        request: &'static str,
        timeout: Duration,
    },
    /// The agent answered with an Error event.
    #[error("the guest agent failed the {request} request: {message}")]
    Agent {
        request: &'static str,
        message: String,
    },
    /// The agent answered with an event that makes no sense for the request.
    #[error("the guest agent answered the {request} request with an unexpected {event} event")]
    Unexpected {
        request: &'static str,
        event: &'static str,
    },
    /// The agent sent an event whose payload does not decode.
    #[error("the guest agent sent a bad event: {0}")]
    Proto(#[from] ProtoError),
    #[error("cannot connect to the agent socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    /// Reading the archive to upload ([`AgentClient::tar_in`]) failed; the
    /// upload was canceled.
    #[error("cannot read the archive to upload: {source}")]
    Input { source: io::Error },
    /// [`wait_ready`] ran out of time.
    #[error("the guest agent at {} did not answer within {waited:?}: {last}", path.display())]
    NotReady {
        path: PathBuf,
        waited: Duration,
        /// The last failure seen (connecting or probing).
        last: Box<ClientError>,
    },
}

/// What a Ping returns: who answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The guest's boot id; changes on every boot.
    pub boot_id: String,
    pub hostname: String,
    pub agent_version: String,
    /// The instance id the guest took on with the last successful
    /// [`AgentClient::reidentify`] since it booted; `None` before that, and
    /// from agents that predate warm starts.
    pub instance_id: Option<String>,
    /// Newer requests this agent takes ([`crate::FEATURE_REIDENTIFY`]).
    pub features: Vec<String>,
}

impl Pong {
    /// Whether the agent takes the request behind `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// What an upload ([`AgentClient::tar_in`]) did in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarInReport {
    /// Archive entries extracted (files, directories, links).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// One event of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The last event: the exit code, or 128+N when killed by signal N.
    Exit(i32),
}

/// Everything a command printed, and how it ended ([`ExecStream::collect`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: i32,
}

/// A multiplexing client for one agent connection.
#[derive(Clone)]
pub struct AgentClient {
    conn: Arc<Conn>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl AgentClient {
    /// Takes over a connected stream. Must be called inside a tokio runtime
    /// (it spawns the reader task).
    pub fn new<S>(stream: S) -> AgentClient
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, w) = tokio::io::split(stream);
        AgentClient::from_split(r, w)
    }

    /// Like [`new`](Self::new), for a stream already split in two halves.
    pub fn from_split<R, W>(reader: R, writer: W) -> AgentClient
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let demux = Arc::new(Demux::default());
        let task = tokio::spawn(read_loop(reader, CloseOnDrop(demux.clone())));
        AgentClient {
            conn: Arc::new(Conn {
                demux,
                writer: Mutex::new(FrameWriter {
                    sink: Box::new(writer),
                    // An earlier connection may have left a partial frame in
                    // the agent's buffer: start our first frame on a new line.
                    torn: true,
                }),
                next_id: AtomicU64::new(first_id()),
                reader: task.abort_handle(),
            }),
        }
    }

    /// Connects to a Unix socket (QEMU's end of the virtio-serial port).
    ///
    /// QEMU accepts the connection even before the guest agent runs; use
    /// [`wait_ready`] to know when the agent answers.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<AgentClient, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (r, w) = stream.into_split();
        Ok(AgentClient::from_split(r, w))
    }

    /// True once the stream broke; every request then fails with
    /// [`ClientError::Disconnected`].
    pub fn is_closed(&self) -> bool {
        self.conn.demux.lock().closed
    }

    /// Asks the agent who it is.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, ClientError> {
        match self.call("ping", Request::Ping, timeout).await? {
            Event::Pong {
                boot_id,
                hostname,
                agent_version,
                instance_id,
                features,
            } => Ok(Pong {
                boot_id,
                hostname,
                agent_version,
                instance_id,
                features,
            }),
            other => Err(unexpected("ping", &other)),
        }
    }

    /// Lists the guest's listening TCP and UDP sockets, sorted by (proto,
    /// port, addr). An agent too old to know the request answers with an
    /// Error ("unsupported request"), returned as [`ClientError::Agent`].
    pub async fn ports(&self, timeout: Duration) -> Result<Vec<ListenPort>, ClientError> {
        match self.call("ports", Request::Ports, timeout).await? {
            Event::Ports { ports } => Ok(ports),
            other => Err(unexpected("ports", &other)),
        }
    }

    /// The guest's CPUs, memory, load, uptime and filesystems. An agent too
    /// old to know the request answers with an Error ("unsupported
    /// request"), returned as [`ClientError::Agent`].
    pub async fn stats(&self, timeout: Duration) -> Result<GuestStats, ClientError> {
        match self.call("stats", Request::Stats, timeout).await? {
            Event::Stats { stats } => Ok(stats),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Flushes the guest's filesystems; returns once sync(2) returned there.
    pub async fn sync(&self, timeout: Duration) -> Result<(), ClientError> {
        self.call_ok("sync", Request::Sync, timeout).await
    }

    /// Gives a guest restored from a memory snapshot its own identity
    /// (network, hostname, clock, entropy, machine-id, SSH host key; see
    /// [`Request::Reidentify`]). Returns once the agent applied all of it.
    /// An invalid field is refused before anything changes; a step failing
    /// later is [`ClientError::Agent`] naming that step, with the earlier
    /// steps applied. An agent too old to know the request answers with an
    /// Error ("unsupported request"), also [`ClientError::Agent`].
    pub async fn reidentify(&self, id: &NewIdentity, timeout: Duration) -> Result<(), ClientError> {
        let req = Request::Reidentify {
            identity: id.clone(),
        };
        self.call_ok("reidentify", req, timeout).await
    }

    /// Syncs and powers the guest off. Returns when the agent acknowledged;
    /// the guest goes down shortly after, which breaks the connection.
    pub async fn poweroff(&self, timeout: Duration) -> Result<(), ClientError> {
        self.call_ok("poweroff", Request::Poweroff, timeout).await
    }

    /// Starts `argv` (no shell) in the guest, with `env` added to the
    /// agent's base environment, in `cwd` (default /root).
    ///
    /// Returns once the request is sent; the output, the exit code and any
    /// failure to start come from the returned stream. Dropping the stream
    /// stops listening; the command itself keeps running in the guest.
    /// Output is buffered without bound until read.
    pub async fn exec(
        &self,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
    ) -> Result<ExecStream, ClientError> {
        let (route, rx) = self.register()?;
        let id = route.id;
        let stream = ExecStream {
            rx,
            route,
            done: false,
        };
        self.send(id, Request::Exec { argv, env, cwd }).await?;
        Ok(stream)
    }

    /// Streams the tar archive read from `reader` into `dest` in the guest.
    /// `clear`: empty `dest` first. `answer_timeout` bounds only the wait for
    /// the final answer after the last chunk.
    ///
    /// The archive goes out in raw chunks of up to [`MAX_CHUNK_IN_BYTES`],
    /// as fast as the agent takes them (it reads them through a small
    /// bounded queue, so a slow guest disk slows this down rather than
    /// filling the guest's memory). Other requests on this connection may
    /// wait behind a busy upload.
    ///
    /// Errors: the agent failing the upload is [`ClientError::Agent`],
    /// returned as soon as the agent says so, without sending the rest of
    /// the archive; what was extracted before the failure stays in the
    /// guest. `reader` failing is [`ClientError::Input`] (the upload is
    /// canceled). Dropping the returned future cancels the upload too.
    pub async fn tar_in<R: AsyncRead + Unpin>(
        &self,
        dest: &str,
        clear: bool,
        mut reader: R,
        answer_timeout: Duration,
    ) -> Result<TarInReport, ClientError> {
        let (route, mut rx) = self.register()?;
        let id = route.id;
        let req = Request::TarIn {
            dest: dest.to_owned(),
            clear,
        };
        self.send(id, req).await?;
        let mut upload = CancelOnDrop {
            conn: self.conn.clone(),
            id,
            armed: true,
        };
        let mut buf = vec![0u8; MAX_CHUNK_IN_BYTES];
        loop {
            // The agent answers before End only when the upload failed:
            // stop sending then.
            match rx.try_recv() {
                Ok(event) => {
                    upload.armed = false;
                    return tar_in_answer(event);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    upload.armed = false;
                    return Err(ClientError::Disconnected);
                }
            }
            let read = tokio::select! {
                biased;
                event = rx.recv() => {
                    upload.armed = false;
                    return event.map_or(Err(ClientError::Disconnected), tar_in_answer);
                }
                read = fill(&mut reader, &mut buf) => read,
            };
            let len = match read {
                Ok(0) => break,
                Ok(len) => len,
                Err(source) => {
                    upload.armed = false;
                    // Best effort: the read failure is what gets reported.
                    let _ = self.send(id, Request::Cancel).await;
                    return Err(ClientError::Input { source });
                }
            };
            buf = self.send_chunk(id, buf, len).await?;
        }
        self.send(id, Request::End).await?;
        upload.armed = false;
        let event = tokio::time::timeout(answer_timeout, rx.recv())
            .await
            .map_err(|_| ClientError::Timeout {
                request: "tar_in",
                timeout: answer_timeout,
            })?;
        event.map_or(Err(ClientError::Disconnected), tar_in_answer)
    }

    /// Sends one chunk header and the first `len` bytes of `data` as its
    /// payload, from a task of its own so that the write, once begun, ends
    /// whole even if the caller gives up. Returns `data` for reuse.
    async fn send_chunk(&self, id: u64, data: Vec<u8>, len: usize) -> Result<Vec<u8>, ClientError> {
        let conn = self.conn.clone();
        let task = tokio::spawn(async move {
            let head = encode(&HostFrame {
                id,
                req: Request::Chunk { len: len as u64 },
            });
            conn.write(&head, &data[..len]).await.map(|()| data)
        });
        task.await.map_err(|_| ClientError::Disconnected)?
    }

    /// Sends a request and waits (bounded) for its one final event.
    async fn call(
        &self,
        name: &'static str,
        req: Request,
        timeout: Duration,
    ) -> Result<Event, ClientError> {
        let (route, mut rx) = self.register()?;
        let exchange = async {
            self.send(route.id, req).await?;
            rx.recv().await.ok_or(ClientError::Disconnected)
        };
        let event = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                request: name,
                timeout,
            })??;
        match event {
            Event::Error { message } => Err(ClientError::Agent {
                request: name,
                message,
            }),
            other => Ok(other),
        }
    }

    async fn call_ok(
        &self,
        name: &'static str,
        req: Request,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        match self.call(name, req, timeout).await? {
            Event::Ok => Ok(()),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Picks a fresh id and opens the route its events arrive on.
    fn register(&self) -> Result<(Route, mpsc::UnboundedReceiver<Event>), ClientError> {
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.conn.demux.lock();
        if state.closed {
            return Err(ClientError::Disconnected);
        }
        state.routes.insert(id, tx);
        drop(state);
        Ok((
            Route {
                demux: self.conn.demux.clone(),
                id,
            },
            rx,
        ))
    }

    /// Writes one frame. A failed write closes the client.
    async fn send(&self, id: u64, req: Request) -> Result<(), ClientError> {
        self.conn.write(&encode(&HostFrame { id, req }), &[]).await
    }
}

/// The events of one running command (see [`AgentClient::exec`]).
#[derive(Debug)]
pub struct ExecStream {
    rx: mpsc::UnboundedReceiver<Event>,
    route: Route,
    done: bool,
}

impl ExecStream {
    /// The request id (shows in the agent's log).
    pub fn id(&self) -> u64 {
        self.route.id
    }

    /// The next event: `Ok(Some(..))` for output and for the final
    /// [`ExecEvent::Exit`], then `Ok(None)`. The command failing to start
    /// is [`ClientError::Agent`]; the connection breaking first is
    /// [`ClientError::Disconnected`]. After an error, `Ok(None)` follows.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let Some(event) = self.rx.recv().await else {
            self.done = true;
            return Err(ClientError::Disconnected);
        };
        self.done = event.is_final();
        match event {
            Event::Stdout { data } => Ok(Some(ExecEvent::Stdout(decode_data(&data)?))),
            Event::Stderr { data } => Ok(Some(ExecEvent::Stderr(decode_data(&data)?))),
            Event::Exit { code } => Ok(Some(ExecEvent::Exit(code))),
            Event::Error { message } => Err(ClientError::Agent {
                request: "exec",
                message,
            }),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Reads the stream to its end.
    pub async fn collect(mut self) -> Result<ExecOutput, ClientError> {
        let mut out = ExecOutput::default();
        loop {
            match self.next_event().await? {
                Some(ExecEvent::Stdout(b)) => out.stdout.extend_from_slice(&b),
                Some(ExecEvent::Stderr(b)) => out.stderr.extend_from_slice(&b),
                Some(ExecEvent::Exit(code)) => {
                    out.code = code;
                    return Ok(out);
                }
                None => return Err(ClientError::Disconnected),
            }
        }
    }
}

/// Connects to the agent socket at `path` and probes until the agent
/// answers a Ping, or `deadline` passes.
///
/// QEMU accepts the connection before the guest agent runs; a probe then
/// simply goes unanswered, so probes repeat on the same connection (every
/// ~200 ms, each waiting up to ~1 s) and the client reconnects only when
/// the connection itself fails.
pub async fn wait_ready(
    path: impl AsRef<Path>,
    deadline: Instant,
) -> Result<(AgentClient, Pong), ClientError> {
    wait_ready_every(path, deadline, READY_RETRY).await
}

/// [`wait_ready`], probing every `retry` instead: a guest resumed from a
/// snapshot answers within a few hundred milliseconds, so waiting 200 ms
/// between probes would be a visible share of a warm start.
pub async fn wait_ready_every(
    path: impl AsRef<Path>,
    deadline: Instant,
    retry: Duration,
) -> Result<(AgentClient, Pong), ClientError> {
    let path = path.as_ref();
    let start = Instant::now();
    let mut client: Option<AgentClient> = None;
    let mut last = ClientError::Timeout {
        request: "ping",
        timeout: Duration::ZERO,
    };
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::NotReady {
                path: path.to_owned(),
                waited: now - start,
                last: Box::new(last),
            });
        }
        let c = match client.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => c.clone(),
            None => {
                client = None;
                match tokio::time::timeout_at(deadline, AgentClient::connect_unix(path)).await {
                    Ok(Ok(c)) => {
                        client = Some(c.clone());
                        c
                    }
                    Ok(Err(e)) => {
                        last = e;
                        tokio::time::sleep_until(deadline.min(Instant::now() + retry)).await;
                        continue;
                    }
                    Err(_) => continue, // deadline; reported above
                }
            }
        };
        let timeout = READY_PING_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        match c.ping(timeout).await {
            Ok(pong) => return Ok((c, pong)),
            Err(e) => last = e,
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + retry)).await;
    }
}

/// Reads from `reader` until `buf` is full or the input ends; how many
/// bytes it read (0: the input had ended).
async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The final answer of an upload.
fn tar_in_answer(event: Event) -> Result<TarInReport, ClientError> {
    match event {
        Event::Extracted { entries, bytes } => Ok(TarInReport { entries, bytes }),
        Event::Error { message } => Err(ClientError::Agent {
            request: "tar_in",
            message,
        }),
        other => Err(unexpected("tar_in", &other)),
    }
}

fn unexpected(request: &'static str, event: &Event) -> ClientError {
    let event = match event {
        Event::Pong { .. } => "pong",
        Event::Stdout { .. } => "stdout",
        Event::Stderr { .. } => "stderr",
        Event::Exit { .. } => "exit",
        Event::Ok => "ok",
        Event::Extracted { .. } => "extracted",
        Event::Ports { .. } => "ports",
        Event::Stats { .. } => "stats",
        Event::Error { .. } => "error",
    };
    ClientError::Unexpected { request, event }
}

/// First request id of a new client: the clock in microseconds, so a new
/// connection's ids do not collide with the ids of stale answers an earlier
/// connection's requests may still produce. Stays below 2^53.
fn first_id() -> u64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    (micros as u64 & ((1 << 52) - 1)).max(1)
}

struct Conn {
    demux: Arc<Demux>,
    writer: Mutex<FrameWriter>,
    next_id: AtomicU64,
    reader: AbortHandle,
}

impl Conn {
    /// Writes one frame: a line (`head`, newline included), then `payload`
    /// (the raw bytes of a chunk; empty for every other frame), as one unit
    /// under the writer lock. A failed write closes the client.
    async fn write(&self, head: &[u8], payload: &[u8]) -> Result<(), ClientError> {
        let mut guard = self.writer.lock().await;
        if self.demux.lock().closed {
            return Err(ClientError::Disconnected);
        }
        let w = &mut *guard;
        let written = async {
            if w.torn {
                // The previous write was cancelled, maybe mid-frame: end that
                // torn line so the agent drops it, not this frame with it.
                w.sink.write_all(b"\n").await?;
            }
            w.torn = true;
            w.sink.write_all(head).await?;
            if !payload.is_empty() {
                w.sink.write_all(payload).await?;
            }
            w.sink.flush().await?;
            w.torn = false;
            io::Result::Ok(())
        }
        .await;
        if written.is_err() {
            self.demux.close();
            return Err(ClientError::Disconnected);
        }
        Ok(())
    }
}

/// Cancels an upload whose [`AgentClient::tar_in`] future was dropped
/// before it ended the upload (from a task: drop cannot wait).
struct CancelOnDrop {
    conn: Arc<Conn>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        let frame = encode(&HostFrame {
            id: self.id,
            req: Request::Cancel,
        });
        runtime.spawn(async move {
            let _ = conn.write(&frame, &[]).await;
        });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Last client clone and last ExecStream are gone: stop reading, which
        // (with the writer dropped here) closes the connection.
        self.reader.abort();
    }
}

struct FrameWriter {
    sink: Box<dyn AsyncWrite + Send + Unpin>,
    /// The stream may end in a partial line (a cancelled write, or a fresh
    /// connection): the next frame is preceded by a newline.
    torn: bool,
}

/// Where the events of each pending request go.
#[derive(Default)]
struct Demux {
    state: StdMutex<DemuxState>,
}

#[derive(Default)]
struct DemuxState {
    closed: bool,
    routes: HashMap<u64, mpsc::UnboundedSender<Event>>,
}

impl Demux {
    fn lock(&self) -> MutexGuard<'_, DemuxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dispatch(&self, frame: GuestFrame) {
        let mut state = self.lock();
        let last = frame.event.is_final();
        let Some(tx) = state.routes.get(&frame.id) else {
            return; // unknown id: a stale answer, or nobody listens anymore
        };
        let delivered = tx.send(frame.event).is_ok();
        if last || !delivered {
            state.routes.remove(&frame.id);
        }
    }

    /// Marks the connection broken and drops every route, which wakes every
    /// waiting request with a closed channel (= Disconnected).
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.routes.clear();
    }
}

/// A registered request id; unregisters on drop (timeout, stream dropped).
#[derive(Debug)]
struct Route {
    demux: Arc<Demux>,
    id: u64,
}

impl std::fmt::Debug for Demux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demux").finish_non_exhaustive()
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        self.demux.lock().routes.remove(&self.id);
    }
}

/// Closes the demux when the reader task ends, however it ends (EOF,
/// error, or aborted).
struct CloseOnDrop(Arc<Demux>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, demux: CloseOnDrop) {
    let mut splitter = LineSplitter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        splitter.push(&buf[..n], |line| {
            // Unparseable lines (torn frames from an earlier connection,
            // noise) and overlong ones are dropped.
            if let Line::Frame(bytes) = line {
                if let Ok(frame) = decode::<GuestFrame>(bytes) {
                    demux.0.dispatch(frame);
                }
            }
        });
    }
}
