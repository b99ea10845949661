//! A typed client for bangerd's HTTP/JSON API over its Unix socket.
//!
//! One connection per request keeps the client simple and stateless; the
//! socket is local, so connecting costs microseconds.

use std::path::{Path, PathBuf};

use banger_api::{ApiError, ExecEvent, LogEvent, LogsQuery, OP_ID_HEADER};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bangerd at {socket}: {source} (start it with `banger daemon start`)")]
    Unreachable {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error body.
    #[error("{0}")]
    Api(ApiError),
    #[error("bad answer from bangerd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The daemon's error, when the daemon refused the request.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable {
                socket: self.socket.display().to_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("http://localhost{}{path}", banger_api::API_PREFIX))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(format!("request {path}: {e}")))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from(resp).await)
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(format!("read body: {e}")))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("decode answer of {path}: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).expect("request bodies serialise");
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).expect("request bodies serialise");
        self.json(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    /// Starts a streaming exec; read events with [`ExecStream::next`].
    pub async fn exec(
        &self,
        vm: &str,
        req: &banger_api::ExecRequest,
    ) -> Result<ExecStream, ClientError> {
        let body = serde_json::to_vec(req).expect("exec request serialises");
        let resp = self
            .send(Method::POST, &format!("/vms/{vm}/exec"), Some(body))
            .await?;
        Ok(EventStream::new(resp.into_body(), "exec stream"))
    }

    /// Reads (or, with `follow`, follows) a VM's log; read events with
    /// [`EventStream::next`]. The stream ends with one `end` event.
    pub async fn logs(&self, vm: &str, q: &LogsQuery) -> Result<LogStream, ClientError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/vms/{vm}/logs?{}", q.to_query()),
                None,
            )
            .await?;
        Ok(EventStream::new(resp.into_body(), "log stream"))
    }
}

async fn error_from(resp: hyper::Response<Incoming>) -> ClientError {
    let status = resp.status();
    let op_id = resp
        .headers()
        .get(OP_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return ClientError::Protocol(format!("read error body: {e}")),
    };
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(mut e) => {
            if e.op_id.is_empty() {
                e.op_id = op_id;
            }
            ClientError::Api(e)
        }
        Err(_) => ClientError::Protocol(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        )),
    }
}

/// The event stream of one exec: newline-delimited [`ExecEvent`]s.
pub type ExecStream = EventStream<ExecEvent>;
/// The event stream of `vm logs`: newline-delimited [`LogEvent`]s.
pub type LogStream = EventStream<LogEvent>;

/// A streamed answer of newline-delimited JSON events.
pub struct EventStream<T> {
    body: Incoming,
    buf: BytesMut,
    what: &'static str,
    _event: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> EventStream<T> {
    fn new(body: Incoming, what: &'static str) -> Self {
        EventStream {
            body,
            buf: BytesMut::new(),
            what,
            _event: std::marker::PhantomData,
        }
    }

    /// The next event, or `None` when the daemon closed the stream.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let ev = serde_json::from_slice(&line[..pos])
                    .map_err(|e| ClientError::Protocol(format!("{}: {e}", self.what)))?;
                return Ok(Some(ev));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Err(ClientError::Protocol(format!("{}: {e}", self.what))),
                None => return Ok(None),
            }
        }
    }
}
