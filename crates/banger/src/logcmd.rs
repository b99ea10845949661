//! `banger vm logs`: the guest console or the VMM's log, read or followed.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use banger_api::{validate_vm_name, LogEnd, LogEvent, LogSource, LogsQuery};
use banger_client::ClientError;
use banger_paths::Layout;
use clap::Args;

use crate::style;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// Keep printing new output until the VM stops (Ctrl-C to quit).
    #[arg(short, long)]
    follow: bool,
    /// Only output received in the last DURATION (90s, 5m, 1h30m) or since
    /// TIME (2025-01-31T10:00:00Z); a line that started earlier is shown
    /// whole.
    #[arg(long, value_name = "DURATION|TIME")]
    since: Option<String>,
    /// The VMM's own log (QEMU or Firecracker messages, and banger's notes
    /// on launches, boot failures and exits) instead of the guest console.
    #[arg(long)]
    vmm: bool,
    /// One JSON object per line: time, time_ms, vm, source, line.
    #[arg(long)]
    json: bool,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `--since`: a duration back from `now`, or an RFC 3339 time. Returns the
/// cutoff in Unix milliseconds.
pub fn parse_since(s: &str, now: SystemTime) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        if d.is_zero() {
            bail!("--since {s:?}: the duration must be more than zero");
        }
        let t = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
        return Ok(unix_ms(t));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(unix_ms(t));
    }
    bail!("--since {s:?}: expected a duration like 90s, 5m or 1h30m, or a time like 2025-01-31T10:00:00Z")
}

/// Splits a byte stream into lines, each with the time its first byte was
/// received. A trailing `\r` (serial consoles write `\r\n`) is dropped.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    started: Option<i64>,
}

impl LineSplitter {
    pub fn push(&mut self, time_ms: i64, data: &[u8]) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        for &b in data {
            if self.started.is_none() {
                self.started = Some(time_ms);
            }
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.buf.push(b);
            }
        }
        out
    }

    fn take(&mut self) -> (i64, String) {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        (self.started.take().unwrap_or(0), line)
    }

    /// The unfinished last line, if any.
    pub fn finish(&mut self) -> Option<(i64, String)> {
        (!self.buf.is_empty()).then(|| self.take())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Text,
    /// After 0xC2: the next byte may make a C1 control (U+0080..U+009F).
    C2,
    Esc,
    Csi,
    /// An OSC, DCS, SOS, PM or APC string, up to BEL or ST.
    Str,
    StrEsc,
}

/// Makes guest output safe to print on a terminal: text, newlines, tabs
/// and colour (SGR) sequences pass; every other control character and
/// escape sequence (cursor movement, window titles, OSC 52 clipboard
/// writes, C1 controls) is dropped. Stateful, so a sequence split across
/// chunks is still recognised.
#[derive(Debug, Default)]
pub struct TermFilter {
    state: State,
    seq: Vec<u8>,
}

impl TermFilter {
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                State::Text => match b {
                    0x1b => State::Esc,
                    b'\n' | b'\t' => {
                        out.push(b);
                        State::Text
                    }
                    0xc2 => State::C2,
                    0..=0x1f | 0x7f => State::Text,
                    _ => {
                        out.push(b);
                        State::Text
                    }
                },
                State::C2 => match b {
                    0x80..=0x9f => State::Text,
                    0x1b => State::Esc,
                    _ => {
                        out.push(0xc2);
                        if b >= 0x20 && b != 0x7f || b == b'\n' || b == b'\t' {
                            out.push(b);
                        }
                        State::Text
                    }
                },
                State::Esc => match b {
                    b'[' => {
                        self.seq.clear();
                        State::Csi
                    }
                    b']' | b'P' | b'X' | b'^' | b'_' => State::Str,
                    _ => State::Text,
                },
                State::Csi => match b {
                    0x20..=0x3f if self.seq.len() < 32 => {
                        self.seq.push(b);
                        State::Csi
                    }
                    b'm' if self.seq.iter().all(|c| c.is_ascii_digit() || *c == b';') => {
                        out.extend_from_slice(b"\x1b[");
                        out.extend_from_slice(&self.seq);
                        out.push(b'm');
                        State::Text
                    }
                    _ => State::Text,
                },
                State::Str => match b {
                    0x07 => State::Text,
                    0x1b => State::StrEsc,
                    _ => State::Str,
                },
                State::StrEsc => match b {
                    b'\\' => State::Text,
                    _ => State::Str,
                },
            };
        }
    }
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    time_ms: i64,
    vm: &'a str,
    source: LogSource,
    line: String,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Where the stream's bytes go: raw, filtered for a terminal, or JSON lines.
enum Sink {
    Raw,
    Terminal(TermFilter),
    Json(LineSplitter),
}

impl Sink {
    fn write(
        &mut self,
        out: &mut impl Write,
        vm: &str,
        source: LogSource,
        time_ms: i64,
        data: &[u8],
    ) -> std::io::Result<()> {
        match self {
            Sink::Raw => out.write_all(data)?,
            Sink::Terminal(f) => {
                let mut buf = Vec::with_capacity(data.len());
                f.feed(data, &mut buf);
                out.write_all(&buf)?;
            }
            Sink::Json(split) => {
                for (t, line) in split.push(time_ms, data) {
                    json_line(out, vm, source, t, line)?;
                }
            }
        }
        out.flush()
    }

    fn finish(&mut self, out: &mut impl Write, vm: &str, source: LogSource) -> std::io::Result<()> {
        if let Sink::Json(split) = self {
            if let Some((t, line)) = split.finish() {
                json_line(out, vm, source, t, line)?;
            }
        }
        out.flush()
    }
}

fn json_line(
    out: &mut impl Write,
    vm: &str,
    source: LogSource,
    time_ms: i64,
    line: String,
) -> std::io::Result<()> {
    let rec = JsonLine {
        time: rfc3339(time_ms),
        time_ms,
        vm,
        source,
        line,
    };
    serde_json::to_writer(&mut *out, &rec)?;
    out.write_all(b"\n")
}

pub async fn logs(layout: &Layout, a: LogsArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    let since_ms = a
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let source = if a.vmm {
        LogSource::Vmm
    } else {
        LogSource::Console
    };
    let c = crate::vmcmd::client(layout).await?;
    let q = LogsQuery {
        source,
        since_ms,
        follow: a.follow,
    };
    let mut stream = c.logs(&a.name, &q).await?;
    let mut sink = if a.json {
        Sink::Json(LineSplitter::default())
    } else if std::io::stdout().is_terminal() {
        Sink::Terminal(TermFilter::default())
    } else {
        Sink::Raw
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let end = loop {
        let ev = match stream.next().await? {
            Some(ev) => ev,
            None => bail!(
                "bangerd closed the log stream of vm {} early (did the daemon stop?)",
                a.name
            ),
        };
        let r = match ev {
            LogEvent::Data { time_ms, data } => {
                let bytes = LogEvent::decode(&data).map_err(anyhow::Error::msg)?;
                sink.write(&mut out, &a.name, source, time_ms, &bytes)
            }
            LogEvent::Lost { chunks } => {
                eprintln!(
                    "{}",
                    style::yellow(
                        &format!("banger: {chunks} chunk(s) of output were missed (the reader fell behind)"),
                        true
                    )
                );
                Ok(())
            }
            LogEvent::End { reason } => break reason,
            LogEvent::Error { error } => return Err(ClientError::Api(error).into()),
        };
        if let Err(e) = r {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(e).context("write to stdout");
        }
    };
    match sink.finish(&mut out, &a.name, source) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        r => r.context("write to stdout")?,
    }
    match end {
        LogEnd::Done => {}
        LogEnd::NotRunning => eprintln!(
            "{}",
            style::dim(&format!(
                "vm {} is not running; nothing more to follow",
                a.name
            ))
        ),
        LogEnd::Stopped => eprintln!("{}", style::dim(&format!("vm {} stopped", a.name))),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn since_takes_durations_and_times() {
        let now = at(1_000_000);
        assert_eq!(parse_since("5m", now).unwrap(), (1_000_000 - 300) * 1000);
        assert_eq!(parse_since("90s", now).unwrap(), (1_000_000 - 90) * 1000);
        assert_eq!(
            parse_since("1h30m", now).unwrap(),
            (1_000_000 - 5400) * 1000
        );
        assert_eq!(parse_since("500ms", now).unwrap(), 1_000_000 * 1000 - 500);
        assert_eq!(
            parse_since("2025-01-31T10:00:00Z", now).unwrap(),
            1_738_317_600_000
        );
        // Longer ago than the epoch: everything.
        assert_eq!(parse_since("100y", at(10)).unwrap(), 0);
        let e = parse_since("0s", now).unwrap_err().to_string();
        assert!(e.contains("more than zero"), "{e}");
        let e = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(
            e.contains("--since \"yesterday\"") && e.contains("5m"),
            "{e}"
        );
        assert!(
            parse_since("300", now).is_err(),
            "a bare number has no unit"
        );
    }

    #[test]
    fn lines_keep_the_time_they_started() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(1, b"Linux ver"), vec![]);
        assert_eq!(
            s.push(2, b"sion\r\nsystemd[1]: up\nlogin: "),
            vec![(1, "Linux version".into()), (2, "systemd[1]: up".into())]
        );
        assert_eq!(s.finish(), Some((2, "login: ".into())));
        assert_eq!(s.finish(), None);
        assert_eq!(s.push(3, b"\n"), vec![(3, String::new())]);
    }

    fn filtered(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = TermFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn terminal_filter_keeps_text_and_colour_only() {
        assert_eq!(filtered(&[b"plain\ttext\r\n"]), b"plain\ttext\n");
        // systemd's coloured status passes, even split across chunks.
        assert_eq!(
            filtered(&[b"[\x1b[0;32m  OK  \x1b", b"[0m] Started"]),
            b"[\x1b[0;32m  OK  \x1b[0m] Started"
        );
        // Cursor movement, clearing, titles and clipboard writes are dropped.
        assert_eq!(filtered(&[b"a\x1b[2J\x1b[1;1Hb"]), b"ab");
        assert_eq!(filtered(&[b"a\x1b]0;owned\x07b"]), b"ab");
        assert_eq!(filtered(&[b"a\x1b]52;c;ZXZpbA==\x1b\\b"]), b"ab");
        assert_eq!(filtered(&[b"a\x1bPq#0\x1b\\b"]), b"ab");
        // Other control characters, and C1 controls in UTF-8 (U+009B is CSI).
        assert_eq!(filtered(&[b"a\x07\x08\x7fb"]), b"ab");
        assert_eq!(filtered(&[b"a\xc2", b"\x9b2Jb"]), b"a2Jb");
        // Ordinary UTF-8 is untouched.
        assert_eq!(filtered(&["é ü ✓".as_bytes()]), "é ü ✓".as_bytes());
    }
}
