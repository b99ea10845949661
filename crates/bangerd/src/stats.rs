//! `GET /vms/{name}/stats` (`banger vm stats`): what a VM uses.
//!
//! Host side, for any VM: the disk files' allocated and apparent sizes.
//! While it runs: the VMM's CPU time and resident memory (`/proc/<pid>`),
//! and its tap's byte counters (`/sys/class/net/<tap>/statistics`, in the
//! daemon's own network namespace, where the helper made the tap). Guest
//! side, from the agent's Stats request: CPUs, memory, load, uptime, and
//! the filesystems at `/` and `/root`. A part that cannot be read is left
//! out and `note` says why; the rest is still answered.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use banger_api::{ApiError, DiskFile, FsUsage, GuestStats, HostSideStats, VmState, VmStats};
use banger_vmm::cow::CowKind;

use crate::daemon::Shared;
use crate::vm::{self, agent_for, is_running, vm_dir};
use crate::{firecracker, handles};

/// How long dialling the agent (when no connection is cached) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the agent may take to answer; it reads a few small files.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const SYS_CLASS_NET: &str = "/sys/class/net";

pub async fn get(d: &Shared, name: &str) -> Result<VmStats, ApiError> {
    let rec = vm::find(d, name)?;
    let dir = vm_dir(d, &rec);
    let kind: CowKind = rec.root_cow.parse().unwrap_or(CowKind::Qcow2Overlay);
    let state = VmState::parse(&rec.state).unwrap_or(VmState::Error);
    let mut host = HostSideStats {
        pid: None,
        cpu_seconds: None,
        rss_bytes: None,
        root_disk: disk_file(&dir.join(firecracker::root_file(kind))),
        work_disk: disk_file(&dir.join(crate::workdisk::current(&dir).0)),
        tap: None,
        net_rx_bytes: None,
        net_tx_bytes: None,
    };
    if !is_running(d, &rec) {
        return Ok(VmStats {
            vm: rec.name.clone(),
            state,
            host,
            guest: None,
            note: Some(format!(
                "vm {name} is not running: CPU, memory, network and guest numbers need a running vm (banger vm start {name})"
            )),
        });
    }
    let h = handles::load(&dir);
    host.pid = h.pid;
    if let Some(u) = h.pid.and_then(banger_vmm::host::usage) {
        host.cpu_seconds = Some(u.cpu_seconds);
        host.rss_bytes = Some(u.rss_bytes);
    }
    if let Some(tap) = h.tap {
        if let Some((rx, tx)) = guest_net_bytes(Path::new(SYS_CLASS_NET), &tap) {
            host.net_rx_bytes = Some(rx);
            host.net_tx_bytes = Some(tx);
        }
        host.tap = Some(tap);
    }
    let (guest, note) = match guest_stats(d, &rec).await {
        Ok(g) => (Some(g), None),
        Err(why) => (None, Some(why)),
    };
    Ok(VmStats {
        vm: rec.name.clone(),
        state,
        host,
        guest,
        note,
    })
}

async fn guest_stats(d: &Shared, rec: &banger_store::VmRecord) -> Result<GuestStats, String> {
    let agent = agent_for(d, rec, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.message)?;
    let s = agent.stats(ANSWER_TIMEOUT).await.map_err(|e| {
        let e = e.to_string();
        if e.contains("unsupported request") {
            format!(
                "the guest agent of vm {} is too old to report stats; recreate the vm from a rebuilt image",
                rec.name
            )
        } else {
            format!("the guest agent of vm {} did not report stats: {e}", rec.name)
        }
    })?;
    Ok(guest_from(s))
}

fn guest_from(s: banger_agent_proto::GuestStats) -> GuestStats {
    GuestStats {
        cpus: s.cpus,
        memory_total_bytes: s.mem_total_bytes,
        memory_available_bytes: s.mem_available_bytes,
        load: s.load_avg,
        uptime_seconds: s.uptime_secs,
        filesystems: s
            .filesystems
            .into_iter()
            .map(|f| FsUsage {
                path: f.path,
                total_bytes: f.total_bytes,
                used_bytes: f.used_bytes,
                available_bytes: f.available_bytes,
            })
            .collect(),
    }
}

/// A disk file's allocated and apparent sizes; zeros when it is missing.
fn disk_file(path: &Path) -> DiskFile {
    let (allocated_bytes, apparent_bytes) = std::fs::metadata(path)
        .map(|m| (m.blocks().saturating_mul(512), m.len()))
        .unwrap_or((0, 0));
    DiskFile {
        path: path.display().to_string(),
        allocated_bytes,
        apparent_bytes,
    }
}

/// (received, sent) by the guest behind `tap`: the tap's tx and rx
/// counters, which count from the host's side. `None` when the tap is
/// gone or its name is not a plain device name.
fn guest_net_bytes(sys_class_net: &Path, tap: &str) -> Option<(u64, u64)> {
    if tap.is_empty() || tap.contains('/') || tap == "." || tap == ".." {
        return None;
    }
    let stats = sys_class_net.join(tap).join("statistics");
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(stats.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("tx_bytes")?, read("rx_bytes")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_counters_are_the_guests_view() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("tap-bg-0a1b2c/statistics");
        std::fs::create_dir_all(&st).unwrap();
        std::fs::write(st.join("rx_bytes"), "1234\n").unwrap();
        std::fs::write(st.join("tx_bytes"), "98765\n").unwrap();
        // The host's tx is what the guest received.
        assert_eq!(
            guest_net_bytes(dir.path(), "tap-bg-0a1b2c"),
            Some((98765, 1234))
        );
        assert_eq!(guest_net_bytes(dir.path(), "tap-bg-gone"), None);
        for bad in ["", ".", "..", "../tap-bg-0a1b2c"] {
            assert_eq!(guest_net_bytes(dir.path(), bad), None, "{bad:?}");
        }
    }

    #[test]
    fn disk_files_report_allocated_and_apparent_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("work.ext4");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        std::io::Write::write_all(&mut &f, &[1u8; 8192]).unwrap();
        drop(f);
        let d = disk_file(&p);
        assert_eq!(d.apparent_bytes, 64 << 20);
        assert!(
            d.allocated_bytes >= 8192 && d.allocated_bytes < 64 << 20,
            "{d:?}"
        );
        let gone = disk_file(&dir.path().join("root.qcow2"));
        assert_eq!((gone.allocated_bytes, gone.apparent_bytes), (0, 0));
        assert!(gone.path.ends_with("root.qcow2"));
    }

    #[test]
    fn guest_numbers_keep_their_meaning() {
        let g = guest_from(banger_agent_proto::GuestStats {
            cpus: 4,
            mem_total_bytes: 1 << 30,
            mem_available_bytes: 1 << 29,
            load_avg: [1.0, 0.5, 0.25],
            uptime_secs: 30.5,
            filesystems: vec![banger_agent_proto::FsStat {
                path: "/root".into(),
                total_bytes: 8 << 30,
                used_bytes: 1 << 20,
                available_bytes: 7 << 30,
            }],
        });
        assert_eq!(g.cpus, 4);
        assert_eq!(g.memory_total_bytes, 1 << 30);
        assert_eq!(g.memory_available_bytes, 1 << 29);
        assert_eq!(g.load, [1.0, 0.5, 0.25]);
        assert_eq!(g.uptime_seconds, 30.5);
        assert_eq!(g.filesystems[0].path, "/root");
        assert_eq!(g.filesystems[0].used_bytes, 1 << 20);
    }
}
