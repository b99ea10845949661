//! The daemon's side: a typed client for the helper socket.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_api::{ApiError, OP_ID_HEADER};
use banger_vmm::cow::{DmSnapshot, FsckOutcome};
use banger_vmm::jailer::{LaunchSpec, Launched};
use banger_vmm::qemu::QemuConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::proto::{HelperRequest, HelperResponse, OP_PATH};

/// Default limit for one call; a QEMU launch alone may take up to a minute.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a helper call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// Nothing is listening (or we may not connect).
    #[error("cannot reach banger-helper at {}: {source} (is it running? `banger daemon start` starts it)", path.display())]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The helper answered and refused or failed the op; carries its
    /// `{code, message, op_id}`.
    #[error("banger-helper: {0}")]
    Refused(ApiError),
    /// The call took longer than the client's timeout.
    #[error("banger-helper at {} did not answer within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    /// The connection broke or the answer was not what the protocol says.
    #[error("banger-helper at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
}

impl HelperError {
    /// The helper's own error, when it answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            HelperError::Refused(e) => Some(e),
            _ => None,
        }
    }

    /// An API error for the daemon to pass on: the helper's own when it
    /// answered, `operation_failed` (helper down, timeout) or `internal`
    /// (protocol breakage) otherwise.
    pub fn into_api_error(self) -> ApiError {
        match self {
            HelperError::Refused(e) => e,
            e @ (HelperError::Unreachable { .. } | HelperError::Timeout { .. }) => {
                ApiError::failed(e.to_string())
            }
            e @ HelperError::Protocol { .. } => ApiError::internal(e.to_string()),
        }
    }
}

/// A client for one helper socket. Cheap to clone; every call opens a fresh
/// connection, so a helper restart between calls is invisible.
#[derive(Debug, Clone)]
pub struct HelperClient {
    socket: PathBuf,
    timeout: Duration,
}

impl HelperClient {
    pub fn new(socket: impl Into<PathBuf>) -> HelperClient {
        HelperClient {
            socket: socket.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Overrides the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> HelperClient {
        self.timeout = timeout;
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Sends one request, tagged with `op_id`, and returns the helper's
    /// answer.
    pub async fn call(
        &self,
        op_id: &str,
        req: &HelperRequest,
    ) -> Result<HelperResponse, HelperError> {
        match tokio::time::timeout(self.timeout, self.call_inner(op_id, req)).await {
            Ok(r) => r,
            Err(_) => Err(HelperError::Timeout {
                path: self.socket.clone(),
                timeout: self.timeout,
            }),
        }
    }

    fn protocol(&self, message: impl Into<String>) -> HelperError {
        HelperError::Protocol {
            path: self.socket.clone(),
            message: message.into(),
        }
    }

    async fn call_inner(
        &self,
        op_id: &str,
        req: &HelperRequest,
    ) -> Result<HelperResponse, HelperError> {
        let body = serde_json::to_vec(req)
            .map_err(|e| self.protocol(format!("cannot encode request: {e}")))?;
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| HelperError::Unreachable {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(format!("handshake failed: {e}")))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(OP_PATH)
            .header(HOST, "banger-helper")
            .header(CONTENT_TYPE, "application/json");
        if !op_id.is_empty() {
            builder = builder.header(OP_ID_HEADER, op_id);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.protocol(format!("cannot build request: {e}")))?;
        let result = async {
            let resp = sender.send_request(request).await.map_err(|e| {
                let hint = if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                    " (the helper closed the connection; it only answers root and its owner)"
                } else {
                    ""
                };
                self.protocol(format!("request failed: {e}{hint}"))
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.protocol(format!("cannot read response: {e}")))?
                .to_bytes();
            if status.is_success() {
                serde_json::from_slice::<HelperResponse>(&bytes).map_err(|e| {
                    self.protocol(format!("unexpected response ({e}): {}", snippet(&bytes)))
                })
            } else {
                match serde_json::from_slice::<ApiError>(&bytes) {
                    Ok(api) => Err(HelperError::Refused(api)),
                    Err(_) => Err(self.protocol(format!(
                        "HTTP {status} without an error body: {}",
                        snippet(&bytes)
                    ))),
                }
            }
        }
        .await;
        conn_task.abort();
        result
    }

    async fn expect_done(&self, op_id: &str, req: HelperRequest) -> Result<(), HelperError> {
        match self.call(op_id, &req).await? {
            HelperResponse::Done => Ok(()),
            other => {
                Err(self.protocol(format!("unexpected answer to {}: {other:?}", req.op_name())))
            }
        }
    }

    /// Checks the helper is up; returns its version.
    pub async fn ping(&self, op_id: &str) -> Result<String, HelperError> {
        match self.call(op_id, &HelperRequest::Ping).await? {
            HelperResponse::Pong { version } => Ok(version),
            other => Err(self.protocol(format!("unexpected answer to ping: {other:?}"))),
        }
    }

    pub async fn ensure_bridge(
        &self,
        op_id: &str,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::EnsureBridge {
                name: name.to_string(),
                ip,
                prefix,
            },
        )
        .await
    }

    pub async fn create_tap(
        &self,
        op_id: &str,
        name: &str,
        bridge: &str,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::CreateTap {
                name: name.to_string(),
                bridge: bridge.to_string(),
            },
        )
        .await
    }

    pub async fn delete_tap(&self, op_id: &str, name: &str) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::DeleteTap {
                name: name.to_string(),
            },
        )
        .await
    }

    /// Turns the warm tap `pool` into the tap of `vm_id`.
    pub async fn claim_tap(
        &self,
        op_id: &str,
        pool: &str,
        vm_id: &str,
        bridge: &str,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::ClaimTap {
                pool: pool.to_string(),
                vm_id: vm_id.to_string(),
                bridge: bridge.to_string(),
            },
        )
        .await
    }

    /// Gives the tap of `vm_id` back to the pool as `pool`.
    pub async fn release_tap(
        &self,
        op_id: &str,
        vm_id: &str,
        pool: &str,
        bridge: &str,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::ReleaseTap {
                vm_id: vm_id.to_string(),
                pool: pool.to_string(),
                bridge: bridge.to_string(),
            },
        )
        .await
    }

    /// Starts the VM's QEMU; returns the VMM's pid.
    pub async fn launch_qemu(&self, op_id: &str, config: &QemuConfig) -> Result<u32, HelperError> {
        let req = HelperRequest::LaunchQemu {
            config: Box::new(config.clone()),
        };
        match self.call(op_id, &req).await? {
            HelperResponse::Launched { pid } => Ok(pid),
            other => Err(self.protocol(format!("unexpected answer to launch_qemu: {other:?}"))),
        }
    }

    /// Sends an allowlisted signal (`TERM`, `INT`, `HUP`, `QUIT`, `USR1`,
    /// `USR2`, `ABRT`, `KILL`) to the VMM of `vm_id`.
    pub async fn signal_vmm(
        &self,
        op_id: &str,
        vm_id: &str,
        pid: u32,
        signal: &str,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::SignalVmm {
                vm_id: vm_id.to_string(),
                pid,
                signal: signal.to_string(),
            },
        )
        .await
    }

    pub async fn kill_vmm(&self, op_id: &str, vm_id: &str, pid: u32) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::KillVmm {
                vm_id: vm_id.to_string(),
                pid,
            },
        )
        .await
    }

    pub async fn chown_to_owner(&self, op_id: &str, path: &Path) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::ChownToOwner {
                path: path.to_path_buf(),
            },
        )
        .await
    }

    /// Snapshots `base` (under `<state>/images/`) for `vm_id` with `cow`
    /// (under `<state>/vms/<vm_id>/`) as its store; returns the handle to
    /// keep for [`HelperClient::remove_dm_snapshot`].
    pub async fn create_dm_snapshot(
        &self,
        op_id: &str,
        vm_id: &str,
        base: &Path,
        cow: &Path,
    ) -> Result<DmSnapshot, HelperError> {
        let req = HelperRequest::CreateDmSnapshot {
            vm_id: vm_id.to_string(),
            base: base.to_path_buf(),
            cow: cow.to_path_buf(),
        };
        match self.call(op_id, &req).await? {
            HelperResponse::DmSnapshot(snap) => Ok(snap),
            other => Err(self.protocol(format!(
                "unexpected answer to create_dm_snapshot: {other:?}"
            ))),
        }
    }

    /// Starts the VM's Firecracker (jailed or direct, as `spec` says); the
    /// answer carries the pid, the socket paths to connect to and the paths
    /// to configure Firecracker with.
    pub async fn launch_firecracker(
        &self,
        op_id: &str,
        spec: &LaunchSpec,
    ) -> Result<Launched, HelperError> {
        let req = HelperRequest::LaunchFirecracker(spec.clone());
        match self.call(op_id, &req).await? {
            HelperResponse::FirecrackerLaunched(l) => Ok(l),
            other => Err(self.protocol(format!(
                "unexpected answer to launch_firecracker: {other:?}"
            ))),
        }
    }

    /// Removes a snapshot; safe to repeat after a partial removal.
    pub async fn remove_dm_snapshot(
        &self,
        op_id: &str,
        handle: &DmSnapshot,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::RemoveDmSnapshot {
                handle: handle.clone(),
            },
        )
        .await
    }

    /// Stops the VM's Firecracker if it still runs and removes its chroot
    /// and socket links. Idempotent.
    pub async fn cleanup_firecracker(&self, op_id: &str, vm_id: &str) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::CleanupFirecracker {
                vm_id: vm_id.to_string(),
            },
        )
        .await
    }

    /// `e2fsck -fy` on a snapshot device no VM has open.
    pub async fn fsck_snapshot(&self, op_id: &str, dev: &str) -> Result<FsckOutcome, HelperError> {
        let req = HelperRequest::FsckSnapshot {
            dev: dev.to_string(),
        };
        match self.call(op_id, &req).await? {
            HelperResponse::Fscked { outcome } => Ok(outcome),
            other => Err(self.protocol(format!("unexpected answer to fsck_snapshot: {other:?}"))),
        }
    }

    /// Outbound NAT for a VM's guest address, leaving through anything but
    /// `bridge`. Idempotent: repeat it on every start.
    pub async fn ensure_nat(
        &self,
        op_id: &str,
        vm_id: &str,
        ip: Ipv4Addr,
        bridge: &str,
    ) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::EnsureNat {
                vm_id: vm_id.to_string(),
                ip,
                bridge: bridge.to_string(),
            },
        )
        .await
    }

    /// Removes a VM's NAT rules (and banger's table with the last VM).
    /// Idempotent.
    pub async fn remove_nat(&self, op_id: &str, vm_id: &str) -> Result<(), HelperError> {
        self.expect_done(
            op_id,
            HelperRequest::RemoveNat {
                vm_id: vm_id.to_string(),
            },
        )
        .await
    }

    /// Routes `~vm` on `bridge` to `server` (`A.B.C.D[:PORT]`) through
    /// systemd-resolved. `Ok(None)` when done, `Ok(Some(why))` when the
    /// host has nothing to configure (no systemd-resolved).
    pub async fn sync_resolver_routing(
        &self,
        op_id: &str,
        bridge: &str,
        server: &str,
    ) -> Result<Option<String>, HelperError> {
        let req = HelperRequest::SyncResolverRouting {
            bridge: bridge.to_string(),
            server: server.to_string(),
        };
        match self.call(op_id, &req).await? {
            HelperResponse::Done => Ok(None),
            HelperResponse::Skipped { reason } => Ok(Some(reason)),
            other => Err(self.protocol(format!(
                "unexpected answer to sync_resolver_routing: {other:?}"
            ))),
        }
    }
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_socket_says_how_to_start_the_helper() {
        let dir = tempfile::tempdir().unwrap();
        let c = HelperClient::new(dir.path().join("nope.sock"));
        let e = c.ping("op-1").await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cannot reach banger-helper at"), "{msg}");
        assert!(msg.contains("nope.sock"), "{msg}");
        assert!(msg.contains("banger daemon start"), "{msg}");
        assert!(e.api_error().is_none());
        assert_eq!(
            e.into_api_error().code,
            banger_api::ErrorCode::OperationFailed
        );
    }
}
