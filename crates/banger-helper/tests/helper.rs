//! End-to-end tests against the real `banger-helper` binary on a temp socket.
//!
//! As root the helper runs under `unshare -n` (a fresh network namespace),
//! so even a validation bug could not touch the host's interfaces; as a
//! normal user it runs with `--allow-non-root`.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_api::{ErrorCode, OP_ID_HEADER};
use banger_helper::{HelperClient, HelperError, Roots};
use banger_vmm::qemu::QemuConfig;
use banger_vmm::Accel;

const VM: &str = "0123456789ab";
const OWNER_UID: u32 = 4242;
const OWNER_GID: u32 = 4343;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn have_unshare() -> bool {
    Command::new("unshare")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct RunningHelper {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    roots: Roots,
    log: PathBuf,
    in_netns: bool,
}

impl RunningHelper {
    fn start() -> RunningHelper {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            state_dir: dir.path().join("state"),
            runtime_dir: dir.path().join("run"),
        };
        std::fs::create_dir_all(roots.vm_state_dir(VM)).unwrap();
        std::fs::create_dir_all(roots.vm_runtime_dir(VM)).unwrap();
        let socket = roots.runtime_dir.join("helper.sock");
        let log = dir.path().join("helper.log");
        let child = Self::spawn(&socket, &roots, &log).spawn().unwrap();
        let h = RunningHelper {
            child,
            dir,
            socket,
            roots,
            log,
            in_netns: is_root() && have_unshare(),
        };
        h.wait_ready();
        h
    }

    fn spawn(socket: &Path, roots: &Roots, log: &Path) -> Command {
        let bin = env!("CARGO_BIN_EXE_banger-helper");
        let (owner_uid, owner_gid) = if is_root() {
            (OWNER_UID, OWNER_GID)
        } else {
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            unsafe { (libc::getuid(), libc::getgid()) }
        };
        let mut cmd = if is_root() && have_unshare() {
            // unshare execs the helper, so the child's pid is the helper's.
            let mut c = Command::new("unshare");
            c.arg("-n").arg(bin);
            c
        } else {
            let mut c = Command::new(bin);
            c.arg("--allow-non-root");
            c
        };
        cmd.arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(&roots.state_dir)
            .arg("--runtime-dir")
            .arg(&roots.runtime_dir)
            .arg("--owner-uid")
            .arg(owner_uid.to_string())
            .arg("--owner-gid")
            .arg(owner_gid.to_string())
            .arg("--log-file")
            .arg(log)
            .stdin(Stdio::null());
        cmd
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "helper did not come up; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn client(&self) -> HelperClient {
        HelperClient::new(&self.socket)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "helper ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for RunningHelper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn refused(r: Result<impl std::fmt::Debug, HelperError>, op_id: &str) -> banger_api::ApiError {
    match r {
        Err(HelperError::Refused(e)) => {
            assert_eq!(e.op_id, op_id, "op id echoed in the error body");
            e
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn qemu_config(roots: &Roots) -> QemuConfig {
    let s = roots.vm_state_dir(VM);
    let r = roots.vm_runtime_dir(VM);
    QemuConfig {
        vm_id: VM.into(),
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 256,
        kernel: roots.images_dir().join("vmlinuz"),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        root_disk: s.join("root.qcow2"),
        work_disk: s.join("work.ext4"),
        work_format: banger_vmm::qemu::DiskFormat::Raw,
        tap: banger_net::tap_name_for(VM),
        mac: "52:54:00:1e:00:02".into(),
        agent_socket: r.join("agent.sock"),
        qmp_socket: r.join("qmp.sock"),
        pidfile: roots.pidfile(VM),
        console_log: s.join("console.log"),
        vmm_log: Some(s.join("vmm.raw")),
        incoming: false,
    }
}

/// Sends raw bytes and returns the raw HTTP answer.
fn raw_http(socket: &Path, request: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn body_json(resp: &str) -> serde_json::Value {
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn ping_and_invalid_ops_are_refused_with_the_op_id() {
    let h = RunningHelper::start();
    let c = h.client();
    assert_eq!(
        c.ping("op-ping-1").await.unwrap(),
        banger_helper::proto::VERSION
    );

    let e = refused(
        c.create_tap("op-tap-eth0", "eth0", "br-fc").await,
        "op-tap-eth0",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("eth0"), "{e}");
    let e = refused(c.signal_vmm("op-sig-1", VM, 1, "TERM").await, "op-sig-1");
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = refused(
        c.signal_vmm("op-sig-stop", VM, 4242, "STOP").await,
        "op-sig-stop",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("STOP"), "{e}");
    let e = refused(c.kill_vmm("op-kill-1", VM, 1).await, "op-kill-1");
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = refused(
        c.ensure_bridge("op-br", "eth0", Ipv4Addr::new(172, 30, 0, 1), 24)
            .await,
        "op-br",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = refused(c.delete_tap("op-del", "lo").await, "op-del");
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = refused(
        c.chown_to_owner("op-chown", Path::new("/etc/passwd")).await,
        "op-chown",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let mut cfg = qemu_config(&h.roots);
    cfg.root_disk = "/etc/shadow".into();
    let e = refused(c.launch_qemu("op-launch", &cfg).await, "op-launch");
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("root_disk"), "{e}");
    // A symlink planted in the VM directory.
    std::os::unix::fs::symlink("/etc/shadow", h.roots.vm_state_dir(VM).join("root.qcow2")).unwrap();
    let e = refused(
        c.launch_qemu("op-launch-2", &qemu_config(&h.roots)).await,
        "op-launch-2",
    );
    assert!(e.message.contains("symlink"), "{e}");
    // A SignalVmm on a live pid that is not a VMM.
    let e = refused(
        c.signal_vmm("op-sig-me", VM, std::process::id(), "TERM")
            .await,
        "op-sig-me",
    );
    assert_eq!(e.code, ErrorCode::NotFound);

    // Outside the closed op set, with no op id: one is minted and echoed.
    let body = r#"{"op":"exec","argv":["/bin/sh"]}"#;
    let resp = raw_http(
        &h.socket,
        &format!(
            "POST /v1/op HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let minted = header(&resp, OP_ID_HEADER)
        .expect("op id header")
        .to_string();
    assert!(minted.starts_with("op-"), "{minted}");
    let j = body_json(&resp);
    assert_eq!(j["code"], "bad_request");
    assert_eq!(j["op_id"], minted.as_str());

    // Not JSON at all; and the header is adopted on errors too.
    let resp = raw_http(
        &h.socket,
        "POST /v1/op HTTP/1.1\r\nHost: x\r\nX-Banger-Op-Id: op-garbage\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{{{",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(header(&resp, OP_ID_HEADER), Some("op-garbage"));
    assert_eq!(body_json(&resp)["op_id"], "op-garbage");

    // Other methods and routes.
    let resp = raw_http(
        &h.socket,
        "GET /v1/op HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw_http(
        &h.socket,
        "GET /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert_eq!(body_json(&resp)["code"], "not_found");

    // One JSON log line per call, with op, op_id and elapsed_ms.
    let lines = h.log_lines();
    let find = |op_id: &str| {
        lines
            .iter()
            .filter(|l| l["op_id"] == op_id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let ping = find("op-ping-1");
    assert_eq!(ping.len(), 1, "{lines:#?}");
    assert_eq!(ping[0]["message"], "helper op completed");
    assert_eq!(ping[0]["op"], "ping");
    assert!(ping[0]["elapsed_ms"].is_u64());
    let bad = find("op-tap-eth0");
    assert_eq!(bad.len(), 1, "{lines:#?}");
    assert_eq!(bad[0]["message"], "helper op failed");
    assert_eq!(bad[0]["op"], "create_tap");
    assert_eq!(bad[0]["code"], "bad_request");
    assert!(bad[0]["elapsed_ms"].is_u64());
    assert_eq!(find(&minted).len(), 1);
}

#[tokio::test]
async fn sigterm_stops_serving_and_a_stale_socket_is_replaced() {
    let mut h = RunningHelper::start();
    h.client().ping("op-1").await.unwrap();

    // A second helper on the same socket refuses to start.
    let out = RunningHelper::spawn(&h.socket, &h.roots, &h.dir.path().join("second.log"))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already listening"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let st = h.terminate();
    assert_eq!(st.code(), Some(0), "clean exit on SIGTERM");
    assert!(!h.socket.exists(), "socket removed on shutdown");
    let e = h.client().ping("op-2").await.unwrap_err();
    assert!(e.to_string().contains("is it running?"), "{e}");

    // A socket file nobody listens on is stale and gets replaced.
    drop(std::os::unix::net::UnixListener::bind(&h.socket).unwrap());
    assert!(h.socket.exists());
    h.child = RunningHelper::spawn(&h.socket, &h.roots, &h.log)
        .spawn()
        .unwrap();
    h.wait_ready();
    h.client().ping("op-3").await.unwrap();

    // Socket mode and owner.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&h.socket).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    if is_root() {
        assert_eq!((md.uid(), md.gid()), (OWNER_UID, OWNER_GID));
    }
    assert_eq!(h.terminate().code(), Some(0));
}

/// Connects from a forked child running as `uid` and reports whether the
/// helper answered at all. The child uses raw syscalls only (it is forked
/// from a multi-threaded process).
fn answered_as(socket: &Path, uid: u32) -> bool {
    use std::ffi::CString;
    let path = CString::new(socket.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let body = r#"{"op":"ping"}"#;
    let req = format!(
        "POST /v1/op HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = [0u8; 256];
    // SAFETY: after fork the child performs only async-signal-safe system
    // calls on memory prepared before the fork and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: (child) raw syscalls on valid, pre-allocated buffers.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(3);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                libc::_exit(2);
            }
            libc::write(fd, req.as_ptr().cast(), req.len());
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::_exit(if n > 0 { 1 } else { 0 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; `status` is a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died: {status}");
    match libc::WEXITSTATUS(status) {
        0 => false,
        1 => true,
        2 => panic!("child could not connect"),
        other => panic!("child failed to set up ({other})"),
    }
}

#[tokio::test]
async fn peers_other_than_root_and_the_owner_are_refused() {
    if !is_root() {
        eprintln!("note: skipping peer-uid test: needs root to run a client as another uid");
        return;
    }
    let h = RunningHelper::start();
    // Let anyone reach the socket so the SO_PEERCRED check is what decides.
    for d in [h.dir.path(), h.roots.runtime_dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&h.socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    assert!(answered_as(&h.socket, OWNER_UID), "the owner is served");
    assert!(!answered_as(&h.socket, 65534), "nobody is refused");
    // Root still is.
    h.client().ping("op-after").await.unwrap();
    let refusals = h
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "refused connection")
        .count();
    assert_eq!(refusals, 1);
}

/// Runs `f` on a thread that joined the helper's network namespace.
fn in_netns_of<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd changes only this thread's
        // network namespace.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn bridge_and_tap_ops_work_in_a_fresh_netns() {
    if !is_root() || !have_unshare() {
        eprintln!("note: skipping netns test: needs root and unshare(1)");
        return;
    }
    let h = RunningHelper::start();
    assert!(h.in_netns);
    let c = h.client();
    let gw = Ipv4Addr::new(172, 30, 0, 1);
    let tap = banger_net::tap_name_for(VM);
    c.ensure_bridge("op-br-1", "br-fc", gw, 24).await.unwrap();
    c.ensure_bridge("op-br-2", "br-fc", gw, 24).await.unwrap();
    c.create_tap("op-tap-1", &tap, "br-fc").await.unwrap();
    c.create_tap("op-tap-2", &tap, "br-fc").await.unwrap();

    let tap2 = tap.clone();
    let (br, t, addrs) = in_netns_of(h.pid(), move || {
        Box::pin(async move {
            (
                banger_net::link("br-fc").await.unwrap().unwrap(),
                banger_net::link(&tap2).await.unwrap().unwrap(),
                banger_net::ipv4_addresses("br-fc").await.unwrap(),
            )
        })
    });
    assert!(br.up);
    assert_eq!(addrs, vec![(gw, 24)]);
    assert_eq!(t.controller, Some(br.index));
    let info = t.tun.unwrap();
    assert_eq!((info.owner, info.group), (Some(OWNER_UID), Some(OWNER_GID)));

    // A tap on a missing bridge fails as an operation, not a bad request.
    let e = refused(
        c.create_tap("op-tap-3", "tap-bg-ffffffff", "br-fc-none")
            .await,
        "op-tap-3",
    );
    assert_eq!(e.code, ErrorCode::OperationFailed, "{e}");

    // The launch path reaches QEMU (which fails: there is no kernel).
    let e = refused(
        c.launch_qemu("op-launch", &qemu_config(&h.roots)).await,
        "op-launch",
    );
    assert_eq!(e.code, ErrorCode::OperationFailed, "{e}");
    assert!(e.message.contains("launch vm"), "{e}");

    c.delete_tap("op-del-1", &tap).await.unwrap();
    c.delete_tap("op-del-2", &tap).await.unwrap();
    let tap3 = tap.clone();
    let gone = in_netns_of(h.pid(), move || {
        Box::pin(async move { !banger_net::link_exists(&tap3).await.unwrap() })
    });
    assert!(gone);
}

#[tokio::test]
async fn dm_snapshot_ops_over_the_socket() {
    use banger_vmm::cow::{create_cow_file, dm_available, DmSnapshot};
    let h = RunningHelper::start();
    let c = h.client();
    let base = h.roots.images_dir().join("base.ext4");
    let cow = h.roots.vm_state_dir(VM).join("root.cow");
    std::fs::create_dir_all(h.roots.images_dir()).unwrap();
    std::fs::File::create(&base)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    create_cow_file(&cow, &base).unwrap();

    // Refused by validation whoever runs the helper, op id echoed.
    let e = refused(
        c.create_dm_snapshot("op-dm-1", VM, Path::new("/etc/shadow"), &cow)
            .await,
        "op-dm-1",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("base"), "{e}");
    let e = refused(c.fsck_snapshot("op-dm-2", "/dev/sda1").await, "op-dm-2");
    assert_eq!(e.code, ErrorCode::BadRequest);
    let bad = DmSnapshot {
        cow_loop: "/dev/loop1x".into(),
        ..DmSnapshot::default()
    };
    let e = refused(c.remove_dm_snapshot("op-dm-3", &bad).await, "op-dm-3");
    assert_eq!(e.code, ErrorCode::BadRequest);

    let created = c.create_dm_snapshot("op-dm-4", VM, &base, &cow).await;
    if !is_root() {
        let e = refused(created, "op-dm-4");
        assert!(e.message.contains("needs root"), "{e}");
        return;
    }
    match dm_available() {
        Ok(()) => {
            let snap = created.unwrap();
            assert_eq!(snap.dev, DmSnapshot::dev_for(VM));
            c.remove_dm_snapshot("op-dm-5", &snap).await.unwrap();
        }
        Err(why) => {
            eprintln!("note: no device-mapper here ({why}); checking the unwind only");
            let e = refused(created, "op-dm-4");
            assert_eq!(e.code, ErrorCode::OperationFailed, "{e}");
            assert!(e.message.contains("dmsetup create"), "{e}");
        }
    }
    for f in [&base, &cow] {
        let out = Command::new("losetup").arg("-j").arg(f).output().unwrap();
        assert!(out.stdout.is_empty(), "loop left on {}", f.display());
    }
}

#[tokio::test]
async fn firecracker_ops_are_routed_and_validated() {
    // The binaries come from the helper's flags; bad ones refuse launches
    // without keeping the helper from starting (hosts without Firecracker
    // still serve QEMU).
    let h = RunningHelper::start();
    let c = h.client();
    let spec = banger_vmm::jailer::LaunchSpec {
        vm_id: VM.into(),
        jailer: false,
        kernel: "/etc/passwd".into(),
        initrd: None,
        drives: vec![banger_vmm::jailer::DriveSpec {
            id: "rootfs".into(),
            path: h.roots.vm_state_dir(VM).join("rootfs.ext4"),
        }],
        log: false,
    };
    let e = refused(c.launch_firecracker("op-fc-1", &spec).await, "op-fc-1");
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("kernel"), "{e}");

    // Nothing to clean up is fine, twice; a bad id is not.
    c.cleanup_firecracker("op-fc-2", VM).await.unwrap();
    c.cleanup_firecracker("op-fc-3", VM).await.unwrap();
    let e = refused(
        c.cleanup_firecracker("op-fc-4", "../../etc").await,
        "op-fc-4",
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let ops: Vec<_> = h
        .log_lines()
        .into_iter()
        .filter(|l| l["op_id"] == "op-fc-2")
        .collect();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["op"], "cleanup_firecracker");
}

/// Runs `f` on a thread that joined the network namespace of `pid`; any
/// process it spawns (nft) is in that namespace too.
fn in_netns_of_sync<T: Send + 'static>(pid: i32, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns_of(pid, move || Box::pin(async move { f() }))
}

fn have_nft() -> bool {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// `nft -j list ruleset` in the helper's namespace: the rules carrying the
/// comment of `vm_id` (any table) and whether banger's table exists.
fn nat_state_in(pid: i32, vm_id: &'static str) -> (usize, bool) {
    in_netns_of_sync(pid, move || {
        let out = Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let objs = v["nftables"].as_array().unwrap();
        let tag = format!("banger-vm:{vm_id}");
        let rules = objs
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r["comment"] == tag.as_str())
            .count();
        let table = objs
            .iter()
            .filter_map(|o| o.get("table"))
            .any(|t| t["family"] == "ip" && t["name"] == "banger");
        (rules, table)
    })
}

fn ip_forward_in(pid: i32) -> String {
    in_netns_of_sync(pid, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim()
            .to_string()
    })
}

#[tokio::test]
async fn nat_ops_end_to_end_in_a_fresh_netns() {
    const OTHER: &str = "abcdefabcdef";
    let h = RunningHelper::start();
    let c = h.client();
    let ip = Ipv4Addr::new(172, 30, 0, 2);

    // Refused by validation whoever runs the helper, op id echoed.
    let bad = [
        ("op-nat-br", c.ensure_nat("op-nat-br", VM, ip, "eth0").await),
        (
            "op-nat-br2",
            c.ensure_nat("op-nat-br2", VM, ip, "br-fc\" accept").await,
        ),
        (
            "op-nat-id",
            c.ensure_nat("op-nat-id", "../../etc", ip, "br-fc").await,
        ),
        (
            "op-nat-pub",
            c.ensure_nat("op-nat-pub", VM, Ipv4Addr::new(8, 8, 8, 8), "br-fc")
                .await,
        ),
        (
            "op-nat-lo",
            c.ensure_nat("op-nat-lo", VM, Ipv4Addr::LOCALHOST, "br-fc")
                .await,
        ),
        (
            "op-nat-any",
            c.ensure_nat("op-nat-any", VM, Ipv4Addr::UNSPECIFIED, "br-fc")
                .await,
        ),
        ("op-nat-rm", c.remove_nat("op-nat-rm", "banger-vm:x").await),
    ];
    for (op_id, r) in bad {
        let e = refused(r, op_id);
        assert_eq!(e.code, ErrorCode::BadRequest, "{op_id}: {e}");
    }

    if !h.in_netns {
        if is_root() {
            eprintln!(
                "note: skipping the NAT ops: as root without unshare(1) they would change the host"
            );
            return;
        }
        let e = refused(c.ensure_nat("op-nat-0", VM, ip, "br-fc").await, "op-nat-0");
        assert!(e.message.contains("needs root"), "{e}");
        return;
    }
    if !have_nft() {
        eprintln!("note: skipping the NAT ops: no nft binary");
        return;
    }
    let pid = h.pid();
    assert_eq!(
        nat_state_in(pid, VM),
        (0, false),
        "refused requests created nothing"
    );
    let forward_before = ip_forward_in(pid);

    c.ensure_nat("op-nat-1", VM, ip, "br-fc").await.unwrap();
    c.ensure_nat("op-nat-2", VM, ip, "br-fc").await.unwrap();
    assert_eq!(nat_state_in(pid, VM), (3, true), "one rule set, not two");
    assert_eq!(ip_forward_in(pid), "1");
    let listed = in_netns_of_sync(pid, || banger_net::list_vm_nat().unwrap());
    assert_eq!(listed, vec![(VM.to_string(), ip)]);

    let ip2 = Ipv4Addr::new(172, 30, 0, 3);
    c.ensure_nat("op-nat-3", OTHER, ip2, "br-fc").await.unwrap();
    assert_eq!(nat_state_in(pid, OTHER), (3, true));
    c.remove_nat("op-nat-4", VM).await.unwrap();
    assert_eq!(nat_state_in(pid, VM), (0, true));
    assert_eq!(nat_state_in(pid, OTHER), (3, true));
    c.remove_nat("op-nat-5", OTHER).await.unwrap();
    assert_eq!(nat_state_in(pid, OTHER), (0, false), "table gone");
    assert_eq!(ip_forward_in(pid), forward_before);
    c.remove_nat("op-nat-6", OTHER).await.unwrap();

    let ops: Vec<_> = h
        .log_lines()
        .into_iter()
        .filter(|l| l["op_id"] == "op-nat-1")
        .collect();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["op"], "ensure_nat");
}
