//! `vm ping` and `vm health`: an agent round trip with its latency, and a
//! VM's state from three places (its row, its VMM process, its agent).
//! Neither takes the VM's lock: a check must answer while a long
//! operation (a create, a stop) holds it.

use std::time::{Duration, Instant};

use banger_agent_proto::client::Pong;
use banger_api::{
    classify, format_timeout, AgentHealth, ApiError, HealthQuery, PingRequest, PingResult,
    VmHealth, VmState, VmmHealth, DEFAULT_AGENT_TIMEOUT_MS, MAX_AGENT_TIMEOUT_MS,
};
use banger_store::VmRecord;

use crate::daemon::Shared;
use crate::{handles, vm};

fn timeout_of(ms: Option<u64>) -> Result<Duration, ApiError> {
    let ms = ms.unwrap_or(DEFAULT_AGENT_TIMEOUT_MS);
    if !(1..=MAX_AGENT_TIMEOUT_MS).contains(&ms) {
        return Err(ApiError::bad_request(format!(
            "timeout {ms} ms: must be 1 to {MAX_AGENT_TIMEOUT_MS}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// Dials the agent if needed, then times one ping.
async fn probe(d: &Shared, rec: &VmRecord, timeout: Duration) -> Result<(f64, Pong), String> {
    let agent = vm::agent_for(d, rec, timeout)
        .await
        .map_err(|e| e.message)?;
    let start = Instant::now();
    let pong = agent.ping(timeout).await.map_err(|e| e.to_string())?;
    Ok((start.elapsed().as_secs_f64() * 1000.0, pong))
}

pub async fn ping(d: Shared, name: String, req: PingRequest) -> Result<PingResult, ApiError> {
    let timeout = timeout_of(req.timeout_ms)?;
    let rec = vm::find(&d, &name)?;
    if !vm::is_running(&d, &rec) {
        return Err(ApiError::conflict(format!(
            "vm {name:?} is not running; start it with `banger vm start {name}`"
        )));
    }
    let (latency_ms, pong) = probe(&d, &rec, timeout).await.map_err(|e| {
        ApiError::failed(format!(
            "no answer from the agent of vm {name:?} within {}: {e}; see `banger vm health {name}`",
            format_timeout(timeout.as_millis() as u64)
        ))
    })?;
    Ok(PingResult {
        vm: rec.name,
        latency_ms,
        agent_version: pong.agent_version,
        hostname: pong.hostname,
        boot_id: pong.boot_id,
        instance_id: pong.instance_id,
    })
}

pub async fn health(d: Shared, name: String, q: HealthQuery) -> Result<VmHealth, ApiError> {
    let timeout = timeout_of(q.timeout_ms)?;
    let rec = vm::find(&d, &name)?;
    let state = VmState::parse(&rec.state).unwrap_or(VmState::Error);
    let h = handles::load(&d.cfg.layout.vm_dir(&rec.id));
    let running = vm::vmm_alive(&d, &rec, &h);
    let mut agent = AgentHealth {
        checked: false,
        answered: false,
        latency_ms: None,
        version: None,
        error: None,
        timeout_ms: timeout.as_millis() as u64,
    };
    if state == VmState::Running && running {
        agent.checked = true;
        match probe(&d, &rec, timeout).await {
            Ok((ms, pong)) => {
                agent.answered = true;
                agent.latency_ms = Some(ms);
                agent.version = Some(pong.agent_version);
            }
            Err(e) => agent.error = Some(e),
        }
    }
    let status = classify(state, running, agent.answered);
    let vmm = VmmHealth {
        kind: rec.vmm.clone(),
        pid: h.pid,
        running,
    };
    let summary = banger_api::summary(&rec.name, status, rec.error.as_deref(), &vmm, &agent);
    Ok(VmHealth {
        vm: rec.name,
        status,
        healthy: status == banger_api::HealthStatus::Healthy,
        summary,
        state,
        error: rec.error,
        vmm,
        agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_of(None).unwrap(), Duration::from_secs(3));
        assert_eq!(timeout_of(Some(250)).unwrap(), Duration::from_millis(250));
        assert!(timeout_of(Some(0)).is_err());
        assert!(timeout_of(Some(MAX_AGENT_TIMEOUT_MS + 1)).is_err());
    }
}
