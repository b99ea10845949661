//! A small async QMP (QEMU Machine Protocol) client over a Unix socket, for
//! the warm-start path (`docs/warm-starts-spike.md`): `stop`, `migrate` to a
//! `file:` URI, `migrate-incoming`, polling `query-migrate`, `cont`.
//!
//! Hand-written rather than a crate: QMP is one JSON object per line (a
//! greeting, `{"execute", "arguments", "id"}` commands, `{"return"|"error",
//! "id"}` replies and `{"event"}` notifications), a couple hundred lines on
//! top of tokio and serde_json, which the workspace already has. The crates
//! looked at: `qapi`/`tokio-qapi` (arcnmx) generate types from QEMU's QAPI
//! schema at build time (a heavy build for the ten commands we need;
//! `tokio-qapi` is stuck on tokio 0.1), and `qmp` 0.1 is a new, single
//! release with an allow-list/retry "ops" layer we don't want and no track
//! record yet.
//!
//! One reader task owns the read half: replies are matched to their caller
//! by `id` (every command gets a fresh number), events go to a bounded
//! channel ([`Qmp::events`]; when nobody drains it, the newest events are
//! dropped rather than growing memory). Every call has a timeout
//! ([`Qmp::set_timeout`], or [`Qmp::execute_with_timeout`]); a call that
//! times out forgets its id, so a late reply is discarded.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many undrained events are kept before new ones are dropped.
const EVENT_QUEUE: usize = 256;

/// How often [`Qmp::wait_migration_completed`] polls `query-migrate`.
const MIGRATE_POLL: Duration = Duration::from_millis(10);

/// Errors from the QMP client. Each names the socket and, where there is
/// one, the command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to qmp socket {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("qmp socket {socket}: no greeting within {timeout:?}")]
    GreetingTimeout { socket: PathBuf, timeout: Duration },
    #[error("qmp socket {socket}: bad greeting: {detail}")]
    Greeting { socket: PathBuf, detail: String },
    #[error("qmp socket {socket}: sending {command}: {source}")]
    Io {
        socket: PathBuf,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("qmp socket {socket}: {command} got no reply within {timeout:?}")]
    Timeout {
        socket: PathBuf,
        command: String,
        timeout: Duration,
    },
    #[error("qmp socket {socket}: connection closed before {command} got a reply")]
    Closed { socket: PathBuf, command: String },
    #[error("qmp socket {socket}: {command} failed: {class}: {desc}")]
    Command {
        socket: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
    #[error("qmp socket {socket}: {command}: unexpected reply: {detail}")]
    Protocol {
        socket: PathBuf,
        command: String,
        detail: String,
    },
    #[error("qmp socket {socket}: migration {status}{}", error_desc.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Migration {
        socket: PathBuf,
        status: String,
        error_desc: Option<String>,
    },
    #[error(
        "qmp socket {socket}: migration not completed within {timeout:?} (last status {status})"
    )]
    MigrationTimeout {
        socket: PathBuf,
        status: String,
        timeout: Duration,
    },
}

/// An asynchronous QMP event (`STOP`, `RESUME`, `MIGRATION`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    /// `data`, or `null` when the event has none.
    pub data: Value,
    /// QEMU's timestamp in microseconds since the epoch.
    pub timestamp_us: Option<u64>,
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    pub running: bool,
    /// `prelaunch`, `running`, `paused`, `inmigrate`, `postmigrate`, ...
    pub status: String,
}

/// The part of `query-migrate` the warm-start path reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct MigrationInfo {
    /// Absent before any migration; then `setup`, `active`, `completed`,
    /// `failed`, `cancelled`, ...
    pub status: Option<String>,
    #[serde(rename = "error-desc")]
    pub error_desc: Option<String>,
    /// Milliseconds, once completed.
    #[serde(rename = "total-time")]
    pub total_time: Option<u64>,
}

type Pending = Arc<StdMutex<Option<HashMap<u64, oneshot::Sender<Value>>>>>;

/// A connected QMP session, past `qmp_capabilities`.
pub struct Qmp {
    socket: PathBuf,
    writer: Mutex<OwnedWriteHalf>,
    /// `None` once the reader saw EOF.
    pending: Pending,
    next_id: AtomicU64,
    events: mpsc::Receiver<QmpEvent>,
    greeting: Value,
    timeout: Duration,
    reader: JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("socket", &self.socket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect, read the greeting and negotiate capabilities, each step
    /// bounded by `timeout` (which also becomes the per-call default).
    pub async fn connect(socket: impl AsRef<Path>, timeout: Duration) -> Result<Self, QmpError> {
        let socket = socket.as_ref().to_path_buf();
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(&socket)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QmpError::Connect { socket, source }),
            Err(_) => {
                return Err(QmpError::Connect {
                    socket,
                    source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                })
            }
        };
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = match tokio::time::timeout(timeout, lines.next_line()).await {
            Err(_) => return Err(QmpError::GreetingTimeout { socket, timeout }),
            Ok(Err(e)) => {
                return Err(QmpError::Greeting {
                    socket,
                    detail: e.to_string(),
                })
            }
            Ok(Ok(None)) => {
                return Err(QmpError::Greeting {
                    socket,
                    detail: "connection closed".into(),
                })
            }
            Ok(Ok(Some(line))) => line,
        };
        let greeting: Value = serde_json::from_str(&greeting).map_err(|e| QmpError::Greeting {
            socket: socket.clone(),
            detail: format!("{e}: {greeting}"),
        })?;
        let Some(greeting) = greeting.get("QMP").cloned() else {
            return Err(QmpError::Greeting {
                socket,
                detail: format!("no \"QMP\" key in {greeting}"),
            });
        };

        let pending: Pending = Arc::new(StdMutex::new(Some(HashMap::new())));
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), tx));
        let qmp = Qmp {
            socket,
            writer: Mutex::new(writer),
            pending,
            next_id: AtomicU64::new(1),
            events,
            greeting,
            timeout,
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The greeting's `QMP` object (`version`, `capabilities`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The socket this session is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Set the default per-call timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Events received so far and from now on.
    pub fn events(&mut self) -> &mut mpsc::Receiver<QmpEvent> {
        &mut self.events
    }

    /// Run `command` with optional `arguments`; the `return` value, or the
    /// QMP error's class and description.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.timeout)
            .await
    }

    /// [`Qmp::execute`] with its own timeout.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(map) = pending.as_mut() else {
                return Err(self.closed(command));
            };
            map.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');

        let result = tokio::time::timeout(timeout, async {
            {
                let mut w = self.writer.lock().await;
                w.write_all(line.as_bytes())
                    .await
                    .map_err(|source| QmpError::Io {
                        socket: self.socket.clone(),
                        command: command.to_string(),
                        source,
                    })?;
            }
            rx.await.map_err(|_| self.closed(command))
        })
        .await;
        let reply = match result {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.forget(id);
                return Err(e);
            }
            Err(_) => {
                self.forget(id);
                return Err(QmpError::Timeout {
                    socket: self.socket.clone(),
                    command: command.to_string(),
                    timeout,
                });
            }
        };
        if let Some(ret) = reply.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = reply.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(QmpError::Command {
                socket: self.socket.clone(),
                command: command.to_string(),
                class: field("class"),
                desc: field("desc"),
            });
        }
        Err(self.protocol(command, format!("neither return nor error: {reply}")))
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<VmStatus, QmpError> {
        self.typed("query-status", None).await
    }

    /// `cont`: run a paused (or `-S`) VM.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `stop`: pause the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `quit`: QEMU exits (it may close the socket before replying, which
    /// counts as success).
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `migrate` to `uri` (e.g. `file:/path/state`). Returns once the
    /// migration started; see [`Qmp::wait_migration_completed`].
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `migrate-incoming` from `uri`, on a QEMU started with `-incoming defer`.
    pub async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `query-migrate`.
    pub async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        self.typed("query-migrate", None).await
    }

    /// `migrate-set-capabilities`, e.g. `&[("mapped-ram", true)]`.
    pub async fn migrate_set_capabilities(&self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let caps: Vec<Value> = caps
            .iter()
            .map(|(c, s)| json!({ "capability": c, "state": s }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": caps })),
        )
        .await
        .map(drop)
    }

    /// `migrate-set-parameters` with a raw object, e.g.
    /// `{"max-bandwidth": 68719476736}`.
    pub async fn migrate_set_parameters(&self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .await
            .map(drop)
    }

    /// Poll `query-migrate` until `completed`; `failed`/`cancelled` is an
    /// error, as is still running after `timeout`.
    pub async fn wait_migration_completed(
        &self,
        timeout: Duration,
    ) -> Result<MigrationInfo, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let info = self
                .execute_with_timeout("query-migrate", None, left.min(self.timeout))
                .await
                .and_then(|v| self.parse::<MigrationInfo>("query-migrate", v));
            let info = match info {
                Ok(info) => info,
                Err(QmpError::Timeout { .. }) if Instant::now() >= deadline => {
                    return Err(QmpError::MigrationTimeout {
                        socket: self.socket.clone(),
                        status: "unknown".into(),
                        timeout,
                    })
                }
                Err(e) => return Err(e),
            };
            let status = info.status.clone().unwrap_or_else(|| "none".into());
            match status.as_str() {
                "completed" => return Ok(info),
                "failed" | "cancelled" | "cancelling" => {
                    return Err(QmpError::Migration {
                        socket: self.socket.clone(),
                        status,
                        error_desc: info.error_desc,
                    })
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(QmpError::MigrationTimeout {
                    socket: self.socket.clone(),
                    status,
                    timeout,
                });
            }
            tokio::time::sleep(MIGRATE_POLL.min(left)).await;
        }
    }

    async fn typed<T: for<'de> Deserialize<'de>>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(command, arguments).await?;
        self.parse(command, v)
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, command: &str, v: Value) -> Result<T, QmpError> {
        serde_json::from_value(v.clone()).map_err(|e| self.protocol(command, format!("{e}: {v}")))
    }

    fn forget(&self, id: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = pending.as_mut() {
            map.remove(&id);
        }
    }

    fn closed(&self, command: &str) -> QmpError {
        QmpError::Closed {
            socket: self.socket.clone(),
            command: command.to_string(),
        }
    }

    fn protocol(&self, command: &str, detail: String) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.to_string(),
            detail,
        }
    }
}

/// Dispatch replies by `id` and events to the channel until EOF; then mark
/// the session closed (dropping every waiting sender, so callers see
/// [`QmpError::Closed`]).
async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: mpsc::Sender<QmpEvent>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let ts = msg.get("timestamp");
            let timestamp_us = ts.and_then(|t| {
                let s = t.get("seconds")?.as_u64()?;
                let us = t.get("microseconds")?.as_u64()?;
                Some(s * 1_000_000 + us)
            });
            // Full queue: drop the event rather than block replies.
            let _ = events.try_send(QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
                timestamp_us,
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let tx = {
            let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.as_mut().and_then(|m| m.remove(&id))
        };
        if let Some(tx) = tx {
            let _ = tx.send(msg);
        }
    }
    pending.lock().unwrap_or_else(|e| e.into_inner()).take();
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
