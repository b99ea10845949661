//! Listening for host connections: the Firecracker side of the agent.
//!
//! Under Firecracker the host reaches the guest through a virtio-vsock
//! device: the host connects to Firecracker's Unix socket and sends
//! `CONNECT 10700`, and Firecracker opens a vsock connection to this
//! listener. Every accepted connection is one host session, served on its
//! own thread with the same protocol as the virtio-serial channel. A Unix
//! listener does the same for tests (AF_VSOCK has no loopback on most
//! hosts).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::channel::{Channel, Kind};

/// Virtio device id of a vsock device (virtio spec 5.10).
const VIRTIO_ID_VSOCK: &str = "0x0013";

pub enum Listener {
    Unix(UnixListener, PathBuf),
    Vsock(OwnedFd, u32),
}

impl Listener {
    pub fn unix(path: &Path) -> io::Result<Listener> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))?;
        Ok(Listener::Unix(l, path.to_owned()))
    }

    /// Listens on vsock `port` for connections from any CID (the host).
    pub fn vsock(port: u32) -> io::Result<Listener> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        // SAFETY: addr is a valid sockaddr_vm and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: listen(2) on our bound socket.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Listener::Vsock(fd, port))
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => p.display().to_string(),
            Listener::Vsock(_, port) => format!("vsock port {port}"),
        }
    }

    /// Waits for the next host connection.
    pub fn accept(&self) -> io::Result<Channel> {
        match self {
            Listener::Unix(l, path) => {
                let (s, _) = l.accept()?;
                Ok(Channel {
                    reader: Box::new(s.try_clone()?),
                    writer: Box::new(s),
                    kind: Kind::Socket,
                    path: path.clone(),
                })
            }
            Listener::Vsock(fd, port) => {
                // SAFETY: accept4 on our listening socket; we do not ask for
                // the peer address, so null pointers are allowed.
                let c = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: c is a fresh connected socket we now own.
                let file = File::from(unsafe { OwnedFd::from_raw_fd(c) });
                Ok(Channel {
                    reader: Box::new(file.try_clone()?),
                    writer: Box::new(file),
                    kind: Kind::Socket,
                    path: PathBuf::from(format!("vsock:{port}")),
                })
            }
        }
    }
}

/// Whether the guest has a virtio-vsock device (Firecracker gives it one;
/// banger's QEMU guests do not), judged from `<sysfs>/bus/virtio/devices`.
pub fn has_vsock_device(virtio_devices: &Path) -> bool {
    std::fs::read_dir(virtio_devices)
        .map(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("device"))
                    .is_ok_and(|id| id.trim() == VIRTIO_ID_VSOCK)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_device_is_found_by_virtio_id() {
        let dir = tempfile::tempdir().unwrap();
        for (dev, id) in [("virtio0", "0x0002\n"), ("virtio1", "0x0001\n")] {
            std::fs::create_dir(dir.path().join(dev)).unwrap();
            std::fs::write(dir.path().join(dev).join("device"), id).unwrap();
        }
        assert!(!has_vsock_device(dir.path()));
        std::fs::create_dir(dir.path().join("virtio2")).unwrap();
        std::fs::write(dir.path().join("virtio2/device"), "0x0013\n").unwrap();
        assert!(has_vsock_device(dir.path()));
        assert!(!has_vsock_device(&dir.path().join("missing")));
    }

    /// Binds a real AF_VSOCK listener where the host kernel has vsock (the
    /// port is the kernel's pick, so parallel runs never collide).
    #[test]
    fn vsock_listener_binds_for_real() {
        match Listener::vsock(libc::VMADDR_PORT_ANY) {
            Ok(l) => assert!(l.describe().starts_with("vsock port")),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                eprintln!("SKIPPED: this kernel has no AF_VSOCK: {e}")
            }
            Err(e) => panic!("vsock listen: {e}"),
        }
    }
}
