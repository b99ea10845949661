//! Init mode: the agent as PID 1, for images without an init system.
//!
//! OCI images (busybox, alpine, ...) have no systemd, so banger boots them
//! with `init=/usr/local/bin/banger-agent`. Started as PID 1 the agent does
//! the least an init must:
//!
//! 1. mounts the API filesystems (see [`MOUNTS`]) that initramfs-tools has
//!    not already moved into the root, each only if not mounted yet;
//! 2. mounts the work disk (`/dev/vdb`, ext4) on `/root`;
//! 3. sets `PATH`, `HOME` and `TERM` for everything it starts;
//! 4. starts the agent proper as a child: `/proc/self/exe` again, with the
//!    same arguments and [`CHILD_ENV`]`=1` so it serves instead of becoming
//!    init; it applies the identity and serves the host as under systemd,
//!    and is restarted a second after it exits;
//! 5. starts `/usr/sbin/sshd -D -e` when the image has it, restarted the
//!    same way but given up after [`SSHD_RAPID_FAILURES`] quick exits;
//! 6. reaps every process that ends up its child, forever. PID 1 never
//!    exits (the kernel would panic); SIGTERM, SIGINT and SIGHUP are
//!    blocked and ignored, SIGUSR1/SIGUSR2 (busybox `halt`/`poweroff`)
//!    power off.
//!
//! Commands the agent runs are children of the agent child, which waits for
//! them itself; PID 1 only ever sees orphans and its own services.
//!
//! A Poweroff request in the agent child (see [`CHILD_ENV`]) cannot ask
//! systemd; it calls [`power_off`] instead: stop every other process, sync,
//! remount `/root` and `/` read-only, power off.
//!
//! Every failure is logged to the console (PID 1's stderr) and skipped.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Set to `1` in the environment of the agent child that PID 1 starts: it
/// serves (never becomes init itself) and powers off without systemd.
pub const CHILD_ENV: &str = "BANGER_AGENT_CHILD";

/// `PATH` for everything init starts.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The work disk and where it goes.
const WORK_DISK: &str = "/dev/vdb";
const WORK_MOUNT: &str = "/root";
/// How long to wait for the work disk to show up, and how often to look.
const WORK_DISK_WAIT: Duration = Duration::from_secs(10);
const WORK_DISK_POLL: Duration = Duration::from_millis(50);

const SSHD: &str = "/usr/sbin/sshd";
/// sshd is given up after this many exits in a row, each within
/// [`RAPID_EXIT`] of its start (a missing host key, a bad config).
const SSHD_RAPID_FAILURES: u32 = 5;
/// A service that exits sooner than this after starting failed "rapidly".
const RAPID_EXIT: Duration = Duration::from_secs(10);
/// Pause before a service that exited is started again.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest PID 1 sleeps between looks for exited children; SIGCHLD
/// wakes it sooner.
const TICK: Duration = Duration::from_secs(1);

/// Signals PID 1 blocks and takes through `sigtimedwait` (so none of them
/// can kill or interrupt it, and SIGCHLD wakes it).
const INIT_SIGNALS: [Signal; 6] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Whether this process is PID 1, i.e. must act as init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Whether this process is the agent child of an init-mode PID 1.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1")
}

/// When a filesystem of [`MOUNTS`] is mounted (besides "not yet mounted").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only over a missing or empty directory (an image's own `/tmp`
    /// contents stay visible).
    MissingOrEmpty,
}

/// One filesystem init mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// If mounting with `data` fails, try again without it.
    pub data_optional: bool,
    /// Mode of the mount point when init has to create it.
    pub dir_mode: u32,
    pub when: When,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The API filesystems, in mount order (parents first).
pub const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        data_optional: false,
        dir_mode: 0o555,
        when: When::Always,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        data_optional: false,
        dir_mode: 0o555,
        when: When::Always,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        data_optional: true,
        dir_mode: 0o755,
        when: When::Always,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=620,ptmxmode=666"),
        data_optional: true,
        dir_mode: 0o755,
        when: When::Always,
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        data_optional: false,
        dir_mode: 0o1777,
        when: When::Always,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=755"),
        data_optional: false,
        dir_mode: 0o755,
        when: When::Always,
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        data_optional: false,
        dir_mode: 0o1777,
        when: When::MissingOrEmpty,
    },
];

/// The `/dev` links udev would make; devtmpfs does not.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Runs init; never returns. `args` are PID 1's arguments (whatever the
/// kernel and initramfs passed on), handed to the agent child if they are
/// the agent's.
pub fn run(args: Vec<OsString>) -> ! {
    log!(
        "version {} starting as init (pid 1)",
        env!("CARGO_PKG_VERSION")
    );
    let signals = block_init_signals();
    for (key, value) in env_overrides(std::env::var_os("TERM").is_some()) {
        // PID 1 has no other threads yet, so nothing reads the environment
        // while it changes.
        std::env::set_var(key, value);
    }
    mount_all(MOUNTS);
    for (link, target) in DEV_LINKS {
        match symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => log!("init: linking {link}: {e}"),
        }
    }
    mount_work_disk();

    let args = match crate::parse_args(args.clone()) {
        Ok(crate::Cli::Run(_)) => args,
        _ => {
            log!("init: ignoring arguments {args:?}; they are not the agent's");
            Vec::new()
        }
    };
    let exe = if Path::new("/proc/self/exe").exists() {
        OsString::from("/proc/self/exe")
    } else {
        OsString::from("/usr/local/bin/banger-agent")
    };
    let mut services = vec![Service {
        name: "banger-agent",
        program: exe,
        args,
        env: vec![(CHILD_ENV.into(), "1".into())],
        restart: Restart {
            delay: RESTART_DELAY,
            rapid: RAPID_EXIT,
            max_rapid_failures: None,
        },
    }];
    if Path::new(SSHD).exists() {
        make_dir("/run/sshd", 0o755);
        services.push(Service {
            name: "sshd",
            program: SSHD.into(),
            args: vec!["-D".into(), "-e".into()],
            env: Vec::new(),
            restart: Restart {
                delay: RESTART_DELAY,
                rapid: RAPID_EXIT,
                max_rapid_failures: Some(SSHD_RAPID_FAILURES),
            },
        });
    }
    let mut supervisor = Supervisor::new(services, signals);
    loop {
        match supervisor.step(TICK) {
            None | Some(Signal::SIGCHLD) => {}
            Some(sig @ (Signal::SIGUSR1 | Signal::SIGUSR2)) => {
                log!("init: {sig}: powering off");
                power_off();
            }
            Some(sig) => log!("init: ignoring {sig}"),
        }
    }
}

/// Environment variables init sets for everything it starts: `PATH`,
/// `HOME`, and `TERM` unless the kernel passed one.
pub fn env_overrides(term_set: bool) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("PATH", PATH), ("HOME", "/root")];
    if !term_set {
        env.push(("TERM", "linux"));
    }
    env
}

/// Blocks [`INIT_SIGNALS`] in this (single) thread. Services get an empty
/// mask again (see `Supervisor::start_due`).
fn block_init_signals() -> SigSet {
    let set = init_sigset();
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        log!("init: blocking signals: {e}");
    }
    set
}

fn init_sigset() -> SigSet {
    let mut set = SigSet::empty();
    for sig in INIT_SIGNALS {
        set.add(sig);
    }
    set
}

/// The mount points in `/proc/self/mountinfo` text (fifth field, with the
/// kernel's octal escapes undone).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_octal)
}

/// Whether `target` is a mount point according to `mountinfo`.
pub fn is_mounted(mountinfo: &str, target: &str) -> bool {
    mount_points(mountinfo).any(|m| m == target)
}

/// Undoes the `\NNN` escapes mountinfo uses for space, tab, newline and
/// backslash.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        if bytes[i] == b'\\' {
            if let Some(d) = digits.filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b))) {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mount table; empty while /proc is not mounted.
fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// Mounts each of `mounts` not mounted yet.
fn mount_all(mounts: &[Mount]) {
    for m in mounts {
        // Read afresh: the first entry mounts /proc itself.
        if is_mounted(&mountinfo(), m.target) {
            continue;
        }
        if m.when == When::MissingOrEmpty && !missing_or_empty(Path::new(m.target)) {
            continue;
        }
        make_dir(m.target, m.dir_mode);
        let mut result = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data);
        if result.is_err() && m.data_optional {
            result = mount(
                Some(m.source),
                m.target,
                Some(m.fstype),
                m.flags,
                None::<&str>,
            );
        }
        match result {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => log!("init: mounting {} on {}: {e}", m.fstype, m.target),
        }
    }
}

fn missing_or_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

/// Creates `dir` (and its parents) if missing, `mode` for `dir` itself.
fn make_dir(dir: &str, mode: u32) {
    if Path::new(dir).is_dir() {
        return;
    }
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        // The umask may have taken bits (the sticky one survives it, but
        // not group/other write).
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)));
    if let Err(e) = made {
        log!("init: creating {dir}: {e}");
    }
}

/// Waits up to `timeout` for `path` to exist, looking every `poll`.
pub fn wait_for(path: &Path, timeout: Duration, poll: Duration) -> bool {
    let start = Instant::now();
    loop {
        if path.exists() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        sleep(poll);
    }
}

/// Mounts the work disk on /root, once it shows up.
fn mount_work_disk() {
    if is_mounted(&mountinfo(), WORK_MOUNT) {
        return;
    }
    if !wait_for(Path::new(WORK_DISK), WORK_DISK_WAIT, WORK_DISK_POLL) {
        log!("init: no {WORK_DISK} after {WORK_DISK_WAIT:?}; {WORK_MOUNT} is the image's");
        return;
    }
    make_dir(WORK_MOUNT, 0o700);
    match mount(
        Some(WORK_DISK),
        WORK_MOUNT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => log!("init: {WORK_DISK} mounted on {WORK_MOUNT}"),
        Err(e) => log!("init: mounting {WORK_DISK} on {WORK_MOUNT}: {e}"),
    }
}

/// Powers the VM off without an init system: every other process gets
/// SIGTERM, then SIGKILL (Linux's `kill(-1)` spares PID 1 and the caller);
/// then sync, `/root` and `/` remounted read-only, sync, reboot(2).
/// Returns only if powering off failed.
pub fn power_off() {
    sync();
    let everyone = Pid::from_raw(-1);
    let _ = kill(everyone, Signal::SIGTERM);
    sleep(Duration::from_millis(500));
    let _ = kill(everyone, Signal::SIGKILL);
    // Let the killed processes close their files.
    sleep(Duration::from_millis(100));
    sync();
    let table = mountinfo();
    for target in [WORK_MOUNT, "/"] {
        if target != "/" && !is_mounted(&table, target) {
            continue;
        }
        let flags = MsFlags::MS_REMOUNT.union(MsFlags::MS_RDONLY);
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            log!("remounting {target} read-only: {e}");
        }
    }
    sync();
    // SAFETY: reboot(2) with a valid command; it takes no pointers. On
    // success it does not return.
    let rc = unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };
    if rc != 0 {
        log!("reboot(POWER_OFF): {}", std::io::Error::last_os_error());
    }
}

fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// A process init keeps running.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: &'static str,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Added to init's environment.
    pub env: Vec<(OsString, OsString)>,
    pub restart: Restart,
}

/// When a service that exited starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// Pause before the next start.
    pub delay: Duration,
    /// A run shorter than this is a rapid failure.
    pub rapid: Duration,
    /// Give up after this many rapid failures in a row; None: never.
    pub max_rapid_failures: Option<u32>,
}

impl Restart {
    /// After a run of `ran_for` ended at `now`: when to start again (None:
    /// give up), counting rapid failures in `rapid_failures`.
    pub fn next_start(
        &self,
        ran_for: Duration,
        rapid_failures: &mut u32,
        now: Instant,
    ) -> Option<Instant> {
        if ran_for < self.rapid {
            *rapid_failures += 1;
        } else {
            *rapid_failures = 0;
        }
        match self.max_rapid_failures {
            Some(max) if *rapid_failures >= max => None,
            _ => Some(now + self.delay),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running { pid: Pid, since: Instant },
    Waiting { until: Instant },
    GaveUp,
}

struct Slot {
    service: Service,
    state: State,
    rapid_failures: u32,
    starts: u32,
}

/// Keeps services running and reaps every child of this process: PID 1's,
/// or a subreaper's (see `prctl(PR_SET_CHILD_SUBREAPER)`), orphans too.
pub struct Supervisor {
    slots: Vec<Slot>,
    /// Signals [`Supervisor::step`] waits for.
    signals: SigSet,
    /// Children reaped that were no service's.
    pub orphans_reaped: u64,
}

impl Supervisor {
    /// Services start on the first step. `signals` should be blocked by the
    /// caller for a step to take them (and to wake on SIGCHLD); unblocked,
    /// a step just sleeps.
    pub fn new(services: Vec<Service>, signals: SigSet) -> Supervisor {
        let now = Instant::now();
        Supervisor {
            slots: services
                .into_iter()
                .map(|service| Slot {
                    service,
                    state: State::Waiting { until: now },
                    rapid_failures: 0,
                    starts: 0,
                })
                .collect(),
            signals,
            orphans_reaped: 0,
        }
    }

    /// How often service `name` has been started.
    #[cfg(test)]
    pub fn starts(&self, name: &str) -> u32 {
        self.slot(name).map_or(0, |s| s.starts)
    }

    /// Whether service `name` is given up.
    #[cfg(test)]
    pub fn gave_up(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|s| s.state == State::GaveUp)
    }

    #[cfg(test)]
    fn slot(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.service.name == name)
    }

    /// One round: reaps what exited, starts what is due, then waits at most
    /// `max_wait` (less if a restart is due sooner) for one of the signals.
    /// Returns the signal taken, if any.
    pub fn step(&mut self, max_wait: Duration) -> Option<Signal> {
        self.reap();
        let now = Instant::now();
        self.start_due(now);
        let wait = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                State::Waiting { until } => Some(until.saturating_duration_since(now)),
                _ => None,
            })
            .fold(max_wait, Duration::min);
        wait_signal(&self.signals, wait)
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                    if let Some(pid) = status.pid() {
                        self.exited(pid, status);
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    log!("init: waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn exited(&mut self, pid: Pid, status: WaitStatus) {
        let now = Instant::now();
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))
        else {
            self.orphans_reaped += 1;
            return;
        };
        let State::Running { since, .. } = slot.state else {
            unreachable!("found by its Running state");
        };
        let name = slot.service.name;
        let restart = slot.service.restart;
        let next = restart.next_start(now - since, &mut slot.rapid_failures, now);
        slot.state = match next {
            Some(until) => {
                log!(
                    "init: {name} (pid {pid}) {}; restarting in {:?}",
                    describe(status),
                    restart.delay
                );
                State::Waiting { until }
            }
            None => {
                log!(
                    "init: {name} (pid {pid}) {}; giving up after {} quick exits",
                    describe(status),
                    slot.rapid_failures
                );
                State::GaveUp
            }
        };
    }

    fn start_due(&mut self, now: Instant) {
        for slot in &mut self.slots {
            let State::Waiting { until } = slot.state else {
                continue;
            };
            if until > now {
                continue;
            }
            let svc = &slot.service;
            slot.starts += 1;
            let mut command = Command::new(&svc.program);
            command
                .args(&svc.args)
                .envs(svc.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null());
            // The signal mask survives fork and exec, and std leaves it
            // alone: without this, services would start with init's signals
            // blocked (a SIGTERM'd agent or sshd would not die).
            //
            // SAFETY: `clear_signal_mask` runs in the forked child before
            // exec and calls only sigemptyset(3) and sigprocmask(2), which
            // are async-signal-safe; it allocates nothing.
            unsafe {
                command.pre_exec(clear_signal_mask);
            }
            let spawned = command.spawn();
            match spawned {
                // The Child is dropped unwaited: `reap` collects it.
                Ok(child) => {
                    let pid = Pid::from_raw(child.id() as i32);
                    slot.state = State::Running { pid, since: now };
                }
                Err(e) => {
                    let next =
                        svc.restart
                            .next_start(Duration::ZERO, &mut slot.rapid_failures, now);
                    let name = svc.name;
                    slot.state = match next {
                        Some(until) => {
                            log!("init: cannot start {name}: {e}; retrying");
                            State::Waiting { until }
                        }
                        None => {
                            log!("init: cannot start {name}: {e}; giving up");
                            State::GaveUp
                        }
                    };
                }
            }
        }
    }
}

/// Unblocks every signal of the calling thread. Async-signal-safe.
fn clear_signal_mask() -> std::io::Result<()> {
    let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it points to; sigprocmask
    // reads it and may take a null old set.
    let rc = unsafe {
        libc::sigemptyset(none.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// "exited with status N" or "killed by SIGX".
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// Waits up to `timeout` for one of `set` (blocked) to arrive.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits any c_long.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: both pointers are to live values for the duration of the
    // call; the siginfo pointer may be null.
    let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if rc > 0 {
        Signal::try_from(rc).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
