//! Finding and opening the byte stream to the host.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use banger_agent_proto::{VIRTIO_PORT_NAME, VSOCK_PORT};

use crate::listen::{has_vsock_device, Listener};

const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";
const RETRY: Duration = Duration::from_millis(100);

/// What the channel is; decides what end-of-file means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A character device (the virtio-serial port). read() returns 0 while
    /// no host is connected; the port stays usable.
    Device,
    /// A Unix socket we connected to (tests): EOF means the host is gone.
    Socket,
}

pub struct Channel {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub kind: Kind,
    pub path: PathBuf,
}

/// Where host sessions come from.
pub enum Source {
    /// One long-lived stream (virtio-serial port, or a socket for tests).
    Stream(Channel),
    /// A listener; each connection is a session (vsock under Firecracker).
    Listen(Listener),
}

/// Opens the channel: `explicit` if given, else the virtio-serial port named
/// `banger.agent`, else (Firecracker) a vsock listener on [`VSOCK_PORT`].
/// Waits (retrying every 100 ms) until one can be opened.
pub fn open(explicit: Option<&Path>) -> Source {
    let mut last_error = String::new();
    loop {
        let attempt = match explicit {
            Some(path) => open_path(path).map(Source::Stream),
            None => match find_port(Path::new(VIRTIO_PORTS)) {
                Some(dev) => open_path(&dev).map(Source::Stream),
                None if has_vsock_device(Path::new(VIRTIO_DEVICES)) => {
                    Listener::vsock(VSOCK_PORT).map(Source::Listen)
                }
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no virtio-serial port named {VIRTIO_PORT_NAME} and no vsock device yet"
                    ),
                )),
            },
        };
        match attempt {
            Ok(src) => {
                match &src {
                    Source::Stream(chan) => log!("serving on {}", chan.path.display()),
                    Source::Listen(l) => log!("listening on {}", l.describe()),
                }
                return src;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    log!("waiting for the agent channel: {msg}");
                    last_error = msg;
                }
            }
        }
        sleep(RETRY);
    }
}

fn open_path(path: &Path) -> io::Result<Channel> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if meta.file_type().is_socket() {
        let stream = UnixStream::connect(path)
            .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))?;
        Ok(Channel {
            reader: Box::new(stream.try_clone()?),
            writer: Box::new(stream),
            kind: Kind::Socket,
            path: path.to_owned(),
        })
    } else {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        let reader: File = file.try_clone()?;
        Ok(Channel {
            reader: Box::new(reader),
            writer: Box::new(file),
            kind: Kind::Device,
            path: path.to_owned(),
        })
    }
}

/// The /dev node of the virtio port named `banger.agent`, found through
/// `<sysfs>/<vportNpM>/name`.
pub fn find_port(sysfs: &Path) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(sysfs).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == VIRTIO_PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport0p0", ""),
            ("vport0p1", "org.qemu.guest_agent.0\n"),
            ("vport1p1", "banger.agent\n"),
        ] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), name).unwrap();
        }
        assert_eq!(find_port(dir.path()), Some(PathBuf::from("/dev/vport1p1")));
        std::fs::write(dir.path().join("vport1p1/name"), "other\n").unwrap();
        assert_eq!(find_port(dir.path()), None);
        assert_eq!(find_port(&dir.path().join("missing")), None);
    }
}
