//! [`is_firecracker_for`] and [`find_firecracker`] against real processes.
//!
//! The stand-in Firecracker is `/bin/sh` run through a symlink named
//! `firecracker`: the kernel takes comm from the name executed, and
//! `sh -c 'read x' --id ...` keeps the flags on the command line exactly
//! as given. (Nothing freshly written is executed, which avoids ETXTBSY
//! while other tests fork.)

use super::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VM: &str = "0123456789ab";
const OTHER_VM: &str = "ba9876543210";

struct Fixture {
    dir: tempfile::TempDir,
    pidfile: PathBuf,
    kids: Vec<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for k in &mut self.kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/sh", dir.path().join("firecracker")).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Fixture {
            pidfile: dir.path().join("firecracker.pid"),
            dir,
            kids: Vec::new(),
        }
    }

    fn runtime(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn pidfile(&self) -> PathBuf {
        self.pidfile.clone()
    }

    /// Starts `<prog> -c 'read x' <args>` and waits until its comm is set.
    fn start(&mut self, prog: &Path, args: &[&str]) -> u32 {
        let child = Command::new(prog)
            .args(["-c", "read x"])
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.kids.push(child);
        let want = prog.file_name().unwrap().to_str().unwrap().to_string();
        let start = Instant::now();
        while comm(pid).as_deref() != Some(want.as_str()) {
            assert!(start.elapsed() < Duration::from_secs(5), "{want} never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        pid
    }

    fn fc(&mut self, args: &[&str]) -> u32 {
        let prog = self.dir.path().join("firecracker");
        self.start(&prog, args)
    }

    fn jailer(&self) -> FcMatch<'_> {
        FcMatch::Jailer {
            pidfile: &self.pidfile,
        }
    }
}

#[test]
fn jailer_mode_needs_the_pidfile_to_name_the_pid() {
    let mut f = Fixture::new();
    let pid = f.fc(&[
        &format!("--id={VM}"),
        "--api-sock",
        "/run/firecracker.socket",
    ]);

    // Missing pidfile.
    assert!(!is_firecracker_for(pid, VM, f.jailer()));

    // Happy path, with the whitespace a shell or jailer might leave.
    for content in [pid.to_string(), format!("  {pid}\n"), format!("{pid}\n\n")] {
        std::fs::write(f.pidfile(), content).unwrap();
        assert!(is_firecracker_for(pid, VM, f.jailer()));
        assert_eq!(find_firecracker(VM, &f.pidfile(), &f.runtime()), Some(pid));
    }

    // Another VM's id.
    assert!(!is_firecracker_for(pid, OTHER_VM, f.jailer()));
    assert_eq!(find_firecracker(OTHER_VM, &f.pidfile(), &f.runtime()), None);

    // Garbage.
    for garbage in ["", "abc", "12 34", "-5", "0x10", &format!("{pid}x")] {
        std::fs::write(f.pidfile(), garbage).unwrap();
        assert!(!is_firecracker_for(pid, VM, f.jailer()), "{garbage:?}");
    }

    // A pidfile naming some other live firecracker-named process.
    let other = f.fc(&["--id", VM]);
    std::fs::write(f.pidfile(), other.to_string()).unwrap();
    assert!(!is_firecracker_for(pid, VM, f.jailer()));
    assert!(is_firecracker_for(other, VM, f.jailer()));
}

#[test]
fn stale_pid_and_wrong_comm_are_refused() {
    let mut f = Fixture::new();
    // Stale: the process named in the pidfile is gone.
    let pid = f.fc(&["--id", VM]);
    std::fs::write(f.pidfile(), pid.to_string()).unwrap();
    assert!(is_firecracker_for(pid, VM, f.jailer()));
    let mut child = f.kids.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!is_firecracker_for(pid, VM, f.jailer()));
    assert_eq!(find_firecracker(VM, &f.pidfile(), &f.runtime()), None);

    // Wrong comm: same argv, but run as `sh`.
    let sh = f.start(Path::new("/bin/sh"), &["--id", VM]);
    std::fs::write(f.pidfile(), sh.to_string()).unwrap();
    assert!(!is_firecracker_for(sh, VM, f.jailer()));

    // Never pid 1 or ourselves.
    assert!(!is_firecracker_for(1, VM, f.jailer()));
    assert!(!is_firecracker_for(std::process::id(), VM, f.jailer()));
}

#[test]
fn direct_mode_needs_our_api_socket() {
    let mut f = Fixture::new();
    let run = f.runtime();
    let sock = run.join("vms").join(VM).join("fc.sock");
    let sock = sock.to_str().unwrap().to_string();
    let direct = FcMatch::Direct { runtime_dir: &run };

    let long = f.fc(&["--id", VM, "--api-sock", &sock]);
    let eq = f.fc(&["--id", VM, &format!("--api-sock={sock}")]);
    let short = f.fc(&[&format!("--id={VM}"), "-a", &sock]);
    for pid in [long, eq, short] {
        assert!(is_firecracker_for(pid, VM, direct), "pid {pid}");
        assert!(!is_firecracker_for(pid, OTHER_VM, direct));
    }
    let found = find_firecracker(VM, &f.pidfile(), &run).unwrap();
    assert!([long, eq, short].contains(&found));

    // Outside the runtime dir, escaping it, relative, or missing.
    let outside = f.fc(&["--id", VM, "--api-sock", "/tmp/fc.sock"]);
    let escape = format!("{}/../x/fc.sock", run.display());
    let dotdot = f.fc(&["--id", VM, "--api-sock", &escape]);
    let relative = f.fc(&["--id", VM, "--api-sock", "run/fc.sock"]);
    let none = f.fc(&["--id", VM]);
    let the_dir = f.fc(&["--id", VM, "--api-sock", run.to_str().unwrap()]);
    for pid in [outside, dotdot, relative, none, the_dir] {
        assert!(!is_firecracker_for(pid, VM, direct), "pid {pid}");
    }
    // Two ids, one of them another VM's.
    let two = f.fc(&["--id", VM, "--id", OTHER_VM, "--api-sock", &sock]);
    assert!(!is_firecracker_for(two, VM, direct));
}

#[test]
fn flag_forms() {
    let argv: Vec<String> = [
        "fc",
        "--id",
        "a",
        "--id=b",
        "-a",
        "/x",
        "--api-sock=/y",
        "--api-sock",
        "/z",
        "--identity=c",
        "--id",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(flag_values(&argv, "--id", None), ["a", "b"]);
    assert_eq!(
        flag_values(&argv, "--api-sock", Some("-a")),
        ["/x", "/y", "/z"]
    );
    // argv[0] is never a flag.
    let argv0: Vec<String> = vec!["--id".into(), "x".into()];
    assert!(flag_values(&argv0, "--id", None).is_empty());
}

#[test]
fn paths_under() {
    let d = Path::new("/run/banger");
    assert!(path_is_under(Path::new("/run/banger/vms/a/fc.sock"), d));
    assert!(path_is_under(Path::new("/run/banger/x"), d));
    assert!(!path_is_under(Path::new("/run/banger"), d));
    assert!(!path_is_under(Path::new("/run/banger-evil/x"), d));
    assert!(!path_is_under(Path::new("/run/banger/../etc/x"), d));
    assert!(!path_is_under(Path::new("run/banger/x"), d));
}

#[test]
fn cgroup_lines() {
    assert!(cgroup_is_helpers("0::/system.slice/bangerd-root.service\n"));
    assert!(cgroup_is_helpers(
        "12:pids:/user.slice\n1:name=systemd:/system.slice/bangerd-root.service/sub\n"
    ));
    for no in [
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/bangerd-root.service\n",
        "0::/system.slice/bangerd-root.service.evil\n",
        "0::/system.slice/bangerd.service\n",
        "0::/\n",
        "",
        "garbage",
    ] {
        assert!(!cgroup_is_helpers(no), "{no:?}");
    }
    // This test process is in no such cgroup.
    assert!(!in_helper_cgroup(std::process::id()));
}

#[test]
fn pidfiles_must_be_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.pid");
    std::fs::write(&real, " 4242 \n").unwrap();
    assert_eq!(read_pidfile(&real), Some(4242));
    // A symlink to a good pidfile is not followed.
    let link = dir.path().join("link.pid");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(read_pidfile(&link), None);
    // A FIFO neither blocks nor counts.
    let fifo = dir.path().join("fifo.pid");
    nix_free_mkfifo(&fifo);
    assert_eq!(read_pidfile(&fifo), None);
    assert_eq!(read_pidfile(dir.path()), None);
    assert_eq!(read_pidfile(&dir.path().join("missing")), None);
}

fn nix_free_mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path for the whole call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}
