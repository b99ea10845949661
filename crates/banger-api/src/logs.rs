//! `vm logs`: the guest console and the VMM's own log, kept per VM by the
//! daemon, read or followed as a stream of [`LogEvent`] lines.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::ApiError;

/// Which of a VM's logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The guest's serial console: kernel, systemd, anything written to
    /// `/dev/console`.
    #[default]
    Console,
    /// The VMM's own log (QEMU's stderr, Firecracker's logger) and the
    /// daemon's notes about launches, boot failures and exits.
    Vmm,
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Console => "console",
            LogSource::Vmm => "vmm",
        }
    }
}

impl std::fmt::Display for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/vms/{name}/logs?source=..&since_ms=..&follow=..`. The answer is
/// a stream of [`LogEvent`] lines that ends with exactly one `end` (or
/// `error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    pub source: LogSource,
    /// Only output received at or after this time (Unix milliseconds).
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// Keep the stream open and send new output until the VMM stops.
    #[serde(default)]
    pub follow: bool,
}

impl LogsQuery {
    /// The query string for the request (no leading `?`).
    pub fn to_query(&self) -> String {
        let mut q = format!("source={}", self.source);
        if let Some(ms) = self.since_ms {
            q.push_str(&format!("&since_ms={ms}"));
        }
        if self.follow {
            q.push_str("&follow=true");
        }
        q
    }
}

/// Why a log stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEnd {
    /// Everything kept was sent (not following).
    Done,
    /// Following: the VM's VMM stopped (or exited), so no more output comes.
    Stopped,
    /// Following was asked for, but the VM has no running VMM.
    NotRunning,
}

/// One line of a log stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// Base64 of bytes the log received at `time_ms` (Unix milliseconds;
    /// when the daemon read them, which for output written while the
    /// daemon was down is when it came back).
    Data { time_ms: i64, data: String },
    /// A follower too slow for the output missed this many chunks.
    Lost { chunks: u64 },
    /// The stream is complete.
    End { reason: LogEnd },
    /// The log could not be read.
    Error { error: ApiError },
}

impl LogEvent {
    pub fn data(time_ms: i64, bytes: &[u8]) -> Self {
        LogEvent::Data {
            time_ms,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    /// Decodes the payload of a data event.
    pub fn decode(data: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("bad base64 in log stream: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        assert_eq!(LogsQuery::default().to_query(), "source=console");
        let q = LogsQuery {
            source: LogSource::Vmm,
            since_ms: Some(1_700_000_000_000),
            follow: true,
        };
        assert_eq!(
            q.to_query(),
            "source=vmm&since_ms=1700000000000&follow=true"
        );
    }

    #[test]
    fn events_round_trip() {
        let ev = LogEvent::data(5, b"Linux version\n");
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            line,
            r#"{"type":"data","time_ms":5,"data":"TGludXggdmVyc2lvbgo="}"#
        );
        match serde_json::from_str::<LogEvent>(&line).unwrap() {
            LogEvent::Data { data, .. } => {
                assert_eq!(LogEvent::decode(&data).unwrap(), b"Linux version\n")
            }
            other => panic!("unexpected {other:?}"),
        }
        let end: LogEvent = serde_json::from_str(r#"{"type":"end","reason":"stopped"}"#).unwrap();
        assert_eq!(
            end,
            LogEvent::End {
                reason: LogEnd::Stopped
            }
        );
    }
}
