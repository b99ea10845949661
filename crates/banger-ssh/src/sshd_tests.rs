//! End-to-end checks against a real sshd on 127.0.0.1: the generated host
//! key, known_hosts line, client key, argv and rendered config together.
//!
//! Runs only as root (the argv logs in as root) with `sshd` installed
//! (openssh-server), its privilege separation user `sshd` and directory
//! `/run/sshd` present; otherwise each test prints why it skips.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::testutil::{find_on_path, tool};
use crate::{
    ensure_client_key, generate_host_key, known_hosts_line, render_config, ssh_argv, write_atomic,
    SshTarget,
};

struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
    target: SshTarget,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd_binary() -> Option<PathBuf> {
    let found = find_on_path("sshd").or_else(|| {
        let p = PathBuf::from("/usr/sbin/sshd");
        p.is_file().then_some(p)
    });
    found.or_else(|| {
        eprintln!("note: sshd is not installed; skipping the end-to-end ssh check");
        None
    })
}

/// Starts sshd with a banger-generated host key, accepting the banger
/// client key for root; `None` (with a note) when it cannot run here.
fn start() -> Option<Sshd> {
    let sshd = sshd_binary()?;
    tool("ssh")?;
    let dir = tempfile::tempdir().unwrap();
    if fs::metadata(dir.path()).unwrap().uid() != 0 {
        eprintln!("note: not running as root; skipping the end-to-end ssh check");
        return None;
    }
    let privsep_user = fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("sshd:"));
    if !privsep_user || !Path::new("/run/sshd").is_dir() {
        eprintln!(
            "note: sshd's privilege separation user or directory (/run/sshd) is missing \
             (openssh-server is not fully installed); skipping the end-to-end ssh check"
        );
        return None;
    }
    let d = dir.path();
    let host = generate_host_key("banger-host-box").unwrap();
    write_atomic(&d.join("host_key"), &host.private_openssh).unwrap();
    let client = ensure_client_key(&d.join("client")).unwrap();
    write_atomic(
        &d.join("authorized_keys"),
        &format!("{}\n", client.public_openssh),
    )
    .unwrap();
    let known_hosts = d.join("known_hosts");
    write_atomic(
        &known_hosts,
        &known_hosts_line("box.vm", &host.public_openssh).unwrap(),
    )
    .unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = d.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n",
            d.join("host_key").display(),
            d.join("authorized_keys").display(),
        ),
    )
    .unwrap();
    let log = d.join("sshd.log");
    let child = Command::new(&sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Sshd {
        child,
        port,
        log,
        target: SshTarget {
            name: "box".into(),
            ip: Ipv4Addr::LOCALHOST,
            known_hosts,
            identity: client.private_path,
        },
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("sshd exited ({status}): {}", server.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not listen: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

impl Sshd {
    fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Runs `ssh_argv` for `target` and `cmd`, pointed at this sshd's port
    /// and ignoring any ssh_config on the machine.
    fn run(&self, target: &SshTarget, cmd: &[&str]) -> Output {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let mut argv = ssh_argv(target, &cmd, false, true);
        let port = self.port.to_string();
        argv.splice(
            1..1,
            ["-F", "/dev/null", "-p", port.as_str()].map(String::from),
        );
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

#[test]
fn argv_runs_the_command_exactly_as_given() {
    let Some(sshd) = start() else { return };
    let out = sshd.run(&sshd.target, &["sh", "-c", "exit 42"]);
    assert_eq!(
        out.status.code(),
        Some(42),
        "ssh: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );

    let out = sshd.run(
        &sshd.target,
        &[
            "printf",
            "%s\\0",
            "a b",
            "",
            "it's",
            "$HOME",
            "new\nline",
            "*",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"a b\0\0it's\0$HOME\0new\nline\0*\0");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_different_host_key_is_refused_without_prompting() {
    let Some(sshd) = start() else { return };
    let impostor = generate_host_key("impostor").unwrap();
    let mut target = sshd.target.clone();
    target.known_hosts = sshd.dir.path().join("wrong_known_hosts");
    write_atomic(
        &target.known_hosts,
        &known_hosts_line("box.vm", &impostor.public_openssh).unwrap(),
    )
    .unwrap();
    let out = sshd.run(&target, &["touch", "/nonexistent-banger-marker"]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HOST IDENTIFICATION HAS CHANGED"),
        "{stderr}"
    );

    // An empty known_hosts is refused too: no trust on first use.
    write_atomic(&target.known_hosts, "").unwrap();
    let out = sshd.run(&target, &["true"]);
    assert_eq!(out.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn plain_ssh_with_the_rendered_config_gets_in() {
    let Some(sshd) = start() else { return };
    let config = sshd.dir.path().join("banger_ssh_config");
    write_atomic(&config, &render_config(std::slice::from_ref(&sshd.target))).unwrap();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-p", &sshd.port.to_string(), "-o", "BatchMode=yes"])
        .args(["box.vm", "exit 7"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "ssh: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );
}

#[test]
fn paths_with_percent_and_spaces_work() {
    let Some(sshd) = start() else { return };
    let d = sshd.dir.path();
    let mut target = sshd.target.clone();
    let key = ensure_client_key(&d.join("100%d client")).unwrap();
    write_atomic(
        &d.join("authorized_keys"),
        &format!("{}\n", key.public_openssh),
    )
    .unwrap();
    target.identity = key.private_path;
    target.known_hosts = d.join("%h known \"hosts\"");
    fs::copy(&sshd.target.known_hosts, &target.known_hosts).unwrap();

    let out = sshd.run(&target, &["exit", "3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "ssh: {}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log_text()
    );

    let config = d.join("banger ssh_config");
    write_atomic(&config, &render_config(&[target])).unwrap();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-p", &sshd.port.to_string(), "-o", "BatchMode=yes"])
        .args(["box.vm", "exit 4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
