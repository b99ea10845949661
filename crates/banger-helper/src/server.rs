//! The helper's HTTP/JSON server on a Unix socket.
//!
//! One route, `POST /v1/op`. The socket is created `0600` and owned by the
//! owner; on top of that every accepted connection's `SO_PEERCRED` is
//! checked and anything but root or the owner is closed unanswered. Each
//! call logs exactly one line (`helper op completed` / `helper op failed`)
//! with the op, its op id and how long it took.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use banger_api::{ApiError, OP_ID_HEADER};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{UnixListener, UnixStream};

use crate::ops::{self, Helper};
use crate::proto::{HelperRequest, MAX_BODY_BYTES, OP_PATH};

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for in-flight calls (a QEMU launch may take a
/// while) before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    SocketPath(String),
    #[error("another banger-helper is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ServerError {
    let path = path.to_path_buf();
    move |source| ServerError::Io { what, path, source }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// The peer policy: root and the owner may talk to the helper; nobody else.
pub fn peer_allowed(peer_uid: u32, owner_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == owner_uid
}

/// Reads `SO_PEERCRED` and applies [`peer_allowed`].
pub fn check_peer(stream: &UnixStream, owner_uid: u32) -> Result<Peer, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    if peer_allowed(peer.uid, owner_uid) {
        Ok(peer)
    } else {
        Err(format!(
            "peer uid {} is neither root nor the owner (uid {owner_uid})",
            peer.uid
        ))
    }
}

/// Binds the helper socket: makes the parent directory if it is missing
/// (0700, owned by the owner), removes a stale socket (refusing when a live
/// helper still answers on it, or when the path is not a socket at all),
/// binds, then sets the socket to 0600 and hands it to the owner.
pub fn bind(cfg: &ops::HelperConfig) -> Result<UnixListener, ServerError> {
    let path = cfg.socket.as_path();
    banger_paths::Layout::check_socket_path(path).map_err(ServerError::SocketPath)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))
                .map_err(io_err("chmod", parent))?;
            chown_owner(cfg, parent)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::AlreadyRunning(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket", path))?;
            tracing::info!(socket = %path.display(), "removed stale socket");
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", path)(e)),
    }
    let std_listener =
        std::os::unix::net::UnixListener::bind(path).map_err(io_err("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", path))?;
    chown_owner(cfg, path)?;
    std_listener
        .set_nonblocking(true)
        .map_err(io_err("set non-blocking", path))?;
    UnixListener::from_std(std_listener).map_err(io_err("register", path))
}

fn chown_owner(cfg: &ops::HelperConfig, path: &Path) -> Result<(), ServerError> {
    match std::os::unix::fs::chown(path, Some(cfg.owner_uid), Some(cfg.owner_gid)) {
        Ok(()) => Ok(()),
        // Unprivileged test mode: the owner is (normally) us already.
        Err(e) if !cfg.privileged => {
            tracing::warn!(path = %path.display(), error = %e, "cannot chown to the owner");
            Ok(())
        }
        Err(e) => Err(io_err("chown", path)(e)),
    }
}

/// The router: `/v1/op` for every method (non-POST is refused inside, so
/// that it too gets an op id and a log line), and a JSON 404 elsewhere.
pub fn router(helper: Arc<Helper>) -> Router {
    Router::new()
        .route(OP_PATH, any(handle_op))
        .fallback(fallback)
        .with_state(helper)
}

/// Accepts connections until `shutdown` resolves, then stops accepting,
/// removes the socket and waits (up to [`DRAIN_TIMEOUT`]) for in-flight
/// calls. Running VMMs are daemonized and are never touched.
pub async fn serve(
    listener: UnixListener,
    helper: Arc<Helper>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let app = router(helper.clone());
    let graceful = GracefulShutdown::new();
    let owner = helper.config.owner_uid;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let peer = match check_peer(&stream, owner) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(reason = %why, "refused connection");
                drop(stream);
                continue;
            }
        };
        let svc = TowerToHyperService::new(app.clone().layer(Extension(peer)));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(&helper.config.socket);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("in-flight helper calls did not finish; exiting anyway");
        }
    }
}

/// The op id of a call: the caller's when it is sane, a fresh one otherwise.
pub fn adopt_op_id(headers: &HeaderMap) -> String {
    headers
        .get(OP_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map(str::to_string)
        .unwrap_or_else(mint_op_id)
}

/// A new op id: `op-` and 12 hex digits.
pub fn mint_op_id() -> String {
    format!("op-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The wire name of an error code (`bad_request`...), for the log line.
fn code_name(code: banger_api::ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Short description of what a request targets, for the log line.
fn subject(req: &HelperRequest) -> String {
    match req {
        HelperRequest::Ping => String::new(),
        HelperRequest::EnsureBridge { name, ip, prefix } => format!("{name} {ip}/{prefix}"),
        HelperRequest::CreateTap { name, bridge } => format!("{name} on {bridge}"),
        HelperRequest::DeleteTap { name } => name.clone(),
        HelperRequest::ClaimTap { pool, vm_id, .. } => format!("{pool} for vm {vm_id}"),
        HelperRequest::ReleaseTap { vm_id, pool, .. } => format!("vm {vm_id} to {pool}"),
        HelperRequest::LaunchQemu { config } => format!("vm {}", config.vm_id),
        HelperRequest::SignalVmm { vm_id, pid, signal } => format!("vm {vm_id} pid {pid} {signal}"),
        HelperRequest::KillVmm { vm_id, pid } => format!("vm {vm_id} pid {pid}"),
        HelperRequest::ChownToOwner { path } => path.display().to_string(),
        HelperRequest::CreateDmSnapshot { vm_id, .. } => format!("vm {vm_id}"),
        HelperRequest::RemoveDmSnapshot { handle } => format!("{} {}", handle.name, handle.dev),
        HelperRequest::FsckSnapshot { dev } => dev.clone(),
        HelperRequest::LaunchFirecracker(spec) => format!(
            "vm {} ({})",
            spec.vm_id,
            if spec.jailer { "jailer" } else { "direct" }
        ),
        HelperRequest::CleanupFirecracker { vm_id } => format!("vm {vm_id}"),
        HelperRequest::EnsureNat { vm_id, ip, bridge } => {
            format!("vm {vm_id} {ip} via {bridge}")
        }
        HelperRequest::RemoveNat { vm_id } => format!("vm {vm_id}"),
        HelperRequest::SyncResolverRouting { bridge, server } => {
            format!("~vm on {bridge} to {server}")
        }
    }
}

fn respond(op_id: &str, result: Result<Response, ApiError>) -> Response {
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let status = StatusCode::from_u16(e.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(e.with_op_id(op_id))).into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(op_id) {
        resp.headers_mut().insert(OP_ID_HEADER, v);
    }
    resp
}

fn log_call(
    op: &str,
    op_id: &str,
    subject: &str,
    peer: Peer,
    started: Instant,
    result: &Result<Response, ApiError>,
) {
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(_) => tracing::info!(
            op,
            op_id,
            subject,
            peer_uid = peer.uid,
            elapsed_ms,
            "helper op completed"
        ),
        Err(e) => tracing::warn!(
            op,
            op_id,
            subject,
            peer_uid = peer.uid,
            elapsed_ms,
            code = code_name(e.code),
            error = %e.message,
            "helper op failed"
        ),
    }
}

async fn handle_op(
    State(helper): State<Arc<Helper>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let op_id = adopt_op_id(&headers);
    if method != Method::POST {
        let res = Err(ApiError::bad_request(format!(
            "{method} {OP_PATH} is not supported; use POST"
        )));
        log_call("invalid", &op_id, "", peer, started, &res);
        return respond(&op_id, res);
    }
    let req = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => serde_json::from_slice::<HelperRequest>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid helper request: {e}"))),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read request body (limit {MAX_BODY_BYTES} bytes): {e}"
        ))),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            let res = Err(e);
            log_call("invalid", &op_id, "", peer, started, &res);
            return respond(&op_id, res);
        }
    };
    // The op runs in its own task: a client that hangs up mid-call does not
    // cancel a half-done privileged operation, and the call is still logged.
    let task_op_id = op_id.clone();
    let task = tokio::spawn(async move {
        let op = req.op_name();
        let subject = subject(&req);
        let res = ops::execute(&helper, req)
            .await
            .map(|r| (StatusCode::OK, Json(r)).into_response());
        log_call(op, &task_op_id, &subject, peer, started, &res);
        res
    });
    let res = task
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("helper op panicked: {e}"))));
    respond(&op_id, res)
}

async fn fallback(
    Extension(peer): Extension<Peer>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let started = Instant::now();
    let op_id = adopt_op_id(&headers);
    let res = Err(ApiError::not_found(format!(
        "no route {method} {}; the helper serves POST {OP_PATH}",
        uri.path()
    )));
    log_call("unknown_route", &op_id, uri.path(), peer, started, &res);
    respond(&op_id, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_policy() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    #[tokio::test]
    async fn check_peer_reads_so_peercred() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let (a, _b) = UnixStream::pair().unwrap();
        let p = check_peer(&a, me).unwrap();
        assert_eq!(p.uid, me);
        assert_eq!(p.pid, Some(std::process::id() as i32));
        // With a made-up owner, we pass only because we might be root.
        let fake_owner = if me == 4242 { 4243 } else { 4242 };
        assert_eq!(check_peer(&a, fake_owner).is_ok(), me == 0);
    }

    #[test]
    fn op_ids_are_adopted_only_when_sane() {
        let mut h = HeaderMap::new();
        let minted = adopt_op_id(&h);
        assert!(minted.starts_with("op-") && minted.len() == 15, "{minted}");
        h.insert(OP_ID_HEADER, HeaderValue::from_static("op-abc123"));
        assert_eq!(adopt_op_id(&h), "op-abc123");
        h.insert(OP_ID_HEADER, HeaderValue::from_static("bad id with spaces"));
        assert_ne!(adopt_op_id(&h), "bad id with spaces");
        let long = "a".repeat(65);
        h.insert(OP_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_ne!(adopt_op_id(&h), long);
    }
}
