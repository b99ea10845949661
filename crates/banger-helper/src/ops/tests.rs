use super::*;
use banger_api::ErrorCode;
use banger_vmm::Accel;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};

const VM: &str = "0123456789ab";
const OTHER_VM: &str = "ba9876543210";

use crate::testutil::is_root;

struct Env {
    dir: tempfile::TempDir,
    cfg: HelperConfig,
}

impl Env {
    fn new(privileged: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            state_dir: dir.path().join("state"),
            runtime_dir: dir.path().join("run"),
        };
        for d in [
            roots.vm_state_dir(VM),
            roots.vm_runtime_dir(VM),
            roots.vm_runtime_dir(OTHER_VM),
            roots.images_dir(),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let cfg = HelperConfig {
            socket: dir.path().join("helper.sock"),
            roots,
            owner_uid: uid,
            owner_gid: gid,
            qemu_bin: PathBuf::from("/nonexistent/qemu"),
            firecracker: Default::default(),
            privileged,
            launch_timeout: Duration::from_secs(10),
        };
        Env { dir, cfg }
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A process that looks like our VMM to /proc: its comm starts with
    /// `qemu-system` and its argv has `-pidfile <pidfile of vm>`.
    ///
    /// It is `/bin/sh` run through a symlink named `qemu-system-x86_64`
    /// (comm comes from the name executed), so no freshly written file is
    /// executed here (that can fail with ETXTBSY while other tests fork).
    fn fake_vmm(&self, vm: &str) -> Child {
        let bin = self.dir.path().join("qemu-system-x86_64");
        if !bin.exists() {
            std::os::unix::fs::symlink("/bin/sh", &bin).unwrap();
        }
        let child = Command::new(bin)
            .args(["-c", "read x"])
            .arg("-pidfile")
            .arg(self.cfg.roots.pidfile(vm))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until exec completes the child still looks like this test binary,
        // and the helper rightly refuses to signal it. Wait for the exec
        // (generously: CI may be busy booting VMs) and fail loudly if not.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !banger_vmm::proc::comm(pid).is_some_and(|c| c.starts_with("qemu-system")) {
            assert!(
                std::time::Instant::now() < deadline,
                "fake vmm {pid} never exec'd"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child
    }

    fn qemu(&self) -> QemuConfig {
        let s = self.cfg.roots.vm_state_dir(VM);
        let r = self.cfg.roots.vm_runtime_dir(VM);
        QemuConfig {
            vm_id: VM.into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 256,
            kernel: self.cfg.roots.images_dir().join("vmlinuz"),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            root_disk: s.join("root.qcow2"),
            work_disk: s.join("work.ext4"),
            work_format: banger_vmm::qemu::DiskFormat::Raw,
            tap: banger_net::tap_name_for(VM),
            mac: "52:54:00:1e:00:02".into(),
            agent_socket: r.join("agent.sock"),
            qmp_socket: r.join("qmp.sock"),
            pidfile: self.cfg.roots.pidfile(VM),
            console_log: s.join("console.log"),
            vmm_log: Some(s.join("vmm.raw")),
            incoming: false,
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn unprivileged_helper_validates_then_refuses_network_ops() {
    let env = Env::new(false);
    let h = Helper::new(env.cfg.clone());
    rt().block_on(async {
        let ok = HelperRequest::EnsureBridge {
            name: "br-fc".into(),
            ip: "172.30.0.1".parse().unwrap(),
            prefix: 24,
        };
        let e = execute(&h, ok).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::OperationFailed);
        assert!(e.message.contains("needs root"), "{e}");

        // Validation comes first: a bad name is a bad request even here.
        for bad in [
            HelperRequest::CreateTap {
                name: "eth0".into(),
                bridge: "br-fc".into(),
            },
            HelperRequest::DeleteTap { name: "lo".into() },
            // A claim names a pool tap and a VM id, never an interface to
            // rename a host link into or out of.
            HelperRequest::ClaimTap {
                pool: "eth0".into(),
                vm_id: "0123456789ab".into(),
                bridge: "br-fc".into(),
            },
            HelperRequest::ClaimTap {
                pool: "tap-bg-p1".into(),
                vm_id: "../x".into(),
                bridge: "br-fc".into(),
            },
            HelperRequest::ClaimTap {
                pool: "tap-bg-p1".into(),
                vm_id: "0123456789ab".into(),
                bridge: "docker0".into(),
            },
            HelperRequest::ReleaseTap {
                vm_id: "0123456789ab".into(),
                pool: "tap-bg-0123abcd".into(),
                bridge: "br-fc".into(),
            },
            HelperRequest::EnsureBridge {
                name: "br-fc".into(),
                ip: "8.8.8.8".parse().unwrap(),
                prefix: 24,
            },
        ] {
            let e = execute(&h, bad).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
        }
        assert_eq!(
            execute(&h, HelperRequest::Ping).await.unwrap(),
            HelperResponse::Pong {
                version: VERSION.into()
            }
        );
    });
}

#[test]
fn signals_reach_only_the_vms_own_vmm() {
    let env = Env::new(false);
    let roots = &env.cfg.roots;
    let mut vmm = env.fake_vmm(VM);
    let pid = vmm.id() as i32;

    // Another VM's id: the pidfile in its argv does not match.
    let e = signal_vmm(roots, OTHER_VM, pid, libc::SIGTERM).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    // Our own test process is not a VMM.
    let me = std::process::id() as i32;
    let e = signal_vmm(roots, VM, me, libc::SIGTERM).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");

    signal_vmm(roots, VM, pid, libc::SIGTERM).unwrap();
    let status = vmm.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));

    // Gone (and reaped): not found.
    let e = signal_vmm(roots, VM, pid, libc::SIGKILL).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
}

#[test]
fn kill_and_signal_requests_are_validated() {
    let env = Env::new(false);
    let h = Helper::new(env.cfg.clone());
    rt().block_on(async {
        for (req, needle) in [
            (
                HelperRequest::SignalVmm {
                    vm_id: VM.into(),
                    pid: 1,
                    signal: "TERM".into(),
                },
                "pid 1",
            ),
            (
                HelperRequest::SignalVmm {
                    vm_id: VM.into(),
                    pid: 1234,
                    signal: "STOP".into(),
                },
                "not allowed",
            ),
            (
                HelperRequest::SignalVmm {
                    vm_id: "../x".into(),
                    pid: 1234,
                    signal: "TERM".into(),
                },
                "vm id",
            ),
            (
                HelperRequest::KillVmm {
                    vm_id: VM.into(),
                    pid: 0,
                },
                "pid 0",
            ),
        ] {
            let e = execute(&h, req).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            assert!(e.message.contains(needle), "{e} (wanted {needle:?})");
        }
        let mut vmm = env.fake_vmm(VM);
        execute(
            &h,
            HelperRequest::KillVmm {
                vm_id: VM.into(),
                pid: vmm.id(),
            },
        )
        .await
        .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(vmm.wait().unwrap().signal(), Some(libc::SIGKILL));
    });
}

/// Executing a script right after writing it can hit ETXTBSY when another
/// test thread forks in between; retry that (and only that).
fn launch_retrying(cfg: &HelperConfig, qemu: &QemuConfig) -> Result<u32, ApiError> {
    for _ in 0..20 {
        match launch(cfg, qemu) {
            Err(e) if e.message.contains("Text file busy") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other,
        }
    }
    launch(cfg, qemu)
}

#[test]
fn launch_validates_runs_and_reports() {
    let mut env = Env::new(false);
    // A stand-in QEMU that writes its pidfile like -daemonize does.
    env.cfg.qemu_bin = env.script(
        "fake-qemu",
        r#"while [ $# -gt 0 ]; do [ "$1" = -pidfile ] && echo 4242 > "$2"; shift; done"#,
    );
    assert_eq!(launch_retrying(&env.cfg, &env.qemu()).unwrap(), 4242);

    let mut bad = env.qemu();
    bad.root_disk = "/etc/shadow".into();
    let e = launch(&env.cfg, &bad).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");

    // Startup errors come back with QEMU's stderr.
    env.cfg.qemu_bin = env.script("failing-qemu", "echo 'could not open disk' >&2; exit 1");
    let e = launch_retrying(&env.cfg, &env.qemu()).unwrap_err();
    assert_eq!(e.code, ErrorCode::OperationFailed);
    assert!(e.message.contains("could not open disk"), "{e}");

    // Never relaunch over a live VMM.
    let mut vmm = env.fake_vmm(VM);
    std::fs::write(env.cfg.roots.pidfile(VM), vmm.id().to_string()).unwrap();
    let e = launch(&env.cfg, &env.qemu()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{e}");
    vmm.kill().unwrap();
    vmm.wait().unwrap();
}

#[test]
fn chown_hands_files_over_without_following_links() {
    let env = Env::new(is_root());
    let roots = &env.cfg.roots;
    let (uid, gid) = if is_root() {
        (4242, 4343)
    } else {
        (env.cfg.owner_uid, env.cfg.owner_gid)
    };
    let f = roots.vm_runtime_dir(VM).join("agent.sock");
    std::fs::write(&f, b"").unwrap();
    chown_to_owner(roots, &f, uid, gid).unwrap();
    let md = std::fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (uid, gid));

    // A symlinked directory is refused (by validation, and by the walk).
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"").unwrap();
    std::os::unix::fs::symlink(&outside, roots.vm_state_dir(VM).join("sub")).unwrap();
    let e =
        chown_to_owner(roots, &roots.vm_state_dir(VM).join("sub/victim"), uid, gid).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    if is_root() {
        assert_eq!(std::fs::metadata(outside.join("victim")).unwrap().uid(), 0);
    }
}

#[test]
fn nat_ops_validate_then_need_root() {
    let env = Env::new(false);
    let h = Helper::new(env.cfg.clone());
    rt().block_on(async {
        for ok in [
            HelperRequest::EnsureNat {
                vm_id: VM.into(),
                ip: "172.30.0.2".parse().unwrap(),
                bridge: "br-fc".into(),
            },
            HelperRequest::RemoveNat { vm_id: VM.into() },
        ] {
            let e = execute(&h, ok).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::OperationFailed);
            assert!(e.message.contains("needs root"), "{e}");
        }
        // Validation comes first: bad input is a bad request even here.
        let ensure = |vm_id: &str, ip: &str, bridge: &str| HelperRequest::EnsureNat {
            vm_id: vm_id.into(),
            ip: ip.parse().unwrap(),
            bridge: bridge.into(),
        };
        for (bad, needle) in [
            (ensure("../../etc", "172.30.0.2", "br-fc"), "vm id"),
            (ensure(VM, "172.30.0.2", "eth0"), "bridge"),
            (ensure(VM, "8.8.8.8", "br-fc"), "8.8.8.8"),
            (ensure(VM, "127.0.0.1", "br-fc"), "127.0.0.1"),
            (ensure(VM, "0.0.0.0", "br-fc"), "0.0.0.0"),
            (
                HelperRequest::RemoveNat {
                    vm_id: "x\" accept".into(),
                },
                "vm id",
            ),
        ] {
            let e = execute(&h, bad).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
    });
}

#[test]
fn resolver_routing_validates_then_needs_root() {
    let env = Env::new(false);
    let h = Helper::new(env.cfg.clone());
    let req = |bridge: &str, server: &str| HelperRequest::SyncResolverRouting {
        bridge: bridge.into(),
        server: server.into(),
    };
    rt().block_on(async {
        let e = execute(&h, req("br-fc", "172.30.0.1:42069"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::OperationFailed);
        assert!(e.message.contains("needs root"), "{e}");
        for (bad, needle) in [
            (req("eth0", "172.30.0.1:42069"), "bridge"),
            (req("br-fc", "172.30.0.1:0"), "resolver address"),
            (req("br-fc", "1.2.3.4;rm"), "resolver address"),
            (req("br-fc", "[::1]:53"), "resolver address"),
        ] {
            let e = execute(&h, bad).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            assert!(e.message.contains(needle), "{e}");
        }
    });
}
