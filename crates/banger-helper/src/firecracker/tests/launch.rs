//! `launch` and `cleanup` end to end, with the stand-in binaries.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use banger_api::ErrorCode;

use super::*;
use crate::proto::{HelperRequest, HelperResponse};

/// A field of `/proc/<pid>/stat` after the comm (0 = state, 1 = ppid).
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Root and a usable Python, or a printed reason to skip.
fn setup(test: &str) -> Option<Env> {
    if skip_unless_root(test) {
        return None;
    }
    let Some(py) = python() else {
        eprintln!("skipping {test}: no /usr/bin/python3 for the stand-in firecracker");
        return None;
    };
    let env = Env::new();
    env.install_fakes(&py);
    Some(env)
}

/// Checks what every launch must give: a live Firecracker running as the
/// owner, not our child, answering on the short socket path.
fn assert_running(env: &Env, l: &Launched) {
    let pid = l.pid;
    assert_eq!(proc::comm(pid).as_deref(), Some("firecracker"));
    assert!(is_our_vmm(env.roots(), &env.vm, pid));
    assert_ne!(stat_field(pid, 1), Some(std::process::id()), "reparented");
    assert_eq!(uid_of(pid), Some(OWNER.0), "runs as the owner");
    assert_eq!(find(env.roots(), &env.vm), Some(pid));
    let rt = env.roots().vm_runtime_dir(&env.vm);
    assert_eq!(l.api_socket, rt.join("fc.sock"));
    assert_eq!(l.vsock_socket, rt.join("vsock.sock"));
    UnixStream::connect(&l.api_socket).expect("API socket answers on the short path");
    let log = l.log_file.as_ref().unwrap();
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("stand-in firecracker up"));
    assert_eq!(std::fs::metadata(log).unwrap().uid(), OWNER.0);
    let console = l.vmm.console.as_ref().expect("console staged with the log");
    let console = if console.is_absolute() && console.starts_with("/console.log") {
        banger_vmm::jailer::JailerLayout::new(&env.roots().state_dir)
            .host_path(&env.vm, "/console.log")
    } else {
        console.clone()
    };
    assert_eq!(std::fs::metadata(&console).unwrap().uid(), OWNER.0);
}

fn assert_cleaned(env: &Env, pid: Option<u32>) {
    if let Some(pid) = pid {
        let gone = start::wait_gone(pid, Duration::from_secs(5));
        assert!(gone, "pid {pid} still alive");
    }
    let rt = env.roots().vm_runtime_dir(&env.vm);
    for name in ["fc.sock", "vsock.sock", "firecracker.pid"] {
        assert!(
            std::fs::symlink_metadata(rt.join(name)).is_err(),
            "{name} left"
        );
    }
    assert!(!env.layout().vm_dir(&env.vm).exists());
    assert_eq!(env.mounts(), Vec::<PathBuf>::new());
    assert_eq!(find(env.roots(), &env.vm), None);
}

#[test]
fn direct_launch_is_detached_verified_and_cleaned_up() {
    let Some(env) = setup("direct_launch_is_detached_verified_and_cleaned_up") else {
        return;
    };
    let l = env.launch(&env.spec(false)).unwrap();
    assert_running(&env, &l);
    let rt = env.roots().vm_runtime_dir(&env.vm);
    assert_eq!(proc::read_pidfile(&rt.join("firecracker.pid")), Some(l.pid));
    assert_eq!(stat_field(l.pid, 3), Some(l.pid), "own session");
    assert_eq!(
        l.vmm.kernel,
        env.spec(false).kernel,
        "host paths in direct mode"
    );
    assert_eq!(l.vmm.vsock_uds, rt.join("vsock.sock"));

    let e = env.launch(&env.spec(false)).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");

    cleanup(env.roots(), &env.vm).unwrap();
    assert_cleaned(&env, Some(l.pid));
    cleanup(env.roots(), &env.vm).unwrap();
}

#[test]
fn jailed_launch_stages_runs_and_is_cleaned_up() {
    let Some(env) = setup("jailed_launch_stages_runs_and_is_cleaned_up") else {
        return;
    };
    let spec = env.spec(true);
    let l = env.launch(&spec).unwrap();
    assert_running(&env, &l);
    let layout = env.layout();
    let pidfile = layout.pidfile(&env.vm);
    assert!(proc::is_firecracker_for(
        l.pid,
        &env.vm,
        FcMatch::Jailer { pidfile: &pidfile }
    ));
    let rt = env.roots().vm_runtime_dir(&env.vm);
    assert_eq!(
        std::fs::read_link(rt.join("fc.sock")).unwrap(),
        layout.api_socket(&env.vm)
    );
    assert_eq!(l.vmm.kernel, PathBuf::from("/vmlinux"));
    assert_eq!(l.vmm.initrd, Some(PathBuf::from("/initrd.img")));
    let drives: Vec<_> = l.vmm.drives.iter().map(|d| d.path.clone()).collect();
    assert_eq!(drives, [PathBuf::from("/rootfs"), PathBuf::from("/work")]);
    assert_eq!(l.log_file, Some(layout.log(&env.vm)));
    // The console file exists for the jailed owner to write (`PUT /serial`).
    assert_eq!(l.vmm.console, Some(PathBuf::from("/console.log")));
    let console = layout.host_path(&env.vm, "/console.log");
    assert_eq!(std::fs::metadata(&console).unwrap().uid(), OWNER.0);
    assert!(layout.chroot(&env.vm).join("firecracker").is_file());
    assert!(env.mounts().contains(&layout.chroot(&env.vm)));

    cleanup(env.roots(), &env.vm).unwrap();
    assert_cleaned(&env, Some(l.pid));
}

#[test]
fn kill_and_signal_accept_only_the_vms_firecracker() {
    let Some(env) = setup("kill_and_signal_accept_only_the_vms_firecracker") else {
        return;
    };
    let l = env.launch(&env.spec(false)).unwrap();
    let h = crate::ops::Helper::new(env.cfg.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let other = HelperRequest::KillVmm {
            vm_id: vm_id(),
            pid: l.pid,
        };
        let e = crate::ops::execute(&h, other).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        let me = HelperRequest::SignalVmm {
            vm_id: env.vm.clone(),
            pid: std::process::id(),
            signal: "TERM".into(),
        };
        let e = crate::ops::execute(&h, me).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        let ours = HelperRequest::KillVmm {
            vm_id: env.vm.clone(),
            pid: l.pid,
        };
        assert_eq!(
            crate::ops::execute(&h, ours).await.unwrap(),
            HelperResponse::Done
        );
    });
    assert!(start::wait_gone(l.pid, Duration::from_secs(5)));
    // Cleanup after the VMM died on its own still removes everything.
    cleanup(env.roots(), &env.vm).unwrap();
    assert_cleaned(&env, Some(l.pid));
}

#[test]
fn failed_launches_undo_everything() {
    let Some(env) = setup("failed_launches_undo_everything") else {
        return;
    };
    env.write_bin(
        "jailer",
        "#!/bin/sh\necho 'jailer: cannot create the cgroup' >&2\nexit 1\n",
    );
    let e = env.launch(&env.spec(true)).unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationFailed, "{e:?}");
    assert!(e.message.contains("cannot create the cgroup"), "{e:?}");
    assert_cleaned(&env, None);

    env.write_bin("firecracker", "#!/bin/sh\nexit 3\n");
    let e = env.launch(&env.spec(false)).unwrap_err();
    assert!(e.message.contains("exited during startup"), "{e:?}");
    assert_cleaned(&env, None);
}

#[test]
fn misconfigured_binaries_are_not_run() {
    let Some(mut env) = setup("misconfigured_binaries_are_not_run") else {
        return;
    };
    let fc = env.cfg.firecracker.firecracker_bin.clone();
    std::os::unix::fs::chown(&fc, Some(OWNER.0), None).unwrap();
    let e = env.launch(&env.spec(false)).unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationFailed, "{e:?}");
    assert!(e.message.contains("not owned by root"), "{e:?}");
    std::os::unix::fs::chown(&fc, Some(0), None).unwrap();

    env.cfg.firecracker.jailer_bin = env.dir.path().join("bin/missing-jailer");
    let e = env.launch(&env.spec(true)).unwrap_err();
    assert!(e.message.contains("missing-jailer"), "{e:?}");
    // Nothing was staged for a launch refused up front.
    assert!(!env.layout().base().exists());
}
