//! The HTTP/JSON API over a Unix socket: listener, peer check, op ids,
//! error bodies.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use banger_api::{ApiError, OP_ID_HEADER};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tracing::Instrument;

/// The op id of the request being served (from the client's header, or
/// minted here). Logged on every line, returned in every error body, and
/// forwarded to the root helper.
#[derive(Debug, Clone)]
pub struct OpId(pub String);

/// A failed request: the API error becomes `{code, message, op_id}` with
/// the matching HTTP status.
pub struct Fail(pub ApiError);

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Fail {
        Fail(e)
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.0.clone())).into_response();
        resp.extensions_mut().insert(self.0);
        resp
    }
}

pub fn mint_op_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 4];
    rand::rng().fill_bytes(&mut b);
    format!(
        "op-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn valid_op_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Adopts or mints the op id, stamps it on the response and on any error
/// body, and logs one line per request.
pub async fn op_id_layer(mut req: Request, next: Next) -> Response {
    let op_id = req
        .headers()
        .get(OP_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_op_id(s))
        .map(str::to_string)
        .unwrap_or_else(mint_op_id);
    req.extensions_mut().insert(OpId(op_id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", op_id = %op_id);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span).await;
    if let Some(err) = resp.extensions().get::<ApiError>().cloned() {
        let status = resp.status();
        let body = err.clone().with_op_id(op_id.clone());
        resp = (status, Json(body)).into_response();
        tracing::warn!(op_id = %op_id, %method, %path, status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64, error = %err.message, "request failed");
    } else {
        tracing::debug!(op_id = %op_id, %method, %path, status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64, "request");
    }
    if let Ok(v) = HeaderValue::from_str(&op_id) {
        resp.headers_mut().insert(OP_ID_HEADER, v);
    }
    resp
}

/// Only root and the owner may talk to the daemon.
pub fn peer_allowed(peer_uid: u32, owner_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == owner_uid
}

/// Binds `path` (0600) and serves `app` until `shutdown` resolves.
pub async fn serve(
    path: &std::path::Path,
    owner_uid: u32,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    banger_paths::Layout::check_socket_path(path).map_err(anyhow::Error::msg)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    let app = Arc::new(app);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r.context("accept")?,
            _ = &mut shutdown => break,
        };
        match stream.peer_cred() {
            Ok(cred) if peer_allowed(cred.uid(), owner_uid) => {}
            Ok(cred) => {
                tracing::warn!(
                    peer_uid = cred.uid(),
                    "refused connection from a user that is neither root nor the owner"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused connection: cannot read peer credentials");
                continue;
            }
        }
        let svc = TowerToHyperService::new((*app).clone());
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// A streaming body of newline-delimited JSON from a channel.
pub fn ndjson_body<T: serde::Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> Body {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        let mut line = serde_json::to_vec(&item).expect("events serialise");
        line.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
            rx,
        ))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_owner_pass() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn op_ids_are_minted_and_checked() {
        let id = mint_op_id();
        assert!(id.starts_with("op-") && id.len() == 11, "{id}");
        assert!(valid_op_id(&id));
        assert!(!valid_op_id(""));
        assert!(!valid_op_id("op id with spaces"));
        assert!(!valid_op_id(&"x".repeat(65)));
    }
}
