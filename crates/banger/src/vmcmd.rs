//! `banger vm ...`, `banger image ...`, `banger doctor`, `banger operations`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context};
use banger_api::{
    format_size, validate_vm_name, CheckStatus, CreateVmRequest, DoctorReport, KillRequest,
    OperationInfo, PruneResult, VmInfo, VmPorts, VmSpec,
};
use banger_client::Client;
use banger_paths::Layout;
use clap::{Args, Subcommand};

use crate::{daemonctl, style, table, JsonFlag};

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Create a VM and boot it; returns once the guest agent answers.
    #[command(
        after_help = "Examples:\n  banger vm create --name box\n  banger vm create --vcpu 4 --memory 4G --disk 20G"
    )]
    Create(CreateArgs),
    /// Create a VM, run a command in it, print its output and exit with its code.
    #[command(
        after_help = "Examples:\n  banger vm run -- uname -a\n  banger vm run --rm -- sh -c 'echo out; exit 42'   # exits 42, leaves nothing\n  banger vm run --rm ./my-repo -- make test         # the repo's tracked files, then make test in them\n  banger vm run -d --nat ./my-repo                  # create, copy, install mise tools, return\n  banger vm run ./my-repo                           # ... and open an ssh session in the repo"
    )]
    Run(crate::wscmd::RunArgs),
    /// Start a stopped VM with the disks it kept.
    Start(NameArg),
    /// Flush the guest's disks, power it off, keep its disks.
    Stop(NameArg),
    /// Reboot a running VM (a new VMM; a new boot id).
    Restart(NameArg),
    /// Send a signal to the VM's VMM (default KILL); the VM ends stopped.
    Kill(KillArgs),
    /// Delete a VM: its VMM, tap, disks and state.
    #[command(alias = "rm")]
    Delete(NameArg),
    /// Delete every VM that is not running.
    Prune(PruneArgs),
    /// List VMs.
    #[command(alias = "ps", alias = "ls")]
    List(JsonFlag),
    /// Show one VM.
    Show(NameArg),
    /// Change a stopped VM's vCPUs, memory or work disk size; the next
    /// start uses them. The work disk (/root) only grows, keeping its files.
    #[command(
        after_help = "Examples:\n  banger vm stop box && banger vm set box --vcpu 4 --memory 4G && banger vm start box\n  banger vm set box --disk 20G            # grow /root in place\n  banger vm set box --memory 512M --json\n\nLimits: vcpus up to 4 per CPU of this host (and 64), memory from 128 MiB up to this host's\nMemTotal, disk growth up to the free space where banger keeps its state."
    )]
    Set(crate::vmset::SetArgs),
    /// What a VM uses: VMM CPU time and memory, disk space, network bytes
    /// and, while it runs, the guest's memory, load, uptime and filesystems.
    #[command(after_help = "Examples:\n  banger vm stats box\n  banger vm stats box --json")]
    Stats(NameArg),
    /// Run a command in a running VM (in its workspace, if it has one);
    /// exits with the command's code.
    #[command(
        after_help = "Examples:\n  banger vm exec box -- make test\n  banger vm exec box --auto-prepare -- cargo test   # re-copy the repo first if its HEAD moved\n  banger vm exec box --guest-path /tmp -- sh -c 'pwd; exit 3'"
    )]
    Exec(crate::wscmd::ExecArgs),
    /// Open an ssh session to the VM, or run one command over ssh.
    #[command(
        after_help = "Examples:\n  banger vm ssh box\n  banger vm ssh box -- sh -c 'exit 42'   # exits 42"
    )]
    Ssh(crate::wscmd::SshArgs),
    /// List the TCP and UDP ports listening inside a running VM (asked of
    /// the guest agent, not over ssh), with the <name>.vm:<port> endpoint.
    #[command(after_help = "Examples:\n  banger vm ports box\n  banger vm ports box --json")]
    Ports(NameArg),
    /// Print the guest console kept for a VM, or its VMM's log; -f follows.
    ///
    /// Works for running and stopped VMs: the console (kernel, systemd,
    /// anything written to /dev/console) and, with --vmm, the VMM's own
    /// messages are kept per VM. -f prints new output until the VM stops.
    #[command(
        after_help = "The console keeps the newest 4 to 8 MiB, the VMM log 1 to 2 MiB; both are\ndeleted with the VM. On a terminal, escape sequences other than colours are\ndropped; piped output is the guest's bytes as written.\n\nExamples:\n  banger vm logs box                  # everything kept, boot messages first\n  banger vm logs box -f               # ... then new output until the VM stops\n  banger vm logs box --since 5m       # output received in the last 5 minutes\n  banger vm logs box --vmm            # QEMU's messages, banger's launch/exit notes\n  banger vm logs box --json | jq -r .line"
    )]
    Logs(crate::logcmd::LogsArgs),
    /// Ask the VM's guest agent for an answer and show the round trip.
    #[command(
        after_help = "Exit code: 0 when every ping was answered, else 1.\n\nExamples:\n  banger vm ping box                  # pong from box in 1.8 ms (agent v0.1.0)\n  banger vm ping box -c 5 -i 200ms\n  banger vm ping box --timeout 10s --json"
    )]
    Ping(crate::healthcmd::PingArgs),
    /// Check a VM's state, VMM process and agent; exit 0 only when healthy.
    ///
    /// One verdict: healthy, degraded (the VMM runs but the agent does not
    /// answer in time), down (the row says running but the VMM is gone),
    /// stopped, creating or error.
    #[command(
        after_help = "Exit code: 0 healthy, 1 degraded, 2 not running (down, stopped, creating, error).\n\nExamples:\n  banger vm health box\n  banger vm health box --timeout 10s\n  banger vm health box --json | jq -r .status"
    )]
    Health(crate::healthcmd::HealthArgs),
    /// Copy a git checkout into a VM and bring the guest's changes back.
    #[command(subcommand)]
    Workspace(crate::wscmd::WorkspaceCmd),
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    pub(crate) name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// VM name.
    #[arg(add = crate::complete::vms())]
    name: String,
    /// Signal to send: KILL, TERM, INT, HUP, QUIT, USR1, USR2 or ABRT.
    #[arg(long, short = 's', default_value = "KILL")]
    signal: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// VM name (a DNS label: lowercase letters, digits, '-'); generated if empty.
    #[arg(long)]
    name: Option<String>,
    /// Image to boot (default: debian-bookworm, built on first use).
    #[arg(long, add = crate::complete::images())]
    image: Option<String>,
    /// Virtual CPUs.
    #[arg(long)]
    vcpu: Option<u32>,
    /// Memory, e.g. 512M, 2G (a bare number is MiB).
    #[arg(long)]
    memory: Option<String>,
    /// Work disk (/root) size, e.g. 8G.
    #[arg(long)]
    disk: Option<String>,
    /// VMM: auto (Firecracker when it can run here, else QEMU), firecracker
    /// or qemu. Default: `vmm` in config.toml, else auto.
    #[arg(long, value_name = "VMM")]
    vmm: Option<banger_api::VmmChoice>,
    /// Give the guest outbound internet access (masquerade through the host).
    #[arg(long)]
    pub nat: bool,
    /// Boot the guest from scratch even when a warm snapshot of the image
    /// and shape exists (see `banger image warm`).
    #[arg(long)]
    pub cold: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A client to a running daemon, starting it first if it is not running.
pub(crate) async fn client(layout: &Layout) -> anyhow::Result<Client> {
    let c = Client::new(layout.daemon_socket());
    if c.get::<banger_api::DaemonStatus>("/status").await.is_err() {
        eprintln!("{}", style::dim("starting bangerd..."));
        daemonctl::start(layout, true).await?;
    }
    Ok(c)
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// An optional size flag (`--memory 2G`, `--disk 20G`) in MiB; a bad value
/// fails naming the flag.
pub(crate) fn size_flag(flag: &'static str, value: Option<&str>) -> anyhow::Result<Option<u64>> {
    value
        .map(|v| {
            banger_api::parse_size_mib(v)
                .map_err(anyhow::Error::msg)
                .context(flag)
        })
        .transpose()
}

pub(crate) fn create_request(s: &ShapeArgs) -> anyhow::Result<CreateVmRequest> {
    if let Some(name) = s.name.as_deref().filter(|n| !n.is_empty()) {
        validate_vm_name(name)?;
    }
    let memory_mib = size_flag("--memory", s.memory.as_deref())?;
    let work_disk_mib = size_flag("--disk", s.disk.as_deref())?;
    let req = CreateVmRequest {
        vmm: s.vmm,
        name: s.name.clone(),
        image: s.image.clone(),
        vcpus: s.vcpu,
        memory_mib: memory_mib.map(|m| m.min(u32::MAX as u64) as u32),
        work_disk_mib,
        nat: s.nat,
        cold: s.cold,
    };
    let spec = VmSpec {
        vcpus: req.vcpus.unwrap_or(VmSpec::DEFAULT.vcpus),
        memory_mib: req.memory_mib.unwrap_or(VmSpec::DEFAULT.memory_mib),
        work_disk_mib: req.work_disk_mib.unwrap_or(VmSpec::DEFAULT.work_disk_mib),
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    Ok(req)
}

fn fmt_ms(ms: u64) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// Follows an operation until it is done, showing each stage on stderr.
pub(crate) async fn follow(
    c: &Client,
    op: OperationInfo,
    quiet: bool,
) -> anyhow::Result<OperationInfo> {
    let tty = std::io::stderr().is_terminal() && !quiet;
    let bar = if tty {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let mut shown = 0usize;
    let mut notes_shown = 0usize;
    let mut last_progress = String::new();
    let mut cur = op;
    loop {
        for st in cur.stages.iter().skip(shown) {
            let line = format!("  {:<12} {}", st.name, style::dim(&fmt_ms(st.elapsed_ms)));
            match &bar {
                Some(b) => b.println(line),
                None if !quiet => eprintln!("{line}"),
                None => {}
            }
        }
        shown = cur.stages.len();
        // After the stages: a note belongs to the stage still running.
        for note in cur.notes.iter().skip(notes_shown) {
            let line = format!("  {}", style::dim(note));
            match &bar {
                Some(b) => b.println(line),
                None if !quiet => eprintln!("{line}"),
                None => {}
            }
        }
        notes_shown = cur.notes.len();
        if cur.done {
            break;
        }
        let progress = cur.progress.clone().unwrap_or_default();
        match &bar {
            Some(b) => b.set_message(format!("{} {}", cur.stage, style::dim(&progress))),
            None if !quiet && progress != last_progress && !progress.is_empty() => {
                eprintln!("  {:<12} {}", cur.stage, progress)
            }
            None => {}
        }
        last_progress = progress;
        // A warm start is done in about a second: a coarse poll would be a
        // visible part of it. A poll is one small request on a Unix socket.
        tokio::time::sleep(Duration::from_millis(50)).await;
        cur = c.get(&format!("/operations/{}", cur.id)).await?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(err) = cur.error.clone() {
        return Err(banger_client::ClientError::Api(err).into());
    }
    if !quiet {
        if let Some(st) = cur.stages.iter().find(|s| s.name == "image-build") {
            eprintln!(
                "{}",
                style::dim(&format!(
                    "built the default image in {}",
                    fmt_ms(st.elapsed_ms)
                ))
            );
        }
        eprintln!(
            "{}",
            style::dim(&format!(
                "{} {} ready in {}",
                cur.kind,
                cur.target,
                fmt_ms(cur.elapsed_ms)
            ))
        );
    }
    Ok(cur)
}

pub(crate) async fn create_vm(
    c: &Client,
    req: &CreateVmRequest,
    quiet: bool,
) -> anyhow::Result<VmInfo> {
    let op: OperationInfo = c.post("/vms", req).await?;
    let done = follow(c, op, quiet).await?;
    done.vm
        .context("daemon reported no vm for a finished create")
}

/// Exit codes outside 0..=255 (they cannot reach a shell) become 255.
pub(crate) fn exit_byte(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(255)
}

fn spec_line(v: &VmInfo) -> String {
    format!(
        "{} vcpu | {} memory | {} work disk",
        v.spec.vcpus,
        format_size(v.spec.memory_mib as u64 * 1024 * 1024),
        format_size(v.spec.work_disk_mib * 1024 * 1024)
    )
}

fn print_vm(v: &VmInfo) {
    print!("{}", table::kv(&vm_rows(v)));
}

/// `vm show`'s lines (key, value); `-` stands in for what is unknown.
fn vm_rows(v: &VmInfo) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("name", v.name.clone()),
        ("id", v.id.clone()),
        ("state", v.state.to_string()),
    ];
    if let Some(e) = &v.error {
        rows.push(("error", e.clone()));
    }
    rows.extend([
        ("spec", spec_line(v)),
        ("image", v.image.clone()),
        ("ip", v.ip.clone()),
        ("mac", v.mac.clone()),
        ("tap", v.tap.clone().unwrap_or_default()),
        (
            "vmm",
            format!(
                "{} (pid {})",
                v.vmm,
                v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
            ),
        ),
    ]);
    if let Some(r) = &v.vmm_reason {
        rows.push(("", r.clone()));
    }
    rows.push(("root cow", v.root_cow.clone().unwrap_or_default()));
    if let Some(snap) = &v.warm_snapshot {
        rows.push((
            "warm from",
            format!("snapshot {snap} (banger image snapshots)"),
        ));
    }
    rows.push(("nat", if v.nat { "on" } else { "off" }.into()));
    let workspace = v.workspace.as_ref().map(|w| {
        format!(
            "{} <- {} @ {} ({}{}, {})",
            w.guest_path,
            w.source_path,
            w.head_commit
                .as_deref()
                .map(|h| &h[..h.len().min(12)])
                .unwrap_or("no commits"),
            w.mode,
            if w.include_untracked {
                ", untracked"
            } else {
                ""
            },
            ago(w.prepared_at)
        )
    });
    rows.push(("workspace", workspace.unwrap_or_default()));
    let accel = match (&v.accel, &v.accel_reason) {
        (Some(a), Some(r)) => format!("{a} ({r})"),
        (Some(a), None) => a.clone(),
        _ => String::new(),
    };
    rows.push(("accel", accel));
    rows
}

pub(crate) fn ago(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let s = (now - unix).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

pub async fn vm(layout: &Layout, cmd: VmCmd) -> anyhow::Result<u8> {
    // Reject bad names before touching the daemon.
    let check = |n: &str| validate_vm_name(n).map_err(anyhow::Error::from);
    match cmd {
        VmCmd::Create(a) => {
            let req = create_request(&a.shape)?;
            let c = client(layout).await?;
            let v = create_vm(&c, &req, a.json).await?;
            if a.json {
                print_json(&v)?;
            } else {
                println!("{}", v.name);
            }
            Ok(0)
        }
        VmCmd::Run(a) => crate::wscmd::run(layout, a).await,
        VmCmd::Exec(a) => crate::wscmd::exec(layout, a).await,
        VmCmd::Ssh(a) => crate::wscmd::ssh(layout, a).await,
        VmCmd::Workspace(c) => crate::wscmd::workspace(layout, c).await,
        VmCmd::Logs(a) => crate::logcmd::logs(layout, a).await,
        VmCmd::Ping(a) => crate::healthcmd::ping(layout, a).await,
        VmCmd::Health(a) => crate::healthcmd::health(layout, a).await,
        VmCmd::Start(a) => lifecycle(layout, "start", a).await,
        VmCmd::Stop(a) => lifecycle(layout, "stop", a).await,
        VmCmd::Restart(a) => lifecycle(layout, "restart", a).await,
        VmCmd::Kill(a) => {
            check(&a.name)?;
            let c = client(layout).await?;
            let v: VmInfo = c
                .post(
                    &format!("/vms/{}/kill", a.name),
                    &KillRequest { signal: a.signal },
                )
                .await?;
            if a.json {
                print_json(&v)?;
            } else {
                println!("{} {}", v.name, v.state);
            }
            Ok(0)
        }
        VmCmd::Delete(a) => {
            check(&a.name)?;
            let c = client(layout).await?;
            let v: VmInfo = c.delete(&format!("/vms/{}", a.name)).await?;
            if a.json {
                print_json(&v)?;
            } else {
                println!("deleted {}", v.name);
            }
            Ok(0)
        }
        VmCmd::Prune(a) => {
            let c = client(layout).await?;
            let vms: Vec<VmInfo> = c.get("/vms").await?;
            let victims: Vec<&VmInfo> = vms
                .iter()
                .filter(|v| {
                    v.state != banger_api::VmState::Running
                        && v.state != banger_api::VmState::Creating
                })
                .collect();
            if victims.is_empty() {
                if a.json {
                    print_json(&PruneResult::default())?;
                } else {
                    println!("nothing to prune");
                }
                return Ok(0);
            }
            if !a.force {
                let rows: Vec<Vec<String>> = victims
                    .iter()
                    .map(|v| vec![v.name.clone(), v.state.to_string(), v.image.clone()])
                    .collect();
                eprint!("{}", table::render(&["NAME", "STATE", "IMAGE"], &rows));
                if !std::io::stdin().is_terminal() {
                    bail!("refusing to prune without confirmation; pass -f to delete these VMs");
                }
                eprint!("delete these {} vm(s)? [y/N] ", victims.len());
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("aborted");
                    return Ok(1);
                }
            }
            let r: PruneResult = c.post("/vms/prune", &serde_json::json!({})).await?;
            if a.json {
                print_json(&r)?;
            } else {
                for n in &r.deleted {
                    println!("deleted {n}");
                }
            }
            Ok(0)
        }
        VmCmd::List(j) => {
            let c = client(layout).await?;
            let vms: Vec<VmInfo> = c.get("/vms").await?;
            if j.json {
                print_json(&vms)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = vms
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        v.state.to_string(),
                        v.ip.clone(),
                        v.spec.vcpus.to_string(),
                        format_size(v.spec.memory_mib as u64 * 1024 * 1024),
                        v.image.clone(),
                        v.workspace
                            .as_ref()
                            .map(|w| w.guest_path.clone())
                            .unwrap_or_else(|| "-".into()),
                        ago(v.created_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(
                    &[
                        "NAME",
                        "STATE",
                        "IP",
                        "VCPU",
                        "MEMORY",
                        "IMAGE",
                        "WORKSPACE",
                        "CREATED"
                    ],
                    &rows
                )
            );
            Ok(0)
        }
        VmCmd::Set(a) => crate::vmset::run(layout, a).await,
        VmCmd::Stats(a) => crate::vmstats::run(layout, a).await,
        VmCmd::Ports(a) => {
            check(&a.name)?;
            let c = client(layout).await?;
            let p: VmPorts = c.get(&format!("/vms/{}/ports", a.name)).await?;
            if a.json {
                print_json(&p)?;
            } else {
                print!("{}", ports_table(&p));
            }
            Ok(0)
        }
        VmCmd::Show(a) => {
            check(&a.name)?;
            let c = client(layout).await?;
            let v: VmInfo = c.get(&format!("/vms/{}", a.name)).await?;
            if a.json {
                print_json(&v)?;
            } else {
                print_vm(&v);
            }
            Ok(0)
        }
    }
}

/// `banger vm ports`: one row per listener; `-` where nothing is known.
fn ports_table(p: &VmPorts) -> String {
    let rows: Vec<Vec<String>> = p
        .ports
        .iter()
        .map(|l| {
            let process = match (&l.process, l.pid) {
                (Some(name), Some(pid)) => format!("{name} ({pid})"),
                (Some(name), None) => name.clone(),
                (None, Some(pid)) => format!("({pid})"),
                (None, None) => String::new(),
            };
            vec![
                l.proto.clone(),
                l.addr.clone(),
                l.port.to_string(),
                process,
                l.endpoint.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(&["PROTO", "ADDRESS", "PORT", "PROCESS", "ENDPOINT"], &rows)
}

/// start / stop / restart share their shape: POST, print the new state.
pub async fn lifecycle(layout: &Layout, verb: &str, a: NameArg) -> anyhow::Result<u8> {
    validate_vm_name(&a.name)?;
    let c = client(layout).await?;
    let v: VmInfo = c
        .post(&format!("/vms/{}/{verb}", a.name), &serde_json::json!({}))
        .await?;
    if a.json {
        print_json(&v)?;
    } else {
        println!("{} {}", v.name, v.state);
    }
    Ok(0)
}

pub async fn operations(layout: &Layout, json: bool) -> anyhow::Result<u8> {
    let c = client(layout).await?;
    let ops: Vec<OperationInfo> = c.get("/operations").await?;
    if json {
        print_json(&ops)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let state = match (&o.error, o.done) {
                (Some(_), _) => "failed".to_string(),
                (None, true) => "done".to_string(),
                (None, false) => "running".to_string(),
            };
            vec![
                o.id.clone(),
                o.kind.clone(),
                o.target.clone(),
                state,
                o.stage.clone(),
                fmt_ms(o.elapsed_ms),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ID", "KIND", "TARGET", "STATE", "STAGE", "ELAPSED"],
            &rows
        )
    );
    Ok(0)
}

/// Doctor's rows as a table (STATUS, CHECK, DETAIL): warnings and failures
/// only unless `verbose`; nothing at all when every shown row is gone.
fn doctor_table(checks: &[banger_api::DoctorCheck], verbose: bool) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .filter(|ch| verbose || ch.status != CheckStatus::Pass)
        .map(|ch| {
            let tag = match ch.status {
                CheckStatus::Pass => style::green("PASS", false),
                CheckStatus::Warn => style::yellow("WARN", false),
                CheckStatus::Fail => style::red("FAIL", false),
            };
            vec![tag, ch.name.clone(), ch.detail.clone()]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table::render(&["STATUS", "CHECK", "DETAIL"], &rows)
}

pub async fn doctor(layout: &Layout, verbose: bool, json: bool) -> anyhow::Result<u8> {
    let c = Client::new(layout.daemon_socket());
    let report: DoctorReport = match c.get("/doctor").await {
        Ok(r) => r,
        Err(banger_client::ClientError::Unreachable { .. }) => DoctorReport {
            checks: vec![banger_api::DoctorCheck {
                name: "daemon".into(),
                status: CheckStatus::Fail,
                detail: format!(
                    "bangerd is not running at {}; start it with `{}`",
                    layout.daemon_socket().display(),
                    if layout.system {
                        "sudo banger system restart"
                    } else {
                        "banger daemon start"
                    }
                ),
            }],
        },
        Err(e) => return Err(e.into()),
    };
    let mut report = report;
    report.checks.extend(crate::system::doctor_checks(layout));
    if json {
        print_json(&report)?;
    } else {
        print!("{}", doctor_table(&report.checks, verbose));
        let count = |s| report.checks.iter().filter(|c| c.status == s).count();
        println!(
            "{} checks: {} passed, {} warnings, {} failed",
            report.checks.len(),
            count(CheckStatus::Pass),
            count(CheckStatus::Warn),
            count(CheckStatus::Fail)
        );
    }
    let failed = report.checks.iter().any(|c| c.status == CheckStatus::Fail);
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: Option<&str>, vcpu: Option<u32>, memory: Option<&str>) -> ShapeArgs {
        ShapeArgs {
            name: name.map(str::to_string),
            image: None,
            vcpu,
            memory: memory.map(str::to_string),
            disk: None,
            vmm: None,
            nat: false,
            cold: false,
        }
    }

    #[test]
    fn cold_reaches_the_request() {
        let mut s = shape(None, None, None);
        assert!(!create_request(&s).unwrap().cold);
        s.cold = true;
        assert!(create_request(&s).unwrap().cold);
    }

    #[test]
    fn bad_flags_fail_before_any_request() {
        let e = create_request(&shape(Some("Bad Name"), None, None)).unwrap_err();
        assert!(e.to_string().contains("lowercase"), "{e}");
        let e = create_request(&shape(Some("box/../evil"), None, None)).unwrap_err();
        assert!(e.to_string().contains("'/'"), "{e}");
        let e = create_request(&shape(None, Some(0), None)).unwrap_err();
        assert!(e.to_string().contains("--vcpu"), "{e}");
        let e = create_request(&shape(None, None, Some("lots"))).unwrap_err();
        assert!(format!("{e:#}").contains("--memory"), "{e:#}");
    }

    #[test]
    fn good_flags_build_the_request() {
        let r = create_request(&shape(Some("box"), Some(4), Some("2G"))).unwrap();
        assert_eq!(r.name.as_deref(), Some("box"));
        assert_eq!(r.vcpus, Some(4));
        assert_eq!(r.memory_mib, Some(2048));
        // An empty name is passed through for the daemon to generate one.
        assert!(create_request(&shape(Some(""), None, None)).is_ok());
    }

    #[test]
    fn ports_table_shows_owner_and_endpoint() {
        let port =
            |proto: &str, addr: &str, port, process: Option<&str>, pid| banger_api::PortInfo {
                proto: proto.into(),
                addr: addr.into(),
                port,
                process: process.map(str::to_string),
                pid,
                endpoint: Some(format!("box.vm:{port}")),
            };
        let t = ports_table(&VmPorts {
            vm: "box".into(),
            ports: vec![
                port("tcp", "0.0.0.0", 22, Some("sshd"), Some(310)),
                port("udp6", "::", 5353, None, None),
            ],
        });
        assert_eq!(
            t,
            "PROTO  ADDRESS  PORT  PROCESS     ENDPOINT\n\
             tcp    0.0.0.0  22    sshd (310)  box.vm:22\n\
             udp6   ::       5353  -           box.vm:5353\n"
        );
    }

    #[test]
    fn doctor_rows_are_a_table_of_what_matters() {
        let check = |name: &str, status| banger_api::DoctorCheck {
            name: name.into(),
            status,
            detail: format!("{name} detail"),
        };
        let checks = [
            check("kvm", CheckStatus::Pass),
            check("firecracker", CheckStatus::Warn),
            check("dns", CheckStatus::Fail),
        ];
        assert_eq!(
            doctor_table(&checks, false),
            "STATUS  CHECK        DETAIL\n\
             WARN    firecracker  firecracker detail\n\
             FAIL    dns          dns detail\n"
        );
        assert!(doctor_table(&checks, true).contains("\nPASS    kvm          kvm detail\n"));
        assert_eq!(doctor_table(&checks[..1], false), "");
    }

    #[test]
    fn vm_show_is_one_key_value_view() {
        let mut v = test_vm();
        v.vmm_reason = Some("auto: firecracker unusable".into());
        let out = table::kv(&vm_rows(&v));
        assert!(out.starts_with("name       box\nid         x\n"), "{out}");
        assert!(
            out.contains("\nvmm        qemu (pid -)\n           auto: firecracker unusable\n"),
            "{out}"
        );
        assert!(out.contains("\nroot cow   -\n"), "{out}");
        assert!(out.ends_with("\naccel      -\n"), "{out}");
        assert!(out.is_ascii());
    }

    #[test]
    fn exit_codes_fit_a_byte() {
        assert_eq!(exit_byte(42), 42);
        assert_eq!(exit_byte(0), 0);
        assert_eq!(exit_byte(300), 255);
        assert_eq!(exit_byte(-1), 255);
    }

    fn test_vm() -> VmInfo {
        VmInfo {
            id: "x".into(),
            name: "box".into(),
            state: banger_api::VmState::Running,
            error: None,
            image: "i".into(),
            spec: VmSpec::DEFAULT,
            ip: "1.2.3.4".into(),
            mac: "m".into(),
            tap: None,
            pid: None,
            vmm: "qemu".into(),
            vmm_reason: None,
            root_cow: None,
            accel: None,
            accel_reason: None,
            created_at: 0,
            started_at: None,
            nat: false,
            warm_snapshot: None,
            workspace: None,
        }
    }

    #[test]
    fn spec_line_is_ascii() {
        let v = test_vm();
        let line = spec_line(&v);
        assert!(line.is_ascii(), "{line}");
        assert_eq!(line, "2 vcpu | 1 GiB memory | 8 GiB work disk");
    }
}
