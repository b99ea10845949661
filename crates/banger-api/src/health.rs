//! `vm ping` and `vm health`: an agent round trip, and what state a VM is
//! really in (its row, its VMM process, its agent), with one verdict.

use serde::{Deserialize, Serialize};

use crate::VmState;

/// How long ping and health wait for the agent unless told otherwise.
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 3000;
/// The longest agent timeout a request may ask for.
pub const MAX_AGENT_TIMEOUT_MS: u64 = 60_000;

/// `POST /v1/vms/{name}/ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {
    /// How long to wait for the answer; default 3 s.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One agent round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    pub vm: String,
    /// The round trip daemon -> agent -> daemon, in milliseconds.
    pub latency_ms: f64,
    pub agent_version: String,
    pub hostname: String,
    pub boot_id: String,
    /// Set by banger when the guest was restored from a warm snapshot
    /// (whose boot id every VM restored from it shares); one per start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// `GET /v1/vms/{name}/health?timeout_ms=..`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthQuery {
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The verdict of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Running, its VMM alive, its agent answering.
    Healthy,
    /// The VMM runs but the agent does not answer in time: a hung or
    /// crashed agent, or a guest that is stuck (see the console log).
    Degraded,
    /// The row says running but the VMM is gone (it crashed or was killed
    /// outside banger).
    Down,
    Stopped,
    Creating,
    /// A start or boot failed; the row keeps the reason.
    Error,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
            HealthStatus::Stopped => "stopped",
            HealthStatus::Creating => "creating",
            HealthStatus::Error => "error",
        }
    }

    /// `banger vm health`'s exit code: 0 healthy, 1 degraded (the VMM runs,
    /// the agent does not answer), 2 not running at all.
    pub fn exit_code(self) -> u8 {
        match self {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            _ => 2,
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VMM process as the daemon found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmHealth {
    /// `qemu` or `firecracker`.
    pub kind: String,
    /// The recorded pid, if any.
    pub pid: Option<u32>,
    /// The pid is alive and verified to be this VM's VMM (not a reused pid).
    pub running: bool,
}

/// The agent as the daemon found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// False when there was nothing to ask (no running VMM).
    pub checked: bool,
    pub answered: bool,
    pub latency_ms: Option<f64>,
    pub version: Option<String>,
    /// Why it did not answer.
    pub error: Option<String>,
    pub timeout_ms: u64,
}

/// `GET /v1/vms/{name}/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmHealth {
    pub vm: String,
    pub status: HealthStatus,
    pub healthy: bool,
    /// One line for people: the verdict, why, and what to look at next.
    pub summary: String,
    /// The state in banger's database.
    pub state: VmState,
    /// The row's error, for a VM in the error state.
    pub error: Option<String>,
    pub vmm: VmmHealth,
    pub agent: AgentHealth,
}

/// The verdict from the row's state, the VMM check and the agent check.
/// The agent only counts for a running VM whose VMM is alive.
pub fn classify(state: VmState, vmm_running: bool, agent_answered: bool) -> HealthStatus {
    match state {
        VmState::Creating => HealthStatus::Creating,
        VmState::Stopped => HealthStatus::Stopped,
        VmState::Error => HealthStatus::Error,
        VmState::Running if !vmm_running => HealthStatus::Down,
        VmState::Running if agent_answered => HealthStatus::Healthy,
        VmState::Running => HealthStatus::Degraded,
    }
}

/// "1.8 ms", "0.35 ms", "120 ms".
pub fn format_latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// "3s", "1.5s", "250ms".
pub fn format_timeout(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The one-line summary for a health verdict.
pub fn summary(
    vm: &str,
    status: HealthStatus,
    error: Option<&str>,
    vmm: &VmmHealth,
    agent: &AgentHealth,
) -> String {
    let pid = vmm
        .pid
        .map(|p| format!("pid {p}"))
        .unwrap_or_else(|| "no pid".into());
    match status {
        HealthStatus::Healthy => format!(
            "healthy: VMM running ({pid}), agent answered in {}{}",
            agent.latency_ms.map(format_latency).unwrap_or_default(),
            agent
                .version
                .as_deref()
                .map(|v| format!(" (agent v{v})"))
                .unwrap_or_default()
        ),
        HealthStatus::Degraded => format!(
            "degraded: VMM running ({pid}) but the agent does not answer (timeout {}); see `banger vm logs {vm}`",
            format_timeout(agent.timeout_ms)
        ),
        HealthStatus::Down => format!(
            "down: vm {vm} should be running but its VMM ({pid}) is gone; see `banger vm logs {vm} --vmm`, then `banger vm start {vm}`"
        ),
        HealthStatus::Stopped => {
            format!("stopped: vm {vm} is not running; start it with `banger vm start {vm}`")
        }
        HealthStatus::Creating => {
            format!("creating: vm {vm} is still being created (see `banger operations`)")
        }
        HealthStatus::Error => format!(
            "error: {}; see `banger vm logs {vm} --vmm`",
            error.unwrap_or("the last start failed")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use HealthStatus::*;
        use VmState as S;
        assert_eq!(classify(S::Running, true, true), Healthy);
        assert_eq!(classify(S::Running, true, false), Degraded);
        assert_eq!(classify(S::Running, false, false), Down);
        // An answer from a VM without a live VMM cannot count.
        assert_eq!(classify(S::Running, false, true), Down);
        assert_eq!(classify(S::Stopped, false, false), Stopped);
        assert_eq!(classify(S::Creating, true, false), Creating);
        assert_eq!(classify(S::Error, false, false), Error);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(HealthStatus::Healthy.exit_code(), 0);
        assert_eq!(HealthStatus::Degraded.exit_code(), 1);
        for s in [
            HealthStatus::Down,
            HealthStatus::Stopped,
            HealthStatus::Creating,
            HealthStatus::Error,
        ] {
            assert_eq!(s.exit_code(), 2, "{s}");
        }
    }

    fn vmm(pid: Option<u32>, running: bool) -> VmmHealth {
        VmmHealth {
            kind: "qemu".into(),
            pid,
            running,
        }
    }

    fn agent(answered: bool) -> AgentHealth {
        AgentHealth {
            checked: true,
            answered,
            latency_ms: answered.then_some(1.84),
            version: answered.then(|| "0.1.0".into()),
            error: (!answered).then(|| "timed out".into()),
            timeout_ms: 3000,
        }
    }

    #[test]
    fn summaries_say_what_to_do() {
        let s = summary(
            "box",
            HealthStatus::Healthy,
            None,
            &vmm(Some(123), true),
            &agent(true),
        );
        assert_eq!(
            s,
            "healthy: VMM running (pid 123), agent answered in 1.8 ms (agent v0.1.0)"
        );
        let s = summary(
            "box",
            HealthStatus::Degraded,
            None,
            &vmm(Some(123), true),
            &agent(false),
        );
        assert_eq!(
            s,
            "degraded: VMM running (pid 123) but the agent does not answer (timeout 3s); see `banger vm logs box`"
        );
        let s = summary(
            "box",
            HealthStatus::Down,
            None,
            &vmm(Some(9), false),
            &agent(false),
        );
        assert!(s.starts_with("down: vm box should be running but its VMM (pid 9) is gone"));
        let s = summary(
            "box",
            HealthStatus::Error,
            Some("start qemu: boom"),
            &vmm(None, false),
            &agent(false),
        );
        assert!(s.starts_with("error: start qemu: boom;"), "{s}");
        let s = summary(
            "box",
            HealthStatus::Stopped,
            None,
            &vmm(None, false),
            &agent(false),
        );
        assert!(s.contains("banger vm start box"), "{s}");
    }

    #[test]
    fn latency_and_timeout_formats() {
        assert_eq!(format_latency(0.25), "0.25 ms");
        assert_eq!(format_latency(1.84), "1.8 ms");
        assert_eq!(format_latency(123.4), "123 ms");
        assert_eq!(format_timeout(3000), "3s");
        assert_eq!(format_timeout(1500), "1.5s");
        assert_eq!(format_timeout(250), "250ms");
    }
}
