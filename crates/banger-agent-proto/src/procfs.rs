//! `/proc` text formats read on both sides of the channel: the agent's
//! `stats` answer (guest memory) and the host's limits and VMM usage
//! (`banger-vmm::host`) parse the same `Key:   N kB` lines.

/// One `Key:   N kB` field of `/proc/meminfo` or `/proc/<pid>/status`, in
/// bytes (a unitless value is taken as is).
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, rest) = line.split_once(':')?;
        if k != key {
            return None;
        }
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") => n.checked_mul(1024),
            None => Some(n),
            Some(_) => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24684092 kB\n\
MemFree:         1234567 kB\n\
MemAvailable:   20000000 kB\n\
HugePages_Total:       0\n";

    #[test]
    fn meminfo_fields_are_bytes() {
        assert_eq!(meminfo_field(MEMINFO, "MemTotal"), Some(24684092 * 1024));
        assert_eq!(
            meminfo_field(MEMINFO, "MemAvailable"),
            Some(20000000 * 1024)
        );
        // A unitless count, a missing key, a key that is a prefix of another.
        assert_eq!(meminfo_field(MEMINFO, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_field(MEMINFO, "SwapTotal"), None);
        assert_eq!(meminfo_field(MEMINFO, "Mem"), None);
        assert_eq!(meminfo_field("MemTotal: lots kB\n", "MemTotal"), None);
        assert_eq!(meminfo_field("MemTotal: 5 MB\n", "MemTotal"), None);
    }

    #[test]
    fn status_rss_reads_like_meminfo() {
        let status =
            "Name:\tqemu-system-x86\nVmPeak:\t 2000000 kB\nVmRSS:\t  812344 kB\nThreads:\t5\n";
        assert_eq!(meminfo_field(status, "VmRSS"), Some(812344 * 1024));
    }
}
