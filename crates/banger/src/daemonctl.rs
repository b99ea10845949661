//! `banger daemon start | stop | status` for development hosts and CI:
//! bangerd and the root helper as plain background processes. (A system
//! install runs them as systemd services instead.)

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use banger_api::DaemonStatus;
use banger_client::Client;
use banger_paths::Layout;

fn sibling(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions and cannot fail.
    unsafe { libc::getegid() }
}

fn pidfile(layout: &Layout, what: &str) -> PathBuf {
    layout.runtime_dir.join(format!("{what}.pid"))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

async fn daemon_up(client: &Client) -> Option<DaemonStatus> {
    client.get::<DaemonStatus>("/status").await.ok()
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))
}

fn spawn_background(mut cmd: Command, log: &Path, pidfile: &Path) -> anyhow::Result<u32> {
    let out = log_file(log)?;
    let err = out.try_clone()?;
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C in this terminal must not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {prog}"))?;
    std::fs::write(pidfile, child.id().to_string())
        .with_context(|| format!("write {}", pidfile.display()))?;
    Ok(child.id())
}

/// Starts the helper and bangerd unless bangerd already answers.
pub async fn start(layout: &Layout, quiet: bool) -> anyhow::Result<()> {
    let client = Client::new(layout.daemon_socket());
    if layout.system {
        if daemon_up(&client).await.is_some() {
            return Ok(());
        }
        bail!(
            "this host has a system install ({}): its services are started by systemd; try `sudo banger system restart`",
            banger_paths::system::INSTALL_FILE
        );
    }
    if let Some(st) = daemon_up(&client).await {
        let ours = banger_buildinfo::version_line("bangerd");
        if st.version == ours {
            if !quiet {
                println!("bangerd already running (pid {})", st.pid);
            }
            return Ok(());
        }
        // A rebuild (or an update of a dev install) left the old daemon
        // and helper running: replace them, or new code would never run.
        // VMs keep running across this (they are re-adopted).
        eprintln!(
            "{}",
            crate::style::dim(&format!(
                "restarting {} (pid {}): this banger is {ours}; running VMs keep running",
                st.version, st.pid
            ))
        );
        stop(layout).await?;
    }
    // A bad config file stops here, with its path, before anything starts.
    let settings = banger_paths::Settings::from_env(&layout.config_file)?;
    std::fs::create_dir_all(&layout.runtime_dir)
        .with_context(|| format!("create {}", layout.runtime_dir.display()))?;
    std::fs::create_dir_all(&layout.state_dir)
        .with_context(|| format!("create {}", layout.state_dir.display()))?;

    let helper_bin = sibling("banger-helper", "BANGER_HELPER_BIN");
    let helper_sock = layout.helper_socket();
    let helper_alive = read_pid(&pidfile(layout, "helper"))
        .and_then(comm_of)
        .is_some_and(|c| c.starts_with("banger-helper"));
    if !helper_alive {
        let mut cmd = if euid() == 0 {
            Command::new(&helper_bin)
        } else {
            // Development hosts: the helper needs root; sudo must not prompt.
            let mut c = Command::new("sudo");
            c.arg("-n").arg(&helper_bin);
            c
        };
        cmd.arg("--socket")
            .arg(&helper_sock)
            .arg("--state-dir")
            .arg(&layout.state_dir)
            .arg("--runtime-dir")
            .arg(&layout.runtime_dir)
            .arg("--owner-uid")
            .arg(euid().to_string())
            .arg("--owner-gid")
            .arg(egid().to_string())
            // The helper runs only the binaries root configured; in this
            // development mode root is the user starting it.
            .arg("--firecracker-bin")
            .arg(&settings.firecracker_bin)
            .arg("--jailer-bin")
            .arg(&settings.jailer_bin);
        spawn_background(cmd, &layout.helper_log(), &pidfile(layout, "helper"))?;
        wait_for(&helper_sock, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "banger-helper did not come up; see {}",
                    layout.helper_log().display()
                )
            })?;
    }

    let bangerd = sibling("bangerd", "BANGERD_BIN");
    let cmd = Command::new(&bangerd);
    spawn_background(cmd, &layout.daemon_log(), &pidfile(layout, "bangerd"))?;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if let Some(st) = daemon_up(&client).await {
            if !quiet {
                println!("bangerd started (pid {}), socket {}", st.pid, st.socket);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "bangerd did not answer on {} within 15s; see {}",
        layout.daemon_socket().display(),
        layout.daemon_log().display()
    )
}

async fn wait_for(sock: &Path, timeout: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if tokio::net::UnixStream::connect(sock).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {}", sock.display())
}

/// Stops bangerd and the helper. Running VMs keep running: their VMMs do
/// not belong to either process, and the next start re-adopts them.
pub async fn stop(layout: &Layout) -> anyhow::Result<()> {
    let client = Client::new(layout.daemon_socket());
    let was_up = daemon_up(&client).await.is_some();
    if was_up {
        let _: serde_json::Value = client
            .post("/shutdown", &serde_json::json!({}))
            .await
            .context("ask bangerd to stop")?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) && daemon_up(&client).await.is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = std::fs::remove_file(pidfile(layout, "bangerd"));
    let hp = pidfile(layout, "helper");
    if let Some(pid) = read_pid(&hp) {
        if comm_of(pid).is_some_and(|c| c.starts_with("banger-helper") || c == "sudo") {
            let status = if euid() == 0 {
                // SAFETY: plain kill(2) on a pid we verified is our helper.
                unsafe { libc::kill(pid, libc::SIGTERM) }
            } else {
                let ok = Command::new("sudo")
                    .args(["-n", "kill", "-TERM", &pid.to_string()])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    0
                } else {
                    -1
                }
            };
            if status != 0 {
                eprintln!("banger: could not stop banger-helper (pid {pid})");
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) && comm_of(pid).is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = std::fs::remove_file(&hp);
    }
    println!(
        "{}",
        if was_up {
            "bangerd stopped"
        } else {
            "bangerd was not running"
        }
    );
    Ok(())
}

/// `daemon status` for people: the same key/value view as `vm show`.
fn status_view(st: &DaemonStatus) -> String {
    crate::table::kv(&[
        ("bangerd", format!("running (pid {})", st.pid)),
        ("version", st.version.clone()),
        ("socket", st.socket.clone()),
        ("helper socket", st.helper_socket.clone()),
        ("state dir", st.state_dir.clone()),
        ("running vms", st.vms_running.to_string()),
        ("dns (.vm)", st.dns.clone().unwrap_or_else(|| "off".into())),
    ])
}

pub async fn status(layout: &Layout, json: bool) -> anyhow::Result<bool> {
    let client = Client::new(layout.daemon_socket());
    match daemon_up(&client).await {
        Some(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", status_view(&st));
            }
            Ok(true)
        }
        None => {
            if json {
                println!("{}", serde_json::json!({"running": false}));
            } else {
                println!(
                    "bangerd is not running (socket {}); start it with `banger daemon start`",
                    layout.daemon_socket().display()
                );
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_a_key_value_view() {
        let st = DaemonStatus {
            version: "bangerd v0.1.1 (commit abc, built now)".into(),
            pid: 42,
            state_dir: "/s".into(),
            socket: "/r/bangerd.sock".into(),
            helper_socket: "/r/helper.sock".into(),
            vms_running: 2,
            dns: None,
        };
        assert_eq!(
            status_view(&st),
            "bangerd        running (pid 42)\n\
             version        bangerd v0.1.1 (commit abc, built now)\n\
             socket         /r/bangerd.sock\n\
             helper socket  /r/helper.sock\n\
             state dir      /s\n\
             running vms    2\n\
             dns (.vm)      off\n"
        );
    }
}
