//! Workspaces: ship a host git checkout into a running VM, bring the
//! guest's edits back as a patch.
//!
//! Prepare reads the repo with git (its index decides what ships, see
//! `banger_workspace::select`), writes a tar stream on a blocking thread,
//! and pipes it to the guest agent, which extracts it at the guest path. No
//! SSH and no file-by-file copying: one stream, no encryption on a channel
//! that never leaves the host.

use std::io::Write;
use std::time::{Duration, Instant};

use banger_api::{
    validate_guest_path, ApiError, ExportWorkspaceRequest, ExportWorkspaceResult,
    PrepareWorkspaceRequest, PrepareWorkspaceResult, WorkspaceInfo, WorkspaceMode,
    DEFAULT_GUEST_PATH,
};
use banger_store::VmRecord;
use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::daemon::Shared;
use crate::vm::{self, agent_for, is_running, spawn_detached};

/// How long the agent may take to answer once the last byte went out
/// (flushing what it extracted).
const EXTRACT_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes per chunk handed from the tar writer to the agent stream.
const PIPE_CHUNK: usize = 1024 * 1024;

/// The workspace recorded with a VM, if any (an unreadable record is
/// treated as none, and logged).
pub fn recorded(rec: &VmRecord) -> Option<WorkspaceInfo> {
    let json = rec.workspace_json.as_deref()?;
    match serde_json::from_str(json) {
        Ok(ws) => Some(ws),
        Err(e) => {
            tracing::warn!(vm = %rec.name, error = %e, "unreadable workspace record; ignoring it");
            None
        }
    }
}

fn running(d: &Shared, name: &str) -> Result<VmRecord, ApiError> {
    let rec = vm::find(d, name)?;
    if !is_running(d, &rec) {
        return Err(ApiError::conflict(format!(
            "vm {name:?} is not running; start it with `banger vm start {name}`"
        )));
    }
    Ok(rec)
}

/// `POST /vms/{name}/workspace`. Runs to the end even if the client goes
/// away: a transfer cut mid-stream would leave the agent waiting.
pub async fn prepare(
    d: Shared,
    name: String,
    req: PrepareWorkspaceRequest,
) -> Result<PrepareWorkspaceResult, ApiError> {
    let guest_path = req
        .guest_path
        .clone()
        .unwrap_or_else(|| DEFAULT_GUEST_PATH.to_string());
    validate_guest_path(&guest_path).map_err(ApiError::bad_request)?;
    if !req.source_path.starts_with('/') {
        return Err(ApiError::bad_request(format!(
            "source path {:?} must be absolute",
            req.source_path
        )));
    }
    let rec = vm::find(&d, &name)?;
    let lock = d.vm_lock(&rec.id);
    spawn_detached(async move {
        let _g = lock.lock().await;
        let rec = running(&d, &name)?;
        let started = Instant::now();
        let source = std::path::PathBuf::from(&req.source_path);
        let include_untracked = req.include_untracked;
        let (repo, sel) = tokio::task::spawn_blocking(move || {
            let repo = banger_workspace::open(&source)?;
            let sel = banger_workspace::select(&repo, include_untracked)?;
            Ok::<_, banger_workspace::WorkspaceError>((repo, sel))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

        let agent = agent_for(&d, &rec, Duration::from_secs(10)).await?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let files = sel.files.len() as u64;
        let untracked = sel.untracked as u64;
        let skipped: Vec<String> = sel
            .skipped
            .iter()
            .map(|(p, why)| format!("{} ({why})", p.display()))
            .collect();
        let head = repo.head.clone();
        let root = repo.root.display().to_string();
        let writer = tokio::task::spawn_blocking(move || {
            let mut out = ChanWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(PIPE_CHUNK),
            };
            let res = banger_workspace::write_tar(&repo, &sel, true, &mut out)
                .map_err(|e| e.to_string())
                .and_then(|stats| out.flush().map(|_| stats).map_err(|e| e.to_string()));
            if let Err(e) = &res {
                // The reader turns this into a canceled upload, not a
                // short archive the agent would accept.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.clone())));
            }
            res
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
        let clear = req.mode == WorkspaceMode::FullCopy;
        let sent = agent
            .tar_in(&guest_path, clear, reader, EXTRACT_ANSWER_TIMEOUT)
            .await;
        let wrote = writer
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = wrote {
            return Err(ApiError::failed(format!("reading the repo at {root}: {e}")));
        }
        let report = sent.map_err(|e| {
            ApiError::failed(format!(
                "copying the repo into vm {name:?} at {guest_path}: {e}"
            ))
        })?;

        // Trust the repo's mise config in the guest; best effort by design.
        let trust = banger_workspace::guest::mise_trust_argv(&guest_path);
        match agent.exec(trust, vec![], None).await {
            Ok(stream) => {
                if let Err(e) = stream.collect().await {
                    tracing::debug!(vm = %name, error = %e, "mise trust did not finish");
                }
            }
            Err(e) => tracing::debug!(vm = %name, error = %e, "mise trust did not run"),
        }

        let ws = WorkspaceInfo {
            guest_path: guest_path.clone(),
            source_path: root,
            head_commit: head,
            mode: req.mode,
            include_untracked,
            prepared_at: crate::now_unix(),
        };
        let json = serde_json::to_string(&ws).map_err(|e| ApiError::internal(e.to_string()))?;
        d.store
            .set_vm_workspace(&rec.id, Some(&json))
            .map_err(|e| ApiError::internal(format!("state database: {e}")))?;
        tracing::info!(vm = %name, files, entries = report.entries, bytes = report.bytes,
            ms = started.elapsed().as_millis() as u64, "workspace prepared");
        Ok(PrepareWorkspaceResult {
            workspace: ws,
            files,
            untracked,
            entries: report.entries,
            bytes: report.bytes,
            skipped,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    })
    .await
}

/// `POST /vms/{name}/workspace/export`: the guest's changes as a patch.
pub async fn export(
    d: Shared,
    name: String,
    req: ExportWorkspaceRequest,
) -> Result<ExportWorkspaceResult, ApiError> {
    let rec = running(&d, &name)?;
    let guest_path = match (&req.guest_path, recorded(&rec)) {
        (Some(p), _) => p.clone(),
        (None, Some(ws)) => ws.guest_path,
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "vm {name:?} has no workspace; prepare one with `banger vm workspace prepare {name} <repo>` or pass --guest-path"
            )))
        }
    };
    validate_guest_path(&guest_path).map_err(ApiError::bad_request)?;
    let argv = banger_workspace::guest::export_argv(&guest_path, req.base_commit.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let agent = agent_for(&d, &rec, Duration::from_secs(10)).await?;
    let out = agent
        .exec(argv, vec![], None)
        .await
        .map_err(|e| ApiError::failed(format!("export from vm {name:?}: {e}")))?
        .collect()
        .await
        .map_err(|e| ApiError::failed(format!("export from vm {name:?}: {e}")))?;
    if out.code != 0 {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(ApiError::failed(format!(
            "git in vm {name:?} failed to export {guest_path} (exit {}): {}",
            out.code,
            err.trim()
        )));
    }
    Ok(ExportWorkspaceResult {
        patch: base64::engine::general_purpose::STANDARD.encode(&out.stdout),
        guest_path,
        base: req.base_commit.unwrap_or_else(|| "HEAD".into()),
    })
}

/// The write end of the tar pipe: gathers writes into chunks of
/// [`PIPE_CHUNK`] bytes and hands each over whole (moved, not copied).
struct ChanWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChanWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(full)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_sends_whole_chunks_and_loses_nothing() {
        let (tx, mut rx) = mpsc::channel(64);
        let input: Vec<u8> = (0..(PIPE_CHUNK * 2 + 12_345) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = input.clone();
        std::thread::spawn(move || {
            let mut w = ChanWriter {
                tx,
                buf: Vec::with_capacity(PIPE_CHUNK),
            };
            for piece in sent.chunks(700_001) {
                w.write_all(piece).unwrap();
            }
            w.flush().unwrap();
        })
        .join()
        .unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            let chunk = chunk.unwrap();
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, input);
        assert_eq!(sizes, [PIPE_CHUNK, PIPE_CHUNK, 12_345]);
    }
}
