//! `vm logs`: per-VM keepers that copy what a VMM writes to its raw files
//! (guest console, the VMM's own log) into capped, time-indexed stores
//! under `<vm dir>/logs/`, and the streams that read or follow them.
//!
//! A keeper runs from VMM launch (or re-adoption after a daemon restart)
//! until the VMM stops: every [`POLL`] it reads what was appended, stores it
//! with the time it read it, tells followers, and frees the consumed front
//! of the raw file (see [`crate::logstore`]). Daemon notes (launch, launch
//! failure, boot failure, exits) go into the VMM log too, as
//! `[banger] <time> ...` lines. The stores live in the VM's directory, so
//! they outlive stops and go with the VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use banger_api::{ApiError, LogEnd, LogEvent, LogSource, LogsQuery};
use banger_store::VmRecord;
use tokio::sync::{broadcast, mpsc, watch};

use crate::backend::Vmm;
use crate::daemon::Shared;
use crate::handles::Handles;
use crate::logstore::{self, Chunk, LogStore, Punch, RawTail};

/// The guest console keeps between half of this and this much.
pub const CONSOLE_CAP: u64 = 8 << 20;
/// The VMM's own log is small; it keeps less.
pub const VMM_CAP: u64 = 2 << 20;
/// How often a keeper looks for new output.
const POLL: Duration = Duration::from_millis(200);
/// One read of a raw file; a keeper reads at most [`READS_PER_TICK`] per
/// poll (20 MiB/s, far above what a serial console carries).
const READ_MAX: usize = 256 << 10;
const READS_PER_TICK: usize = 16;
/// The payload of one stream event.
const EVENT_MAX: usize = 64 << 10;
/// Chunks a follower may fall behind before it is told it lost some. The
/// channel holds them for the slowest follower, so this times [`READ_MAX`]
/// bounds the memory a stalled follower can pin (32 MiB).
const FOLLOW_BACKLOG: usize = 128;

/// QEMU's raw files in the VM dir (`-chardev file`, `-D`).
pub const QEMU_CONSOLE_RAW: &str = "console.raw";
pub const QEMU_VMM_RAW: &str = "vmm.raw";
/// Where QEMU wrote the console before banger kept logs; read once when
/// a VM started by an older daemon stops.
const LEGACY_QEMU_CONSOLE: &str = "console.log";

/// `<vm dir>/logs`.
pub fn dir(d: &Shared, rec: &VmRecord) -> PathBuf {
    d.cfg.layout.vm_dir(&rec.id).join("logs")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The raw files a VM's VMM writes.
#[derive(Debug, Clone, Default)]
pub struct RawFiles {
    pub console: Option<PathBuf>,
    pub vmm: Option<PathBuf>,
}

pub fn raw_files(d: &Shared, rec: &VmRecord, h: &Handles) -> RawFiles {
    let vm_dir = d.cfg.layout.vm_dir(&rec.id);
    match Vmm::of(&rec.vmm) {
        Vmm::Qemu => {
            let console = vm_dir.join(QEMU_CONSOLE_RAW);
            let legacy = vm_dir.join(LEGACY_QEMU_CONSOLE);
            RawFiles {
                console: Some(if !console.exists() && legacy.exists() {
                    legacy
                } else {
                    console
                }),
                vmm: Some(vm_dir.join(QEMU_VMM_RAW)),
            }
        }
        Vmm::Firecracker => RawFiles {
            console: Some(crate::firecracker::console_log(d, rec, h)),
            vmm: Some(crate::firecracker::vmm_log(d, rec, h)),
        },
    }
}

/// New output, as followers receive it.
#[derive(Debug)]
pub struct Published {
    pub source: LogSource,
    pub time_ms: i64,
    pub data: Vec<u8>,
}

/// A follower's view of new output.
type Subscription = broadcast::Receiver<Arc<Published>>;

/// One log: its store and the raw file it is fed from.
struct Feed {
    source: LogSource,
    store: LogStore,
    raw: Option<RawTail>,
    warned: bool,
}

/// The logs of one VM while its VMM runs.
pub struct Keeper {
    vm: String,
    /// Appends and the publishing of them happen under this lock, and so
    /// does a follower's read-then-subscribe: nothing is missed or doubled.
    feeds: Mutex<Vec<Feed>>,
    tx: Mutex<Option<broadcast::Sender<Arc<Published>>>>,
    stop: watch::Sender<bool>,
    /// Set before banger itself stops the VMM: its exit is then no news.
    expect_exit: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn cap_of(source: LogSource) -> u64 {
    match source {
        LogSource::Console => CONSOLE_CAP,
        LogSource::Vmm => VMM_CAP,
    }
}

impl Keeper {
    fn open(vm: &str, dir: &Path, raw: &RawFiles) -> std::io::Result<Keeper> {
        let mut feeds = Vec::new();
        for (source, raw) in [
            (LogSource::Console, &raw.console),
            (LogSource::Vmm, &raw.vmm),
        ] {
            feeds.push(Feed {
                source,
                store: LogStore::open(dir, source.as_str(), cap_of(source))?,
                raw: raw
                    .as_ref()
                    .map(|p| RawTail::new(p.clone(), logstore::pos_path(dir, source.as_str()))),
                warned: false,
            });
        }
        let (tx, _) = broadcast::channel(FOLLOW_BACKLOG);
        Ok(Keeper {
            vm: vm.to_string(),
            feeds: Mutex::new(feeds),
            tx: Mutex::new(Some(tx)),
            stop: watch::channel(false).0,
            expect_exit: AtomicBool::new(false),
            task: Mutex::new(None),
        })
    }

    fn publish(&self, source: LogSource, time_ms: i64, data: Vec<u8>) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(Arc::new(Published {
                source,
                time_ms,
                data,
            }));
        }
    }

    /// Copies what the raw files gained into the stores. Returns whether
    /// there was anything.
    fn pump(&self) -> bool {
        let mut feeds = lock(&self.feeds);
        let now = now_ms();
        let mut any = false;
        for f in feeds.iter_mut() {
            let Some(raw) = f.raw.as_mut() else { continue };
            for _ in 0..READS_PER_TICK {
                let data = match raw.read_new(READ_MAX) {
                    Ok(d) if d.is_empty() => break,
                    Ok(d) => d,
                    Err(e) => {
                        if !f.warned {
                            f.warned = true;
                            tracing::warn!(vm = %self.vm, file = %raw.path().display(), error = %e, "cannot read the vmm's log file");
                        }
                        break;
                    }
                };
                any = true;
                if let Err(e) = f.store.append(now, &data) {
                    if !f.warned {
                        f.warned = true;
                        tracing::warn!(vm = %self.vm, log = %f.source, error = %e, "cannot write the vm's log");
                    }
                }
                self.publish(f.source, now, data);
                match raw.commit() {
                    Ok(Punch::Working | Punch::Unsupported) => {}
                    Err(e) => {
                        tracing::warn!(vm = %self.vm, file = %raw.path().display(), error = %e,
                        "cannot free the copied part of the vmm's log file; it keeps growing")
                    }
                }
            }
        }
        any
    }

    /// Pumps until the raw files are copied; bounded, in case the VMM
    /// still writes (a kill that did not take).
    fn drain(&self) {
        for _ in 0..64 {
            if !self.pump() {
                break;
            }
        }
    }

    fn note(&self, text: &str) {
        let mut feeds = lock(&self.feeds);
        let line = note_line(text);
        let now = now_ms();
        if let Some(f) = feeds.iter_mut().find(|f| f.source == LogSource::Vmm) {
            if let Err(e) = f.store.append(now, line.as_bytes()) {
                tracing::warn!(vm = %self.vm, error = %e, "cannot write the vm's log");
            }
            self.publish(LogSource::Vmm, now, line.into_bytes());
        }
    }

    /// What `source` keeps (since `since_ms`) and, when following, a
    /// subscription to what comes after it.
    fn snapshot(
        &self,
        source: LogSource,
        since_ms: Option<i64>,
        follow: bool,
    ) -> std::io::Result<(Vec<Chunk>, Option<Subscription>)> {
        let feeds = lock(&self.feeds);
        let kept = match feeds.iter().find(|f| f.source == source) {
            Some(f) => f.store.read(since_ms)?,
            None => Vec::new(),
        };
        let sub = if follow {
            lock(&self.tx).as_ref().map(|tx| tx.subscribe())
        } else {
            None
        };
        Ok((kept, sub))
    }
}

fn note_line(text: &str) -> String {
    format!(
        "[banger] {} {}\n",
        humantime::format_rfc3339_millis(std::time::SystemTime::now()),
        text.trim_end()
    )
}

/// The running keepers, by VM id.
#[derive(Default)]
pub struct Keepers {
    map: Mutex<HashMap<String, Arc<Keeper>>>,
}

impl Keepers {
    fn get(&self, id: &str) -> Option<Arc<Keeper>> {
        lock(&self.map).get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<Keeper>> {
        lock(&self.map).remove(id)
    }
}

/// Before a VMM launch: the previous run's raw files were copied when it
/// stopped; remove them (and their positions) so the new run starts fresh.
pub fn prepare_launch(d: &Shared, rec: &VmRecord) {
    let vm_dir = d.cfg.layout.vm_dir(&rec.id);
    let logs = dir(d, rec);
    for p in [
        vm_dir.join(QEMU_CONSOLE_RAW),
        vm_dir.join(QEMU_VMM_RAW),
        vm_dir.join(LEGACY_QEMU_CONSOLE),
        vm_dir.join(banger_vmm::jailer::DIRECT_LOG_NAME),
        logstore::pos_path(&logs, LogSource::Console.as_str()),
        logstore::pos_path(&logs, LogSource::Vmm.as_str()),
    ] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm = %rec.name, file = %p.display(), error = %e, "remove an old log file");
            }
        }
    }
}

/// Starts keeping the logs of a VM whose VMM (`pid`) was just launched or
/// re-adopted.
pub fn start(d: &Shared, rec: &VmRecord, h: &Handles, pid: u32) {
    let raw = raw_files(d, rec, h);
    let keeper = match Keeper::open(&rec.name, &dir(d, rec), &raw) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::warn!(vm = %rec.name, error = %e, "cannot open the vm's logs; they are not kept this run");
            return;
        }
    };
    let stop = keeper.stop.subscribe();
    let task = tokio::spawn(run(keeper.clone(), pid, stop));
    *lock(&keeper.task) = Some(task);
    if let Some(old) = lock(&d.logs.map).insert(rec.id.clone(), keeper) {
        // Not expected (stop comes first); end the old one's followers.
        let _ = old.stop.send(true);
    }
}

async fn run(k: Arc<Keeper>, pid: u32, mut stop: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(POLL) => false,
            _ = stop.changed() => true,
        };
        // Checked before the read: once the process is gone, everything it
        // wrote is in the file.
        let exited = !stopping && !banger_vmm::proc::is_alive(pid);
        let last = stopping || exited;
        let k2 = k.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if last {
                k2.drain();
            } else {
                k2.pump();
            }
        })
        .await;
        if exited && !k.expect_exit.load(Ordering::SeqCst) {
            k.note(&format!("the VMM (pid {pid}) exited"));
        }
        if last {
            break;
        }
    }
    // Followers see the channel close and end their streams.
    lock(&k.tx).take();
}

/// Banger is about to stop the VMM: its exit is expected.
pub fn expect_exit(d: &Shared, rec: &VmRecord) {
    if let Some(k) = d.logs.get(&rec.id) {
        k.expect_exit.store(true, Ordering::SeqCst);
    }
}

/// The VMM is gone: copy its last output and end the keeper (and its
/// followers). Without a keeper (the VMM died while the daemon was down),
/// copies what the raw files still hold.
pub async fn stop(d: &Shared, rec: &VmRecord, h: &Handles) {
    match d.logs.remove(&rec.id) {
        Some(k) => {
            let _ = k.stop.send(true);
            let task = lock(&k.task).take();
            if let Some(task) = task {
                if tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .is_err()
                {
                    tracing::warn!(vm = %rec.name, "the log keeper did not finish in time");
                }
            }
        }
        None => {
            let raw = raw_files(d, rec, h);
            if raw.console.as_ref().is_none_or(|p| !p.exists())
                && raw.vmm.as_ref().is_none_or(|p| !p.exists())
            {
                return;
            }
            let dir = dir(d, rec);
            let name = rec.name.clone();
            let _ = tokio::task::spawn_blocking(move || match Keeper::open(&name, &dir, &raw) {
                Ok(k) => k.drain(),
                Err(e) => tracing::warn!(vm = %name, error = %e, "cannot open the vm's logs"),
            })
            .await;
        }
    }
}

/// Adds a `[banger] <time> <text>` line to the VM's VMM log.
pub fn note(d: &Shared, rec: &VmRecord, text: &str) {
    if let Some(k) = d.logs.get(&rec.id) {
        k.note(text);
        return;
    }
    let r = LogStore::open(&dir(d, rec), LogSource::Vmm.as_str(), VMM_CAP)
        .and_then(|mut s| s.append(now_ms(), note_line(text).as_bytes()));
    if let Err(e) = r {
        tracing::warn!(vm = %rec.name, error = %e, "cannot write the vm's log");
    }
}

/// The last `n` lines of the guest console (for boot errors).
pub fn console_tail(d: &Shared, rec: &VmRecord, n: usize) -> (PathBuf, String) {
    let dir = dir(d, rec);
    let chunks = match d.logs.get(&rec.id) {
        Some(k) => {
            k.pump();
            k.snapshot(LogSource::Console, None, false)
                .map(|(c, _)| c)
                .unwrap_or_default()
        }
        None => logstore::read_store(&dir, LogSource::Console.as_str(), None).unwrap_or_default(),
    };
    let mut all = Vec::new();
    for c in chunks {
        all.extend_from_slice(&c.data);
    }
    let text = String::from_utf8_lossy(&all);
    let lines: Vec<&str> = text.lines().collect();
    (
        dir.join("console.log"),
        lines[lines.len().saturating_sub(n)..].join("\n"),
    )
}

/// `GET /vms/{name}/logs`: what is kept (since `since_ms`), then, when
/// following, new output until the VMM stops or the client goes away.
pub async fn stream(
    d: Shared,
    name: String,
    q: LogsQuery,
) -> Result<mpsc::Receiver<LogEvent>, ApiError> {
    let rec = crate::vm::find(&d, &name)?;
    let keeper = d.logs.get(&rec.id);
    let dir = dir(&d, &rec);
    let LogsQuery {
        source,
        since_ms,
        follow,
    } = q;
    let (kept, sub) = tokio::task::spawn_blocking(move || match &keeper {
        Some(k) => k.snapshot(source, since_ms, follow),
        None => Ok((logstore::read_store(&dir, source.as_str(), since_ms)?, None)),
    })
    .await
    .map_err(|e| ApiError::internal(format!("log task failed: {e}")))?
    .map_err(|e| ApiError::failed(format!("read the {source} log of vm {name:?}: {e}")))?;

    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        for c in &kept {
            for piece in c.data.chunks(EVENT_MAX) {
                if tx.send(LogEvent::data(c.time_ms, piece)).await.is_err() {
                    return;
                }
            }
        }
        drop(kept);
        let reason = match (follow, sub) {
            (false, _) => LogEnd::Done,
            (true, None) => LogEnd::NotRunning,
            (true, Some(mut sub)) => loop {
                tokio::select! {
                    r = sub.recv() => match r {
                        Ok(p) if p.source == source => {
                            for piece in p.data.chunks(EVENT_MAX) {
                                if tx.send(LogEvent::data(p.time_ms, piece)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            if tx.send(LogEvent::Lost { chunks: n }).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => break LogEnd::Stopped,
                    },
                    _ = tx.closed() => return,
                }
            },
        };
        let _ = tx.send(LogEvent::End { reason }).await;
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeper_copies_raw_output_and_publishes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = RawFiles {
            console: Some(tmp.path().join("console.raw")),
            vmm: Some(tmp.path().join("vmm.raw")),
        };
        let logs = tmp.path().join("logs");
        let k = Keeper::open("box", &logs, &raw).unwrap();
        assert!(!k.pump(), "no raw files yet");
        std::fs::write(raw.console.as_ref().unwrap(), b"Linux version 6.1\n").unwrap();
        let (kept, sub) = k.snapshot(LogSource::Console, None, true).unwrap();
        assert!(kept.is_empty());
        let mut sub = sub.unwrap();
        assert!(k.pump());
        let p = sub.try_recv().unwrap();
        assert_eq!(
            (p.source, p.data.as_slice()),
            (LogSource::Console, &b"Linux version 6.1\n"[..])
        );
        k.note("qemu started (pid 7)");
        let p = sub.try_recv().unwrap();
        assert_eq!(p.source, LogSource::Vmm);
        let line = String::from_utf8(p.data.clone()).unwrap();
        assert!(line.starts_with("[banger] 20") && line.ends_with(" qemu started (pid 7)\n"));
        // Both stores hold what was published, and read back without a keeper.
        drop(k);
        let console = logstore::read_store(&logs, "console", None).unwrap();
        assert_eq!(console[0].data, b"Linux version 6.1\n");
        let vmm = logstore::read_store(&logs, "vmm", None).unwrap();
        assert!(String::from_utf8_lossy(&vmm[0].data).contains("qemu started"));
        // A new keeper (a daemon restart) does not copy the same output again.
        std::fs::OpenOptions::new()
            .append(true)
            .open(raw.console.as_ref().unwrap())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"login: "))
            .unwrap();
        let k = Keeper::open("box", &logs, &raw).unwrap();
        assert!(k.pump());
        let all: Vec<u8> = logstore::read_store(&logs, "console", None)
            .unwrap()
            .into_iter()
            .flat_map(|c| c.data)
            .collect();
        assert_eq!(all, b"Linux version 6.1\nlogin: ");
    }
}
