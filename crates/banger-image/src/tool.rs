//! External tools as argv, with their exit status and stderr kept on failure.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {tool}: {source} (is it installed? scripts/install-deps installs it)")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
}

/// Runs `cmd` to completion; on failure the error holds the exit status and
/// the last lines of stderr.
pub fn run(cmd: &mut Command) -> Result<String, ToolError> {
    let tool = tool_name(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: tail(&String::from_utf8_lossy(&out.stderr), 20),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`], but hands every stderr line to `on_line` as it arrives
/// (tools such as mmdebstrap report progress there).
pub fn run_streaming(cmd: &mut Command, on_line: &mut dyn FnMut(&str)) -> Result<(), ToolError> {
    let tool = tool_name(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    let mut kept: Vec<String> = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            on_line(&line);
            kept.push(line);
            if kept.len() > 40 {
                kept.remove(0);
            }
        }
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        tool: tool.clone(),
        source,
    })?;
    if !status.success() {
        return Err(ToolError::Failed {
            tool,
            status: status.to_string(),
            stderr: kept.join("\n"),
        });
    }
    Ok(())
}

fn tool_name(cmd: &Command) -> String {
    let prog: &OsStr = cmd.get_program();
    prog.to_string_lossy().into_owned()
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sh failed") && msg.contains("boom") && msg.contains('3'),
            "{msg}"
        );
    }

    #[test]
    fn missing_tool_is_named() {
        let err = run(&mut Command::new("/nonexistent/mkfs")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mkfs"));
    }

    #[test]
    fn streaming_sees_each_line() {
        let mut seen = Vec::new();
        run_streaming(
            Command::new("sh").args(["-c", "echo one >&2; echo two >&2"]),
            &mut |l| seen.push(l.to_string()),
        )
        .unwrap();
        assert_eq!(seen, ["one", "two"]);
    }
}
