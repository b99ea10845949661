//! `banger vm ping` and `banger vm health`.

use std::time::Duration;

use anyhow::{bail, Context};
use banger_api::{
    format_latency, format_timeout, validate_vm_name, ErrorCode, HealthStatus, PingRequest,
    PingResult, VmHealth,
};
use banger_client::ClientError;
use banger_paths::Layout;
use clap::Args;
use serde::Serialize;

use crate::style;
use crate::vmcmd::{client, print_json};

#[derive(Args, Debug)]
pub struct PingArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// How many pings to send.
    #[arg(short = 'c', long, default_value_t = 1)]
    count: u32,
    /// Time between pings (e.g. 1s, 200ms).
    #[arg(short = 'i', long, default_value = "1s")]
    interval: String,
    /// How long to wait for each answer.
    #[arg(long, default_value = "3s")]
    timeout: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// How long to wait for the agent's answer.
    #[arg(long, default_value = "3s")]
    timeout: String,
    #[arg(long)]
    json: bool,
}

fn duration_arg(flag: &str, s: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{flag} {s:?}: expected a duration like 3s or 500ms"))?;
    if d.is_zero() {
        bail!("{flag} {s:?}: must be more than zero");
    }
    Ok(d)
}

fn timeout_ms(s: &str) -> anyhow::Result<u64> {
    let d = duration_arg("--timeout", s)?;
    let ms = d.as_millis().max(1) as u64;
    if ms > banger_api::MAX_AGENT_TIMEOUT_MS {
        bail!(
            "--timeout {s:?}: at most {}",
            format_timeout(banger_api::MAX_AGENT_TIMEOUT_MS)
        );
    }
    Ok(ms)
}

/// One ping of a series: its answer or why there was none.
#[derive(Debug, Serialize)]
struct PingLine {
    seq: u32,
    #[serde(flatten)]
    answer: Option<PingResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct PingReport {
    vm: String,
    sent: u32,
    answered: u32,
    min_ms: Option<f64>,
    avg_ms: Option<f64>,
    max_ms: Option<f64>,
    pings: Vec<PingLine>,
}

fn report(vm: &str, pings: Vec<PingLine>) -> PingReport {
    let lat: Vec<f64> = pings
        .iter()
        .filter_map(|p| p.answer.as_ref().map(|a| a.latency_ms))
        .collect();
    PingReport {
        vm: vm.to_string(),
        sent: pings.len() as u32,
        answered: lat.len() as u32,
        min_ms: lat.iter().copied().reduce(f64::min),
        avg_ms: (!lat.is_empty()).then(|| lat.iter().sum::<f64>() / lat.len() as f64),
        max_ms: lat.iter().copied().reduce(f64::max),
        pings,
    }
}

fn pong_line(r: &PingResult) -> String {
    format!(
        "pong from {} in {} (agent v{})",
        r.vm,
        format_latency(r.latency_ms),
        r.agent_version
    )
}

fn summary_line(r: &PingReport) -> String {
    let mut s = format!("{} sent, {} answered", r.sent, r.answered);
    if let (Some(min), Some(avg), Some(max)) = (r.min_ms, r.avg_ms, r.max_ms) {
        s.push_str(&format!(
            "; min/avg/max {}/{}/{}",
            format_latency(min).trim_end_matches(" ms"),
            format_latency(avg).trim_end_matches(" ms"),
            format_latency(max)
        ));
    }
    s
}

pub async fn ping(layout: &Layout, a: PingArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    if a.count == 0 {
        bail!("-c/--count must be at least 1");
    }
    let interval = duration_arg("--interval", &a.interval)?;
    let req = PingRequest {
        timeout_ms: Some(timeout_ms(&a.timeout)?),
    };
    let c = client(layout).await?;
    let mut pings = Vec::new();
    for seq in 1..=a.count {
        if seq > 1 {
            tokio::time::sleep(interval).await;
        }
        match c
            .post::<_, PingResult>(&format!("/vms/{}/ping", a.name), &req)
            .await
        {
            Ok(r) => {
                if !a.json {
                    println!("{}", pong_line(&r));
                }
                pings.push(PingLine {
                    seq,
                    answer: Some(r),
                    error: None,
                });
            }
            // No answer this time: counted, and the series goes on.
            Err(ClientError::Api(e)) if e.code == ErrorCode::OperationFailed => {
                if !a.json {
                    eprintln!("{} {}", style::red("banger:", true), e.message);
                }
                pings.push(PingLine {
                    seq,
                    answer: None,
                    error: Some(e.message),
                });
            }
            // Not running, not found, daemon gone: nothing to repeat.
            Err(e) => return Err(e.into()),
        }
    }
    let r = report(&a.name, pings);
    if a.json {
        print_json(&r)?;
    } else if a.count > 1 {
        println!("{}", summary_line(&r));
    }
    Ok(if r.answered == r.sent { 0 } else { 1 })
}

fn paint_status(status: HealthStatus, summary: &str) -> String {
    let word = status.as_str();
    let Some(rest) = summary.strip_prefix(word) else {
        return summary.to_string();
    };
    let painted = match status {
        HealthStatus::Healthy => style::green(word, false),
        HealthStatus::Degraded => style::yellow(word, false),
        _ => style::red(word, false),
    };
    format!("{painted}{rest}")
}

/// The rows under the summary line.
fn health_rows(h: &VmHealth) -> Vec<String> {
    let mut rows = vec![format!("  state  {}", h.state)];
    let pid = h
        .vmm
        .pid
        .map(|p| format!("pid {p}"))
        .unwrap_or_else(|| "no pid".into());
    rows.push(format!(
        "  vmm    {}, {pid}, {}",
        h.vmm.kind,
        if h.vmm.running {
            "running"
        } else {
            "not running"
        }
    ));
    let agent = match (&h.agent, h.agent.checked) {
        (_, false) => "not asked (no running VMM)".to_string(),
        (a, true) if a.answered => format!(
            "answered in {}{}",
            a.latency_ms.map(format_latency).unwrap_or_default(),
            a.version
                .as_deref()
                .map(|v| format!(" (agent v{v})"))
                .unwrap_or_default()
        ),
        (a, true) => format!(
            "no answer within {}: {}",
            format_timeout(a.timeout_ms),
            a.error.as_deref().unwrap_or("unknown error")
        ),
    };
    rows.push(format!("  agent  {agent}"));
    rows
}

pub async fn health(layout: &Layout, a: HealthArgs) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    let ms = timeout_ms(&a.timeout)?;
    let c = client(layout).await?;
    let h: VmHealth = c
        .get(&format!("/vms/{}/health?timeout_ms={ms}", a.name))
        .await?;
    if a.json {
        print_json(&h)?;
    } else {
        println!("{}", paint_status(h.status, &h.summary));
        for row in health_rows(&h) {
            println!("{row}");
        }
    }
    Ok(h.status.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::{AgentHealth, VmState, VmmHealth};

    fn result(ms: f64) -> PingResult {
        PingResult {
            vm: "box".into(),
            latency_ms: ms,
            agent_version: "0.1.0".into(),
            hostname: "box".into(),
            boot_id: "b".into(),
            instance_id: None,
        }
    }

    #[test]
    fn ping_lines_and_summary() {
        assert_eq!(
            pong_line(&result(1.84)),
            "pong from box in 1.8 ms (agent v0.1.0)"
        );
        let r = report(
            "box",
            vec![
                PingLine {
                    seq: 1,
                    answer: Some(result(1.0)),
                    error: None,
                },
                PingLine {
                    seq: 2,
                    answer: None,
                    error: Some("no answer".into()),
                },
                PingLine {
                    seq: 3,
                    answer: Some(result(3.0)),
                    error: None,
                },
            ],
        );
        assert_eq!((r.sent, r.answered), (3, 2));
        assert_eq!(
            summary_line(&r),
            "3 sent, 2 answered; min/avg/max 1.0/2.0/3.0 ms"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["pings"][0]["latency_ms"], 1.0);
        assert_eq!(v["pings"][1]["error"], "no answer");
        assert!(v["pings"][1].get("latency_ms").is_none());
        let none = report("box", vec![]);
        assert_eq!(summary_line(&none), "0 sent, 0 answered");
    }

    #[test]
    fn timeouts_parse_and_are_bounded() {
        assert_eq!(timeout_ms("3s").unwrap(), 3000);
        assert_eq!(timeout_ms("250ms").unwrap(), 250);
        assert!(timeout_ms("0s").is_err());
        assert!(timeout_ms("2m").is_err());
        assert!(timeout_ms("soon").is_err());
    }

    #[test]
    fn degraded_rows_say_why() {
        let h = VmHealth {
            vm: "box".into(),
            status: HealthStatus::Degraded,
            healthy: false,
            summary: "degraded: ...".into(),
            state: VmState::Running,
            error: None,
            vmm: VmmHealth {
                kind: "qemu".into(),
                pid: Some(123),
                running: true,
            },
            agent: AgentHealth {
                checked: true,
                answered: false,
                latency_ms: None,
                version: None,
                error: Some("ping timed out".into()),
                timeout_ms: 3000,
            },
        };
        assert_eq!(
            health_rows(&h),
            [
                "  state  running",
                "  vmm    qemu, pid 123, running",
                "  agent  no answer within 3s: ping timed out",
            ]
        );
        // Plain when stdout is not a terminal (as under cargo test).
        assert_eq!(paint_status(h.status, "degraded: x"), "degraded: x");
    }
}
