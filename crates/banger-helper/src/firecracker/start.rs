//! Starting Firecracker detached and waiting until it answers.
//!
//! The VMM is a grandchild of the helper ([`spawn_detached`]): reparented
//! at once, never reaped or signalled by us, so neither a helper restart
//! nor a cancelled request takes the guest down. Until the launch is
//! confirmed, what we started is killed on every error path ([`Spawned`]).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_api::ApiError;
use banger_paths::MAX_SOCKET_PATH;
use banger_vmm::jailer::{
    direct_argv, jailer_argv, JailerArgs, JailerLayout, LaunchSpec, Launched, VmmPaths,
    API_SOCKET_NAME, DIRECT_CONSOLE_NAME, DIRECT_LOG_NAME, DIRECT_PIDFILE_NAME, VSOCK_SOCKET_NAME,
};
use banger_vmm::proc::{self, FcMatch};
use banger_vmm::spawn::{drop_privileges, spawn_detached};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use super::checks::CheckedDrive;
use super::fsx;
use super::stage;
use crate::ops::HelperConfig;
use crate::pidfd::{pidfd_kill, pidfd_open};

/// How long Firecracker gets to create its API socket. It needs
/// milliseconds; jailer a few more.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A process we started, SIGKILLed on drop unless [`Spawned::keep`] was
/// called. The pidfd is taken right after the spawn, so a kill can never
/// hit a recycled pid.
pub struct Spawned {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Spawned {
    pub fn new(pid: u32) -> Spawned {
        Spawned {
            pid,
            pidfd: pidfd_open(pid).ok(),
        }
    }

    pub fn keep(mut self) -> u32 {
        self.pidfd = None;
        self.pid
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(fd) = &self.pidfd {
            let _ = pidfd_kill(fd, libc::SIGKILL);
            wait_gone(self.pid, Duration::from_secs(2));
        }
    }
}

/// Waits (bounded) until `pid` is gone or a zombie; true when it is.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while proc::is_alive(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

enum Step<T> {
    Ready(T),
    Failed(ApiError),
    Pending,
}

fn wait_for<T>(
    what: impl Fn() -> String,
    mut step: impl FnMut() -> Step<T>,
) -> Result<T, ApiError> {
    let start = Instant::now();
    loop {
        match step() {
            Step::Ready(t) => return Ok(t),
            Step::Failed(e) => return Err(e),
            Step::Pending if start.elapsed() >= START_TIMEOUT => {
                return Err(ApiError::failed(format!(
                    "{} within {START_TIMEOUT:?}",
                    what()
                )))
            }
            Step::Pending => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn check_socket_len(p: &Path) -> Result<(), ApiError> {
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ApiError::bad_request(format!(
            "socket path {} is over the {MAX_SOCKET_PATH}-byte limit; use a shorter runtime dir",
            p.display()
        )));
    }
    Ok(())
}

/// Direct mode: Firecracker as the owner (when we are root), its API
/// socket in the VM's runtime dir; the helper records the pid in
/// `<runtime>/vms/<id>/firecracker.pid`.
pub fn direct(cfg: &HelperConfig, spec: &LaunchSpec) -> Result<Launched, ApiError> {
    let roots = &cfg.roots;
    let vm_id = spec.vm_id.as_str();
    let rt_path = roots.vm_runtime_dir(vm_id);
    let rt = fsx::open_dir_beneath(&roots.runtime_dir, &rt_path)?
        .ok_or_else(|| ApiError::bad_request(format!("{} does not exist", rt_path.display())))?;
    let api = rt_path.join(API_SOCKET_NAME);
    let vsock = rt_path.join(VSOCK_SOCKET_NAME);
    check_socket_len(&api)?;
    check_socket_len(&vsock)?;
    let log = if spec.log {
        create_direct_log(cfg, vm_id, DIRECT_CONSOLE_NAME)?;
        Some(create_direct_log(cfg, vm_id, DIRECT_LOG_NAME)?)
    } else {
        None
    };

    let bin = &cfg.firecracker.firecracker_bin;
    let mut cmd = Command::new(bin);
    cmd.args(direct_argv(vm_id, &api, log.as_deref()))
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if cfg.privileged && cfg.owner_uid != 0 {
        drop_privileges(&mut cmd, cfg.owner_uid, cfg.owner_gid);
    }
    let d = spawn_detached(&mut cmd, true)
        .map_err(|e| ApiError::failed(format!("cannot run {}: {e}", bin.display())))?;
    let spawned = Spawned::new(d.pid);

    let pidfile = rt_path.join(DIRECT_PIDFILE_NAME);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        &rt,
        DIRECT_PIDFILE_NAME,
        flags,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(fsx::sys("create", &pidfile))?;
    std::fs::File::from(fd)
        .write_all(format!("{}\n", d.pid).as_bytes())
        .map_err(fsx::io_err("write", &pidfile))?;

    let how = FcMatch::Direct {
        runtime_dir: &roots.runtime_dir,
    };
    wait_for(
        || {
            format!(
                "firecracker for vm {vm_id} did not create {}",
                api.display()
            )
        },
        || {
            if is_socket(&api) && proc::is_firecracker_for(d.pid, vm_id, how) {
                Step::Ready(())
            } else if !proc::is_alive(d.pid) {
                Step::Failed(ApiError::failed(format!(
                    "firecracker for vm {vm_id} exited during startup"
                )))
            } else {
                Step::Pending
            }
        },
    )?;
    let pid = spawned.keep();
    Ok(Launched {
        pid,
        api_socket: api,
        vsock_socket: vsock,
        log_file: log,
        vmm: VmmPaths::direct(spec, &rt_path, &roots.vm_state_dir(vm_id)),
    })
}

/// `<state>/vms/<id>/<name>` (the log, the console), created for the owner
/// if missing. An existing file is left exactly as it is (never chowned: it
/// could be a hard link to anything).
fn create_direct_log(
    cfg: &HelperConfig,
    vm_id: &str,
    name: &str,
) -> Result<std::path::PathBuf, ApiError> {
    let dir_path = cfg.roots.vm_state_dir(vm_id);
    let path = dir_path.join(name);
    let dir = fsx::open_dir_beneath(&cfg.roots.state_dir, &dir_path)?
        .ok_or_else(|| ApiError::bad_request(format!("{} does not exist", dir_path.display())))?;
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(&dir, name, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => fsx::set_owner_mode(&fd, &path, 0o600, (cfg.owner_uid, cfg.owner_gid))?,
        Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(fsx::sys("create", &path)(e).into()),
    }
    Ok(path)
}

/// Jailer mode: stage the chroot and the socket links, run jailer (as
/// root; it drops to the owner itself), and wait for the pid it records
/// and the API socket inside the chroot.
pub fn jailed(
    cfg: &HelperConfig,
    spec: &LaunchSpec,
    drives: &[CheckedDrive],
) -> Result<Launched, ApiError> {
    let roots = &cfg.roots;
    let vm_id = spec.vm_id.as_str();
    let rt_path = roots.vm_runtime_dir(vm_id);
    let api = rt_path.join(API_SOCKET_NAME);
    let vsock = rt_path.join(VSOCK_SOCKET_NAME);
    check_socket_len(&api)?;
    check_socket_len(&vsock)?;
    let owner = (cfg.owner_uid, cfg.owner_gid);
    stage::stage(roots, spec, drives, owner)?;
    stage::link_sockets(roots, vm_id)?;

    let layout = JailerLayout::new(&roots.state_dir);
    let args = JailerArgs {
        vm_id,
        exec_file: &cfg.firecracker.firecracker_bin,
        uid: cfg.owner_uid,
        gid: cfg.owner_gid,
        chroot_base: layout.base(),
        log: spec.log,
    };
    let bin = &cfg.firecracker.jailer_bin;
    let mut cmd = Command::new(bin);
    cmd.args(jailer_argv(&args))
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // No new session here: `--daemonize` calls setsid() itself, which
    // fails in a session leader.
    let d = spawn_detached(&mut cmd, false)
        .map_err(|e| ApiError::failed(format!("cannot run {}: {e}", bin.display())))?;
    let jailer = Spawned::new(d.pid);
    let errors = Collected::start(d.stderr);

    let pidfile = layout.pidfile(vm_id);
    let sock = layout.api_socket(vm_id);
    let how = FcMatch::Jailer { pidfile: &pidfile };
    let result = wait_for(
        || {
            format!(
                "firecracker for vm {vm_id} did not create {}",
                sock.display()
            )
        },
        || match proc::read_pidfile(&pidfile) {
            Some(pid) if is_socket(&sock) && proc::is_firecracker_for(pid, vm_id, how) => {
                Step::Ready(pid)
            }
            Some(pid) if !proc::is_alive(pid) => Step::Failed(ApiError::failed(format!(
                "firecracker for vm {vm_id} exited during startup{}",
                errors.suffix()
            ))),
            Some(_) => Step::Pending,
            // Jailer prints its errors before it daemonizes; once it is
            // gone with something on stderr and no pidfile, it failed.
            None if !proc::is_alive(d.pid) && errors.done() && !errors.text().is_empty() => {
                Step::Failed(ApiError::failed(format!(
                    "jailer for vm {vm_id} failed{}",
                    errors.suffix()
                )))
            }
            None => Step::Pending,
        },
    );
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            // Firecracker may run under another pid than jailer's (a jailer
            // that forks to daemonize); kill it too when it is verifiably ours.
            if let Some(pid) = proc::read_pidfile(&pidfile) {
                if pid != d.pid && proc::is_firecracker_for(pid, vm_id, how) {
                    drop(Spawned::new(pid));
                }
            }
            return Err(e);
        }
    };
    // Jailer exec'd into Firecracker (the same pid) or is gone: keep it.
    jailer.keep();
    Ok(Launched {
        pid,
        api_socket: api,
        vsock_socket: vsock,
        log_file: spec.log.then(|| layout.log(vm_id)),
        vmm: VmmPaths::jailed(spec),
    })
}

/// A launcher's stderr, read to EOF on a thread (at most 8 KiB kept).
struct Collected(Arc<Mutex<(Vec<u8>, bool)>>);

impl Collected {
    fn start(stderr: Option<ChildStderr>) -> Collected {
        let shared = Arc::new(Mutex::new((Vec::new(), stderr.is_none())));
        if let Some(mut err) = stderr {
            let s = shared.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    let n = err.read(&mut buf).unwrap_or(0);
                    let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                    if n == 0 {
                        g.1 = true;
                        return;
                    }
                    if g.0.len() < 8192 {
                        g.0.extend_from_slice(&buf[..n]);
                    }
                }
            });
        }
        Collected(shared)
    }

    fn done(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    fn text(&self) -> String {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&g.0).trim().to_string()
    }

    fn suffix(&self) -> String {
        match self.text() {
            t if t.is_empty() => String::new(),
            t => format!(": {t}"),
        }
    }
}
