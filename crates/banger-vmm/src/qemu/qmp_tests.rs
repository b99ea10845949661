//! Against a real `qemu-system-x86_64` (TCG; `-S` so no guest ever runs).
//! Skipped, with a message, where the binary is missing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::*;

const T: Duration = Duration::from_secs(10);

/// One QEMU, SIGKILLed (and reaped) when dropped.
struct QemuGuard {
    child: Child,
    sock: PathBuf,
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped QEMU; reap it here so no zombie
        // (or live QEMU) outlives the test.
        let _ = self.child.start_kill();
        for _ in 0..200 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl QemuGuard {
    fn pid(&self) -> u32 {
        self.child.id().expect("qemu pid")
    }
}

fn have_qemu() -> bool {
    let ok = std::process::Command::new(crate::qemu::DEFAULT_QEMU_BIN)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: no {}", crate::qemu::DEFAULT_QEMU_BIN);
    }
    ok
}

/// Start a paused QEMU with a QMP server at `<dir>/<name>.sock`.
async fn start_qemu(dir: &Path, name: &str, extra: &[&str]) -> QemuGuard {
    let sock = dir.join(format!("{name}.sock"));
    let child = Command::new(crate::qemu::DEFAULT_QEMU_BIN)
        .args(["-nodefaults", "-display", "none", "-S", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu");
    let guard = QemuGuard { child, sock };
    // Until it accepts, not until the file exists: QEMU binds the socket
    // before it listens, and a connect in between is refused (CI saw it).
    // The probe connection is closed at once; QEMU then accepts the next.
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(&guard.sock).is_ok() {
            return guard;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("qemu accepted nothing on {}", guard.sock.display());
}

async fn machine_none(dir: &Path) -> (QemuGuard, Qmp) {
    let q = start_qemu(dir, "none", &["-machine", "none"]).await;
    let qmp = Qmp::connect(&q.sock, T).await.expect("connect");
    (q, qmp)
}

#[tokio::test]
async fn qmp_greeting_capabilities_and_status() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_q, mut qmp) = machine_none(dir.path()).await;
    assert!(qmp.greeting()["version"]["qemu"]["major"]
        .as_u64()
        .is_some());
    assert!(qmp.greeting()["capabilities"].is_array());

    let st = qmp.query_status().await.unwrap();
    assert_eq!(
        st,
        VmStatus {
            running: false,
            status: "prelaunch".into()
        }
    );
    qmp.cont().await.unwrap();
    let st = qmp.query_status().await.unwrap();
    assert!(st.running);
    assert_eq!(st.status, "running");

    let ev = tokio::time::timeout(T, async {
        loop {
            let ev = qmp.events().recv().await.expect("event channel open");
            if ev.name == "RESUME" {
                return ev;
            }
        }
    })
    .await
    .expect("RESUME event");
    assert!(ev.timestamp_us.is_some());

    qmp.stop().await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "paused");
    let stop = tokio::time::timeout(T, qmp.events().recv()).await.unwrap();
    assert_eq!(stop.unwrap().name, "STOP");

    // No migration yet: an empty object.
    assert_eq!(qmp.query_migrate().await.unwrap().status, None);
}

#[tokio::test]
async fn qmp_unknown_command_is_a_command_error() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_q, qmp) = machine_none(dir.path()).await;
    let err = qmp.execute("no-such-command", None).await.unwrap_err();
    match &err {
        QmpError::Command {
            command,
            class,
            desc,
            ..
        } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("none.sock") && msg.contains("no-such-command"),
        "{msg}"
    );
    // The session is still usable.
    qmp.query_status().await.unwrap();
}

#[tokio::test]
async fn qmp_call_times_out_when_qemu_is_stopped() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (q, qmp) = machine_none(dir.path()).await;
    let pid = q.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let t = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = qmp
        .execute_with_timeout("query-status", None, t)
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains("query-status"), "{err}");

    // Resumed, the late reply to the timed-out call is discarded and new
    // calls get their own replies.
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "prelaunch");
}

#[tokio::test]
async fn qmp_closed_socket_fails_calls() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_q, qmp) = machine_none(dir.path()).await;
    qmp.quit().await.unwrap();
    let err = qmp.query_status().await.unwrap_err();
    assert!(
        matches!(err, QmpError::Closed { .. } | QmpError::Io { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn qmp_connect_errors_name_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("missing.sock");
    let err = Qmp::connect(&sock, T).await.unwrap_err();
    assert!(matches!(err, QmpError::Connect { .. }));
    assert!(err.to_string().contains("missing.sock"), "{err}");
}

#[tokio::test]
async fn qmp_migrate_to_file_and_back() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let uri = format!("file:{}", state.display());
    let machine = ["-machine", "q35", "-m", "64", "-accel", "tcg"];

    let src = start_qemu(dir.path(), "src", &machine).await;
    let qmp = Qmp::connect(&src.sock, T).await.unwrap();
    qmp.migrate_set_parameters(serde_json::json!({ "max-bandwidth": 68_719_476_736u64 }))
        .await
        .unwrap();
    qmp.migrate(&uri).await.unwrap();
    let info = qmp
        .wait_migration_completed(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(info.status.as_deref(), Some("completed"));
    assert!(state.metadata().unwrap().len() > 0);
    assert_eq!(qmp.query_status().await.unwrap().status, "postmigrate");
    qmp.quit().await.unwrap();
    drop(qmp);
    drop(src);

    let mut dst_args = machine.to_vec();
    dst_args.extend(["-incoming", "defer"]);
    let dst = start_qemu(dir.path(), "dst", &dst_args).await;
    let qmp = Qmp::connect(&dst.sock, T).await.unwrap();
    assert_eq!(qmp.query_status().await.unwrap().status, "inmigrate");
    // Same (default) capabilities as the save; exercises the helper.
    qmp.migrate_set_capabilities(&[("events", true)])
        .await
        .unwrap();
    qmp.migrate_incoming(&uri).await.unwrap();
    let info = qmp
        .wait_migration_completed(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(info.status.as_deref(), Some("completed"));
    // The source was paused, so the restored VM is too, until `cont`.
    let st = qmp.query_status().await.unwrap();
    assert!(!st.running, "{st:?}");
    qmp.cont().await.unwrap();
    assert!(qmp.query_status().await.unwrap().running);
}

#[tokio::test]
async fn qmp_migrate_incoming_missing_file_fails() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dst = start_qemu(
        dir.path(),
        "bad",
        &["-machine", "q35", "-m", "64", "-incoming", "defer"],
    )
    .await;
    let qmp = Qmp::connect(&dst.sock, T).await.unwrap();
    let uri = format!("file:{}", dir.path().join("nope").display());
    let res = match qmp.migrate_incoming(&uri).await {
        Err(e) => Err(e),
        Ok(()) => qmp
            .wait_migration_completed(Duration::from_secs(10))
            .await
            .map(drop),
    };
    let err = res.unwrap_err();
    assert!(
        matches!(err, QmpError::Command { .. } | QmpError::Migration { .. }),
        "{err:?}"
    );
}
