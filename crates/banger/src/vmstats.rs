//! `banger vm stats`: what a VM uses, as a two-column table (or `--json`).

use banger_api::{format_size, validate_vm_name, DiskFile, VmStats};
use banger_paths::Layout;

use crate::table;
use crate::vmcmd::{client, print_json, NameArg};

pub async fn run(layout: &Layout, a: NameArg) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    let c = client(layout).await?;
    let s: VmStats = c.get(&format!("/vms/{}/stats", a.name)).await?;
    if a.json {
        print_json(&s)?;
    } else {
        print!("{}", render(&s));
    }
    Ok(0)
}

fn render(s: &VmStats) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |k: &str, v: String| rows.push(vec![k.to_string(), v]);
    let h = &s.host;
    row("state", s.state.to_string());
    if let Some(pid) = h.pid {
        row("vmm pid", pid.to_string());
    }
    if let Some(cpu) = h.cpu_seconds {
        row("vmm cpu time", format!("{cpu:.1}s"));
    }
    if let Some(rss) = h.rss_bytes {
        row("vmm memory (rss)", format_size(rss));
    }
    row("root disk", disk(&h.root_disk));
    row("work disk", disk(&h.work_disk));
    if let (Some(rx), Some(tx)) = (h.net_rx_bytes, h.net_tx_bytes) {
        row(
            "network",
            format!(
                "{} received, {} sent ({})",
                format_size(rx),
                format_size(tx),
                h.tap.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(g) = &s.guest {
        row("guest cpus", g.cpus.to_string());
        row(
            "guest memory",
            format!(
                "{} available of {}",
                format_size(g.memory_available_bytes),
                format_size(g.memory_total_bytes)
            ),
        );
        row(
            "guest load",
            format!("{:.2} {:.2} {:.2}", g.load[0], g.load[1], g.load[2]),
        );
        row("guest uptime", uptime(g.uptime_seconds));
        for fs in &g.filesystems {
            row(
                &format!("guest fs {}", fs.path),
                format!(
                    "{} used of {} ({} free)",
                    format_size(fs.used_bytes),
                    format_size(fs.total_bytes),
                    format_size(fs.available_bytes)
                ),
            );
        }
    }
    let mut out = table::render(&["STAT", "VALUE"], &rows);
    if let Some(note) = &s.note {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// `120 MiB allocated of 8 GiB`: what it takes on the host, what it claims.
fn disk(d: &DiskFile) -> String {
    format!(
        "{} allocated of {}",
        format_size(d.allocated_bytes),
        format_size(d.apparent_bytes)
    )
}

/// `3d 4h`, `2h 05m`, `4m 07s`, `12s`.
fn uptime(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::{FsUsage, GuestStats, HostSideStats, VmState};

    fn stopped() -> VmStats {
        VmStats {
            vm: "box".into(),
            state: VmState::Stopped,
            host: HostSideStats {
                pid: None,
                cpu_seconds: None,
                rss_bytes: None,
                root_disk: DiskFile {
                    path: "/s/vms/x/root.qcow2".into(),
                    allocated_bytes: 200 << 20,
                    apparent_bytes: 2 << 30,
                },
                work_disk: DiskFile {
                    path: "/s/vms/x/work.ext4".into(),
                    allocated_bytes: 33 << 20,
                    apparent_bytes: 8 << 30,
                },
                tap: None,
                net_rx_bytes: None,
                net_tx_bytes: None,
            },
            guest: None,
            note: Some("vm box is stopped: ... need a running vm".into()),
        }
    }

    #[test]
    fn a_stopped_vm_shows_its_disks_and_the_note() {
        assert_eq!(
            render(&stopped()),
            "STAT       VALUE\n\
             state      stopped\n\
             root disk  200 MiB allocated of 2 GiB\n\
             work disk  33 MiB allocated of 8 GiB\n\
             note: vm box is stopped: ... need a running vm\n"
        );
    }

    #[test]
    fn a_running_vm_shows_host_and_guest_rows() {
        let mut s = stopped();
        s.state = VmState::Running;
        s.note = None;
        s.host.pid = Some(4242);
        s.host.cpu_seconds = Some(12.345);
        s.host.rss_bytes = Some(812 << 20);
        s.host.tap = Some("tap-bg-0a1b2c".into());
        s.host.net_rx_bytes = Some(1536);
        s.host.net_tx_bytes = Some(0);
        s.guest = Some(GuestStats {
            cpus: 4,
            memory_total_bytes: 1 << 30,
            memory_available_bytes: 768 << 20,
            load: [0.5, 0.25, 0.0],
            uptime_seconds: 125.9,
            filesystems: vec![FsUsage {
                path: "/root".into(),
                total_bytes: 8 << 30,
                used_bytes: 1 << 20,
                available_bytes: 7 << 30,
            }],
        });
        let t = render(&s);
        for want in [
            "vmm pid           4242\n",
            "vmm cpu time      12.3s\n",
            "vmm memory (rss)  812 MiB\n",
            "network           1.5 KiB received, 0 B sent (tap-bg-0a1b2c)\n",
            "guest cpus        4\n",
            "guest memory      768 MiB available of 1 GiB\n",
            "guest load        0.50 0.25 0.00\n",
            "guest uptime      2m 05s\n",
            "guest fs /root    1 MiB used of 8 GiB (7 GiB free)\n",
        ] {
            assert!(t.contains(want), "{want:?} in\n{t}");
        }
        assert!(!t.contains("note:"), "{t}");
    }

    #[test]
    fn uptimes_read_short() {
        assert_eq!(uptime(12.7), "12s");
        assert_eq!(uptime(247.0), "4m 07s");
        assert_eq!(uptime(7500.0), "2h 05m");
        assert_eq!(uptime(3.0 * 86400.0 + 4.0 * 3600.0), "3d 4h");
    }
}
