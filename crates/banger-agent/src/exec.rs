//! Running a command and streaming its output.

use std::io::{ErrorKind, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use banger_agent_proto::{Event, MAX_CHUNK_BYTES};

use crate::serve::Out;

/// The environment every command starts from; the request's env goes on top.
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
];
const DEFAULT_CWD: &str = "/root";

/// Runs `argv` and streams its output as events for request `id`; ends with
/// exactly one Exit, or one Error when the command cannot start.
pub fn run(id: u64, argv: &[String], env: &[(String, String)], cwd: Option<&str>, out: &Arc<Out>) {
    let Some((program, args)) = argv.split_first() else {
        out.error(id, "exec: empty argv");
        return;
    };
    let cwd = match cwd {
        Some(dir) if !Path::new(dir).is_dir() => {
            out.error(id, format!("cannot run {program:?}: no directory {dir:?}"));
            return;
        }
        Some(dir) => dir,
        // Off the guest (tests as a user), /root may not be there.
        None if Path::new(DEFAULT_CWD).is_dir() => DEFAULT_CWD,
        None => "/",
    };
    let spawned = Command::new(program)
        .args(args)
        .env_clear()
        .envs(BASE_ENV.iter().copied())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            out.error(id, format!("cannot run {program:?}: {e}"));
            return;
        }
    };
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let err_out = out.clone();
    let err_pump = std::thread::Builder::new()
        .name(format!("req-{id}-stderr"))
        .spawn(move || pump(stderr, id, &err_out, Event::stderr));
    pump(stdout, id, out, Event::stdout);
    match err_pump {
        Ok(t) => {
            let _ = t.join();
        }
        Err(e) => log!("request {id}: cannot start the stderr thread: {e}; stderr is lost"),
    }
    match child.wait() {
        Ok(status) => out.send(
            id,
            Event::Exit {
                code: exit_code(status),
            },
        ),
        Err(e) => out.error(id, format!("waiting for {program:?}: {e}")),
    }
}

/// Forwards what `pipe` delivers, as it arrives, until EOF.
fn pump(mut pipe: impl Read, id: u64, out: &Out, event: fn(&[u8]) -> Event) {
    let mut buf = vec![0u8; MAX_CHUNK_BYTES];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => out.send(id, event(&buf[..n])),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log!("request {id}: reading output: {e}");
                return;
            }
        }
    }
}

/// The exit code verbatim, or 128+N when killed by signal N (as a shell
/// reports it).
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_like_a_shell() {
        // Wait statuses as waitpid(2) returns them.
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(exit_code(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        // Killed with a core dump: the signal still counts.
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGSEGV | 0x80)), 139);
    }
}
