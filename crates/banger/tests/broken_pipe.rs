//! `banger ... | head -1`: a reader that goes away must not make banger
//! print a panic and a backtrace.

use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};

#[test]
fn a_closed_stdout_ends_quietly_with_141() {
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills the two-element array we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just returned by pipe(2) and are owned here only.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // No reader at all: the first write to stdout fails with EPIPE.
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_banger"))
        .arg("version")
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}
