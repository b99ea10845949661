//! In-flight and finished asynchronous operations (vm create, image build).
//!
//! The daemon answers an async request at once with the operation's id; the
//! CLI polls `GET /v1/operations/{id}` and shows each stage as it finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use banger_api::{ApiError, OperationInfo, StageInfo, VmInfo};

/// How many finished operations are remembered for late pollers.
const KEEP_FINISHED: usize = 64;

struct Entry {
    info: OperationInfo,
    started: Instant,
    stage_started: Instant,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<String, Entry>>>,
}

/// A handle the worker uses to report progress on its operation.
#[derive(Clone)]
pub struct OpHandle {
    id: String,
    reg: Registry,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new operation; its first stage is `stage`.
    pub fn start(&self, id: &str, kind: &str, target: &str, stage: &str) -> OpHandle {
        let now = Instant::now();
        let info = OperationInfo {
            id: id.to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            stage: stage.to_string(),
            stages: Vec::new(),
            progress: None,
            notes: Vec::new(),
            done: false,
            error: None,
            vm: None,
            started_at: crate::now_unix(),
            elapsed_ms: 0,
        };
        let mut map = self.lock();
        prune(&mut map);
        map.insert(
            id.to_string(),
            Entry {
                info,
                started: now,
                stage_started: now,
            },
        );
        OpHandle {
            id: id.to_string(),
            reg: self.clone(),
        }
    }

    pub fn get(&self, id: &str) -> Option<OperationInfo> {
        self.lock().get(id).map(snapshot)
    }

    /// Every remembered operation, oldest first.
    pub fn list(&self) -> Vec<OperationInfo> {
        let mut all: Vec<OperationInfo> = self.lock().values().map(snapshot).collect();
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        all
    }
}

fn snapshot(e: &Entry) -> OperationInfo {
    let mut info = e.info.clone();
    if !info.done {
        info.elapsed_ms = e.started.elapsed().as_millis() as u64;
    }
    info
}

fn prune(map: &mut HashMap<String, Entry>) {
    let mut finished: Vec<(String, Instant)> = map
        .iter()
        .filter(|(_, e)| e.info.done)
        .map(|(k, e)| (k.clone(), e.started))
        .collect();
    if finished.len() <= KEEP_FINISHED {
        return;
    }
    finished.sort_by_key(|(_, t)| *t);
    for (k, _) in finished.iter().take(finished.len() - KEEP_FINISHED) {
        map.remove(k);
    }
}

impl OpHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn with<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.reg.lock().get_mut(&self.id).map(f)
    }

    /// Closes the running stage (recording its duration) and opens `next`.
    pub fn stage(&self, next: &str) {
        self.with(|e| {
            let done = StageInfo {
                name: e.info.stage.clone(),
                elapsed_ms: e.stage_started.elapsed().as_millis() as u64,
            };
            e.info.stages.push(done);
            e.info.stage = next.to_string();
            e.info.progress = None;
            e.stage_started = Instant::now();
        });
    }

    /// Adds a one-line note the CLI prints once (e.g. why a VM booted cold).
    pub fn note(&self, line: &str) {
        self.with(|e| e.info.notes.push(line.to_string()));
    }

    pub fn progress(&self, line: &str) {
        self.with(|e| e.info.progress = Some(line.to_string()));
    }

    /// Marks the operation finished, successfully or not.
    pub fn finish(&self, result: Result<Option<VmInfo>, ApiError>) {
        let op_id = self.id.clone();
        self.with(|e| {
            let last = StageInfo {
                name: e.info.stage.clone(),
                elapsed_ms: e.stage_started.elapsed().as_millis() as u64,
            };
            e.info.stages.push(last);
            e.info.done = true;
            e.info.progress = None;
            e.info.elapsed_ms = e.started.elapsed().as_millis() as u64;
            match result {
                Ok(vm) => e.info.vm = vm,
                Err(err) => e.info.error = Some(err.with_op_id(op_id)),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_recorded_in_order_with_final_error() {
        let reg = Registry::default();
        let op = reg.start("op-1", "vm.create", "box", "reserve");
        op.stage("disks");
        op.progress("copying");
        assert_eq!(
            reg.get("op-1").unwrap().progress.as_deref(),
            Some("copying")
        );
        op.stage("boot");
        op.finish(Err(ApiError::failed("guest did not boot")));
        let info = reg.get("op-1").unwrap();
        assert!(info.done);
        let names: Vec<_> = info.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["reserve", "disks", "boot"]);
        let err = info.error.unwrap();
        assert_eq!(err.op_id, "op-1");
        assert_eq!(err.message, "guest did not boot");
        assert_eq!(reg.list().len(), 1);
    }

    #[test]
    fn finished_operations_are_bounded() {
        let reg = Registry::default();
        for i in 0..(KEEP_FINISHED + 10) {
            reg.start(&format!("op-{i}"), "vm.create", "x", "s")
                .finish(Ok(None));
        }
        reg.start("op-last", "vm.create", "x", "s");
        assert!(reg.list().len() <= KEEP_FINISHED + 1);
        assert!(reg.get("op-last").is_some());
    }
}
