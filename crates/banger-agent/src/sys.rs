//! The few things the identity steps ask of the guest's kernel and tools,
//! behind a trait: the real calls here are thin, and the steps around them
//! (which command, in which order, what a failure is called) are tested
//! against a fake that records what it was asked.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// The guest as the identity steps see it. Every error is a message that
/// says what failed; the caller adds which step it was.
pub trait Guest {
    /// Runs `ip` (iproute2 or busybox) with `args`; never through a shell.
    fn ip(&self, args: &[String]) -> Result<(), String>;
    /// sethostname(2).
    fn set_hostname(&self, name: &str) -> Result<(), String>;
    /// Sets CLOCK_REALTIME to `unix_time_ns` nanoseconds since the epoch.
    fn set_clock(&self, unix_time_ns: u64) -> Result<(), String>;
    /// Mixes `bytes` into the kernel's pool, credited as entropy, then
    /// reseeds the CRNG from it.
    fn add_entropy(&self, bytes: &[u8]) -> Result<(), String>;
}

/// The running guest: real syscalls, the real `ip`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Real;

impl Guest for Real {
    fn ip(&self, args: &[String]) -> Result<(), String> {
        ip(args)
    }

    fn set_hostname(&self, name: &str) -> Result<(), String> {
        // SAFETY: the pointer and length describe `name`, which outlives the
        // call; sethostname(2) only reads that many bytes.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc != 0 {
            return Err(format!(
                "sethostname {name:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn set_clock(&self, unix_time_ns: u64) -> Result<(), String> {
        const NS: u64 = 1_000_000_000;
        // Zeroed first: some libc targets give timespec private padding.
        // SAFETY: timespec is plain integers; all zeroes is a valid value.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        ts.tv_sec = libc::time_t::try_from(unix_time_ns / NS)
            .map_err(|_| format!("{unix_time_ns} ns is out of range"))?;
        // Below 10^9: fits every c_long.
        ts.tv_nsec = (unix_time_ns % NS) as libc::c_long;
        // SAFETY: `ts` is a valid timespec that outlives the call, which
        // only reads it.
        let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
        if rc != 0 {
            return Err(format!(
                "clock_settime(CLOCK_REALTIME): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn add_entropy(&self, bytes: &[u8]) -> Result<(), String> {
        let urandom = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .map_err(|e| format!("opening /dev/urandom: {e}"))?;
        let info = rand_pool_info(bytes)?;
        let fd = urandom.as_raw_fd();
        // SAFETY: `info` is a complete `struct rand_pool_info` (header and
        // `buf_size` bytes of buffer, 4-byte aligned) that outlives the
        // call; RNDADDENTROPY only reads it. `fd` is open for the call.
        unsafe { rnd_add_entropy(fd, info.as_ptr()) }
            .map_err(|e| format!("ioctl RNDADDENTROPY on /dev/urandom: {e}"))?;
        // SAFETY: RNDRESEEDCRNG takes no argument; `fd` is open.
        unsafe { rnd_reseed_crng(fd) }
            .map_err(|e| format!("ioctl RNDRESEEDCRNG on /dev/urandom: {e}"))?;
        Ok(())
    }
}

// <linux/random.h>: RNDADDENTROPY = _IOW('R', 0x03, int[2]),
// RNDRESEEDCRNG = _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(rnd_add_entropy, 0x4008_5203, u32);
nix::ioctl_none_bad!(rnd_reseed_crng, 0x5207);

/// `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`
/// for `bytes`, all of them credited (8 bits per byte), as 32-bit words so
/// the buffer is aligned like the C struct.
pub fn rand_pool_info(bytes: &[u8]) -> Result<Vec<u32>, String> {
    let too_many = || format!("{} bytes of entropy are too many", bytes.len());
    let count =
        i32::try_from(bytes.len().checked_mul(8).ok_or_else(too_many)?).map_err(|_| too_many())?;
    let mut words = Vec::with_capacity(2 + bytes.len().div_ceil(4));
    words.push(count as u32);
    words.push(bytes.len() as u32);
    for chunk in bytes.chunks(4) {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        words.push(u32::from_ne_bytes(word));
    }
    Ok(words)
}

/// Where `ip` lives: iproute2's, or busybox's applet (a link to busybox,
/// or busybox itself when the image has no such link), or `ip` on PATH.
/// Returns the program and the arguments that go before `ip`'s own.
pub fn ip_program(exists: impl Fn(&str) -> bool) -> (&'static str, &'static [&'static str]) {
    const IP: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
    const BUSYBOX: [&str; 3] = ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"];
    if let Some(ip) = IP.into_iter().find(|p| exists(p)) {
        return (ip, &[]);
    }
    match BUSYBOX.into_iter().find(|p| exists(p)) {
        Some(busybox) => (busybox, &["ip"]),
        None => ("ip", &[]),
    }
}

/// Runs `ip` with `args`; the error carries its stderr.
pub fn ip(args: &[String]) -> Result<(), String> {
    let (program, prefix) = ip_program(|p| Path::new(p).exists());
    let shown = format!("ip {}", args.join(" "));
    let output = Command::new(program)
        .args(prefix)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{shown}: {} ({})", stderr.trim(), output.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_is_iproute2_or_busybox() {
        assert_eq!(ip_program(|p| p == "/sbin/ip"), ("/sbin/ip", &[][..]));
        // Debian has both; iproute2 wins.
        assert_eq!(
            ip_program(|p| p == "/usr/sbin/ip" || p == "/bin/busybox"),
            ("/usr/sbin/ip", &[][..])
        );
        // A busybox image without an `ip` link.
        assert_eq!(
            ip_program(|p| p == "/bin/busybox"),
            ("/bin/busybox", &["ip"][..])
        );
        assert_eq!(ip_program(|_| false), ("ip", &[][..]));
    }

    #[test]
    fn rand_pool_info_is_the_c_struct() {
        let words = rand_pool_info(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(words.len(), 2 + 2);
        assert_eq!(words[0], 40, "entropy_count: 8 bits per byte");
        assert_eq!(words[1], 5, "buf_size: bytes");
        let buf: Vec<u8> = words[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&buf[..5], &[1, 2, 3, 4, 5]);
        assert_eq!(rand_pool_info(&[]).unwrap(), vec![0, 0]);
        // The ioctl numbers, as <linux/random.h> computes them.
        assert_eq!(nix::request_code_write!(b'R', 0x03, 8), 0x4008_5203);
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }

    /// The real RNDADDENTROPY + RNDRESEEDCRNG on this machine, with bytes
    /// the kernel itself just produced (so crediting them costs nothing).
    /// Needs root (CAP_SYS_ADMIN); run by hand:
    /// `cargo test -p banger-agent real_entropy -- --ignored`.
    #[test]
    #[ignore = "changes this machine's random pool; run by hand as root"]
    fn real_entropy_ioctls_are_accepted() {
        let mut bytes = [0u8; 64];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").unwrap(),
            &mut bytes,
        )
        .unwrap();
        Real.add_entropy(&bytes).unwrap();
    }
}
