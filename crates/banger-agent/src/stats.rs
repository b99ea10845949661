//! The Stats request: what the guest says about itself, from `/proc` and
//! statvfs(3): CPUs online, memory (`MemTotal`, `MemAvailable`), load
//! averages, uptime, and the filesystems at `/` and `/root` (the work disk).

use banger_agent_proto::procfs::meminfo_field;
use banger_agent_proto::{FsStat, GuestStats};

/// The paths whose filesystems are reported, in this order.
const FILESYSTEMS: [&str; 2] = ["/", "/root"];

pub fn collect() -> Result<GuestStats, String> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("read {p}: {e}"));
    let meminfo = read("/proc/meminfo")?;
    let field =
        |k: &str| meminfo_field(&meminfo, k).ok_or_else(|| format!("no {k} in /proc/meminfo"));
    Ok(GuestStats {
        cpus: cpus(),
        mem_total_bytes: field("MemTotal")?,
        mem_available_bytes: field("MemAvailable")?,
        load_avg: parse_loadavg(&read("/proc/loadavg")?).ok_or("cannot parse /proc/loadavg")?,
        uptime_secs: parse_uptime(&read("/proc/uptime")?).ok_or("cannot parse /proc/uptime")?,
        filesystems: FILESYSTEMS.iter().filter_map(|p| fs_stat(p)).collect(),
    })
}

/// CPUs online (`getconf _NPROCESSORS_ONLN`).
fn cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// `0.52 0.34 0.10 1/123 4567`: the first three numbers.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `350.72 690.11`: seconds up (the first number).
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn fs_stat(path: &str) -> Option<FsStat> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(fs_from(
        path,
        st.blocks() as u64,
        st.blocks_free() as u64,
        st.blocks_available() as u64,
        st.fragment_size() as u64,
    ))
}

/// Sizes from statvfs's block counts, in bytes.
pub fn fs_from(path: &str, blocks: u64, free: u64, avail: u64, frsize: u64) -> FsStat {
    FsStat {
        path: path.to_string(),
        total_bytes: blocks.saturating_mul(frsize),
        used_bytes: blocks.saturating_sub(free).saturating_mul(frsize),
        available_bytes: avail.saturating_mul(frsize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(
            parse_loadavg("0.52 0.34 0.10 1/123 4567\n"),
            Some([0.52, 0.34, 0.10])
        );
        assert_eq!(parse_loadavg("0.52 0.34"), None);
        assert_eq!(parse_loadavg("a b c"), None);
        assert_eq!(parse_uptime("350.72 690.11\n"), Some(350.72));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn statvfs_counts_become_bytes() {
        let fs = fs_from("/root", 1000, 300, 250, 4096);
        assert_eq!(fs.total_bytes, 1000 * 4096);
        assert_eq!(fs.used_bytes, 700 * 4096);
        assert_eq!(fs.available_bytes, 250 * 4096);
    }

    #[test]
    fn this_machine_answers() {
        let s = collect().unwrap();
        assert!(s.cpus >= 1 && s.mem_total_bytes >= s.mem_available_bytes);
        assert!(s.uptime_secs > 0.0);
        assert_eq!(s.filesystems[0].path, "/");
        assert!(s.filesystems[0].total_bytes > 0);
    }
}
