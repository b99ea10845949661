//! Creating a persistent, user-owned tap with the tun/tap ioctls.
//!
//! Why hand-written: netlink cannot create tun/tap devices (the kernel's
//! `tun` link kind refuses `RTM_NEWLINK`), so `ip tuntap` and everyone else
//! go through `/dev/net/tun`. The crates that wrap it (`tun`, `tun-tap`,
//! `tokio-tun`) are built for a process that keeps the fd open and moves
//! packets itself; none of them sets `TUNSETOWNER`/`TUNSETGROUP` and then
//! `TUNSETPERSIST`, which is exactly what banger needs: the root helper
//! creates the device and lets go of it, and an unprivileged QEMU reopens it
//! by name later. Four ioctls are less code and less risk than a dependency.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::NetError;

const TUN_DEVICE: &str = "/dev/net/tun";

/// Creates (or re-opens) the tap `name` as `IFF_TAP | IFF_NO_PI`, hands it to
/// `uid`/`gid` so that user may attach to it, and makes it persistent so it
/// outlives the fd closed on return. `name` must already be validated
/// (non-empty, at most 15 bytes, no NUL).
pub(crate) fn create_persistent_tap(name: &str, uid: u32, gid: u32) -> Result<(), NetError> {
    let err = |op: &'static str, source: io::Error| NetError::Tun {
        op,
        name: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(NetError::InvalidName {
            name: name.to_string(),
            reason: "not a valid interface name",
        });
    }
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| err("open /dev/net/tun", e))?;
    let fd = dev.as_raw_fd();

    // SAFETY: `ifreq` is plain old data (a name array and a union of
    // integers, sockaddrs and a pointer); all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // The name is shorter than IFNAMSIZ, so the zeroed tail NUL-terminates it.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;

    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `dev`, which
    // outlives the call; TUNSETIFF reads and writes one `struct ifreq`, and
    // `ifr` is a properly sized, exclusively borrowed one.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) };
    if rc < 0 {
        return Err(err("TUNSETIFF", io::Error::last_os_error()));
    }
    // TUNSETOWNER, TUNSETGROUP and TUNSETPERSIST take their argument by value.
    for (op, req, arg) in [
        ("TUNSETOWNER", libc::TUNSETOWNER, libc::c_ulong::from(uid)),
        ("TUNSETGROUP", libc::TUNSETGROUP, libc::c_ulong::from(gid)),
        ("TUNSETPERSIST", libc::TUNSETPERSIST, 1),
    ] {
        // SAFETY: `fd` is still open (owned by `dev`); these requests read
        // only the integer argument and touch no user memory.
        let rc = unsafe { libc::ioctl(fd, req, arg) };
        if rc < 0 {
            return Err(err(op, io::Error::last_os_error()));
        }
    }
    // Closing the fd detaches us; TUNSETPERSIST keeps the device.
    drop(dev);
    Ok(())
}
