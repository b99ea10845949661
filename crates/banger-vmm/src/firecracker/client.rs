//! A typed client for one Firecracker process's API socket.
//!
//! Same transport as `banger-client`: hyper's HTTP/1.1 connection API over a
//! tokio `UnixStream`, one connection per request (the socket is local, so
//! connecting costs microseconds, and no connection state can go stale
//! while Firecracker restarts). Every request runs under a timeout: a wedged
//! VMM must turn into an error, not a hung daemon task.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::models::{
    ActionType, BootSource, Drive, EntropyDevice, FirecrackerVersion, InstanceActionInfo,
    InstanceInfo, Logger, MachineConfiguration, Metrics, NetworkInterface, PartialDrive,
    SerialDevice, SnapshotCreateParams, SnapshotLoadParams, Vm, VmState, Vsock,
};

/// How long an ordinary API call may take. Firecracker answers
/// configuration calls in microseconds and `InstanceStart` in milliseconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long snapshot create/load may take: they write or map all of guest
/// memory, which for a large guest on a slow disk takes minutes.
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum FcError {
    #[error("cannot connect to the firecracker api socket {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Firecracker refused the request; `fault_message` is its reason.
    #[error("firecracker refused {method} {path} (http {status}): {fault_message}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        fault_message: String,
    },
    #[error("bad answer from firecracker to {method} {path}: {detail}")]
    BadResponse {
        method: Method,
        path: String,
        detail: String,
    },
    #[error("firecracker did not answer {method} {path} within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("cannot encode the body of {method} {path}: {source}")]
    Encode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("firecracker api socket {} did not answer within {waited:?}: {last}", .socket.display())]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        /// The error of the last attempt.
        last: Box<FcError>,
    },
}

impl FcError {
    /// Firecracker's own explanation, when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            FcError::Api { fault_message, .. } => Some(fault_message),
            _ => None,
        }
    }
}

/// The API of one Firecracker process.
#[derive(Debug, Clone)]
pub struct FcClient {
    socket: PathBuf,
    timeout: Duration,
    snapshot_timeout: Duration,
}

impl FcClient {
    pub fn new(socket: impl Into<PathBuf>) -> FcClient {
        FcClient {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            snapshot_timeout: DEFAULT_SNAPSHOT_TIMEOUT,
        }
    }

    /// The limit for every call except snapshot create/load.
    pub fn with_timeout(mut self, timeout: Duration) -> FcClient {
        self.timeout = timeout;
        self
    }

    /// The limit for snapshot create/load.
    pub fn with_snapshot_timeout(mut self, timeout: Duration) -> FcClient {
        self.snapshot_timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The limit for snapshot create/load.
    pub fn snapshot_timeout(&self) -> Duration {
        self.snapshot_timeout
    }

    pub async fn put_machine_config(&self, body: &MachineConfiguration) -> Result<(), FcError> {
        self.put("/machine-config", body).await
    }

    pub async fn put_boot_source(&self, body: &BootSource) -> Result<(), FcError> {
        self.put("/boot-source", body).await
    }

    /// `PUT /drives/{drive_id}`, the id taken from the body.
    pub async fn put_drive(&self, body: &Drive) -> Result<(), FcError> {
        self.put(&format!("/drives/{}", body.drive_id), body).await
    }

    /// `PATCH /drives/{drive_id}` (post-boot, a loaded snapshot included),
    /// the id taken from the body.
    pub async fn patch_drive(&self, body: &PartialDrive) -> Result<(), FcError> {
        let path = format!("/drives/{}", body.drive_id);
        let body = encode(&Method::PATCH, &path, body)?;
        self.request(Method::PATCH, &path, Some(body), self.timeout)
            .await
            .map(drop)
    }

    /// `PUT /network-interfaces/{iface_id}`, the id taken from the body.
    pub async fn put_network_interface(&self, body: &NetworkInterface) -> Result<(), FcError> {
        self.put(&format!("/network-interfaces/{}", body.iface_id), body)
            .await
    }

    pub async fn put_vsock(&self, body: &Vsock) -> Result<(), FcError> {
        self.put("/vsock", body).await
    }

    pub async fn put_logger(&self, body: &Logger) -> Result<(), FcError> {
        self.put("/logger", body).await
    }

    pub async fn put_metrics(&self, body: &Metrics) -> Result<(), FcError> {
        self.put("/metrics", body).await
    }

    pub async fn put_serial(&self, body: &SerialDevice) -> Result<(), FcError> {
        self.put("/serial", body).await
    }

    pub async fn put_entropy(&self, body: &EntropyDevice) -> Result<(), FcError> {
        self.put("/entropy", body).await
    }

    /// `PUT /actions`.
    pub async fn action(&self, body: InstanceActionInfo) -> Result<(), FcError> {
        self.put("/actions", &body).await
    }

    /// Boots the configured microVM.
    pub async fn instance_start(&self) -> Result<(), FcError> {
        self.action(InstanceActionInfo::new(ActionType::InstanceStart))
            .await
    }

    /// Asks the guest to shut down (x86_64 only).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), FcError> {
        self.action(InstanceActionInfo::new(ActionType::SendCtrlAltDel))
            .await
    }

    /// `PATCH /vm`: pause or resume a running microVM.
    pub async fn patch_vm(&self, state: VmState) -> Result<(), FcError> {
        let body = encode(&Method::PATCH, "/vm", &Vm { state })?;
        self.request(Method::PATCH, "/vm", Some(body), self.timeout)
            .await
            .map(drop)
    }

    /// `PUT /snapshot/create`; the microVM must be paused first.
    pub async fn create_snapshot(&self, body: &SnapshotCreateParams) -> Result<(), FcError> {
        let path = "/snapshot/create";
        let body = encode(&Method::PUT, path, body)?;
        self.request(Method::PUT, path, Some(body), self.snapshot_timeout)
            .await
            .map(drop)
    }

    /// `PUT /snapshot/load`; only a fresh Firecracker process accepts it.
    pub async fn load_snapshot(&self, body: &SnapshotLoadParams) -> Result<(), FcError> {
        let path = "/snapshot/load";
        let body = encode(&Method::PUT, path, body)?;
        self.request(Method::PUT, path, Some(body), self.snapshot_timeout)
            .await
            .map(drop)
    }

    /// `GET /`.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, FcError> {
        self.get("/").await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<FirecrackerVersion, FcError> {
        self.get("/version").await
    }

    async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), FcError> {
        let body = encode(&Method::PUT, path, body)?;
        self.request(Method::PUT, path, Some(body), self.timeout)
            .await
            .map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, FcError> {
        let bytes = self.request(Method::GET, path, None, self.timeout).await?;
        serde_json::from_slice(&bytes).map_err(|e| FcError::BadResponse {
            method: Method::GET,
            path: path.to_string(),
            detail: format!("{e}: {}", String::from_utf8_lossy(&bytes).trim()),
        })
    }

    /// Sends one request with an already encoded JSON body and returns the
    /// body of a 2xx answer. Used by [`super::launch::apply`] to replay a plan.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, FcError> {
        match tokio::time::timeout(timeout, self.exchange(method.clone(), path, body)).await {
            Ok(r) => r,
            Err(_) => Err(FcError::Timeout {
                method,
                path: path.to_string(),
                timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, FcError> {
        let bad = |detail: String| FcError::BadResponse {
            method: method.clone(),
            path: path.to_string(),
            detail,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| FcError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| bad(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Origin-form target ("PUT /drives/rootfs HTTP/1.1") with a Host
        // header, exactly what `curl --unix-socket` sends and what
        // Firecracker's documentation shows.
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "localhost")
            .header("accept", "application/json");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| bad(format!("building the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| bad(format!("sending: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| bad(format!("reading the body: {e}")))?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let fault_message = match serde_json::from_slice::<super::models::Error>(&bytes) {
            Ok(e) if !e.fault_message.is_empty() => e.fault_message,
            _ => String::from_utf8_lossy(&bytes).trim().to_string(),
        };
        Err(FcError::Api {
            method,
            path: path.to_string(),
            status,
            fault_message,
        })
    }
}

fn encode<B: Serialize>(method: &Method, path: &str, body: &B) -> Result<Vec<u8>, FcError> {
    serde_json::to_vec(body).map_err(|source| FcError::Encode {
        method: method.clone(),
        path: path.to_string(),
        source,
    })
}

/// Polls until the API socket at `socket` answers `GET /` or `deadline`
/// passes. Firecracker binds its socket a little after exec, so a launcher
/// calls this between spawning it and configuring the VM. It cannot tell a
/// slow start from a dead process: the caller races it against the child.
pub async fn wait_for_socket(socket: &Path, deadline: Instant) -> Result<InstanceInfo, FcError> {
    const POLL: Duration = Duration::from_millis(20);
    const PER_TRY: Duration = Duration::from_secs(1);
    let started = Instant::now();
    let client = FcClient::new(socket);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match client
            .clone()
            .with_timeout(left.min(PER_TRY))
            .describe_instance()
            .await
        {
            Ok(info) => return Ok(info),
            Err(e) => e,
        };
        if Instant::now() + POLL >= deadline {
            return Err(FcError::NotReady {
                socket: socket.to_path_buf(),
                waited: started.elapsed(),
                last: Box::new(err),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests;
