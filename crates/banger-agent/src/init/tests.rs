use super::*;

/// A trimmed /proc/self/mountinfo of a Debian guest, with an escaped space.
const MOUNTINFO: &str = "\
21 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
22 21 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 21 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 21 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4096k,mode=755
25 24 0:22 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 21 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=50m,mode=755
40 21 254:16 / /root rw,relatime shared:20 - ext4 /dev/vdb rw
41 21 0:30 / /mnt/with\\040space rw,relatime shared:21 - tmpfs tmpfs rw
";

#[test]
fn mountinfo_mount_points() {
    let points: Vec<String> = mount_points(MOUNTINFO).collect();
    assert_eq!(
        points,
        [
            "/",
            "/sys",
            "/proc",
            "/dev",
            "/dev/pts",
            "/run",
            "/root",
            "/mnt/with space"
        ]
    );
    assert!(is_mounted(MOUNTINFO, "/proc"));
    assert!(is_mounted(MOUNTINFO, "/root"));
    assert!(is_mounted(MOUNTINFO, "/mnt/with space"));
    // Not mounted: /dev/shm and /tmp; a prefix of a mount point is not one.
    assert!(!is_mounted(MOUNTINFO, "/dev/shm"));
    assert!(!is_mounted(MOUNTINFO, "/tmp"));
    assert!(!is_mounted(MOUNTINFO, "/ro"));
    // No /proc yet: nothing counts as mounted.
    assert!(!is_mounted("", "/proc"));
}

#[test]
fn octal_escapes_are_undone() {
    assert_eq!(unescape_octal(r"/a\040b\011c\012d\134e"), "/a b\tc\nd\\e");
    // Not an escape: kept as is.
    assert_eq!(unescape_octal(r"/a\08"), r"/a\08");
    assert_eq!(unescape_octal(r"/end\04"), r"/end\04");
    assert_eq!(unescape_octal("/plain"), "/plain");
}

#[test]
fn mount_table_mounts_parents_first_and_tmp_only_when_empty() {
    let targets: Vec<&str> = MOUNTS.iter().map(|m| m.target).collect();
    assert_eq!(
        targets,
        ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"]
    );
    for m in MOUNTS {
        // Each mount point's parent is "/" or mounted before it.
        let parent = Path::new(m.target).parent().unwrap().to_str().unwrap();
        let before = &targets[..targets.iter().position(|t| *t == m.target).unwrap()];
        assert!(parent == "/" || before.contains(&parent), "{}", m.target);
        assert!(m.flags.contains(MsFlags::MS_NOSUID), "{}", m.target);
    }
    let find = |t: &str| MOUNTS.iter().find(|m| m.target == t).unwrap();
    let pts = find("/dev/pts");
    assert_eq!(pts.data, Some("gid=5,mode=620,ptmxmode=666"));
    assert!(pts.data_optional);
    assert_eq!(find("/dev/shm").data, Some("mode=1777"));
    assert_eq!(find("/run").data, Some("mode=755"));
    let tmp = find("/tmp");
    assert_eq!((tmp.fstype, tmp.data), ("tmpfs", Some("mode=1777")));
    assert_eq!(tmp.when, When::MissingOrEmpty);
    assert!(MOUNTS
        .iter()
        .filter(|m| m.target != "/tmp")
        .all(|m| m.when == When::Always));
}

#[test]
fn tmp_is_mounted_over_missing_or_empty_only() {
    let dir = tempfile::tempdir().unwrap();
    assert!(missing_or_empty(&dir.path().join("absent")));
    assert!(missing_or_empty(dir.path()));
    std::fs::write(dir.path().join("f"), b"").unwrap();
    assert!(!missing_or_empty(dir.path()));
}

#[test]
fn environment_for_everything_init_starts() {
    assert_eq!(
        env_overrides(false),
        [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ),
            ("HOME", "/root"),
            ("TERM", "linux"),
        ]
    );
    assert!(env_overrides(true).iter().all(|(k, _)| *k != "TERM"));
}

#[test]
fn wait_for_sees_a_late_device_and_times_out_on_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("vdb");
    let path = late.clone();
    let maker = std::thread::spawn(move || {
        sleep(Duration::from_millis(150));
        std::fs::write(path, b"").unwrap();
    });
    let poll = Duration::from_millis(10);
    assert!(wait_for(&late, Duration::from_secs(5), poll));
    maker.join().unwrap();
    let start = Instant::now();
    assert!(!wait_for(
        &dir.path().join("never"),
        Duration::from_millis(100),
        poll
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn restart_policy_counts_rapid_failures() {
    let sshd = Restart {
        delay: Duration::from_secs(1),
        rapid: Duration::from_secs(10),
        max_rapid_failures: Some(5),
    };
    let now = Instant::now();
    let quick = Duration::from_millis(30);
    let mut failures = 0;
    for n in 1..5 {
        assert_eq!(
            sshd.next_start(quick, &mut failures, now),
            Some(now + Duration::from_secs(1))
        );
        assert_eq!(failures, n);
    }
    // A long run resets the count.
    assert!(sshd
        .next_start(Duration::from_secs(60), &mut failures, now)
        .is_some());
    assert_eq!(failures, 0);
    for _ in 0..4 {
        assert!(sshd.next_start(quick, &mut failures, now).is_some());
    }
    assert_eq!(sshd.next_start(quick, &mut failures, now), None, "fifth");

    let agent = Restart {
        max_rapid_failures: None,
        ..sshd
    };
    let mut failures = 0;
    for _ in 0..100 {
        assert!(agent.next_start(quick, &mut failures, now).is_some());
    }
}

#[test]
fn only_the_agent_child_sees_the_child_flag() {
    // The test process is neither PID 1 nor started by init.
    assert!(!is_pid1());
    assert_eq!(std::env::var_os(CHILD_ENV).is_some(), is_child());
}

/// Set for the helper process `supervisor_reaps_orphans_and_restarts`
/// starts.
const HELPER_ENV: &str = "BANGER_AGENT_TEST_SUPERVISOR_HELPER";

/// Runs the supervisor in a process of its own (the test binary again),
/// made a child subreaper: reaping with waitpid(-1) in this process would
/// steal other tests' children.
#[test]
fn supervisor_reaps_orphans_and_restarts() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "init::tests::supervisor_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helper failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("supervisor helper done"),
        "helper did not run\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Exits are logged with their status.
    assert!(
        stderr.contains("init: flaky (pid ") && stderr.contains("exited with status 0; restarting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("exited with status 3; giving up after 5 quick exits"),
        "{stderr}"
    );
    assert!(stderr.contains("init: cannot start missing:"), "{stderr}");
    // Services do not inherit init's blocked signals.
    assert!(
        stderr.contains("init: unmasked (pid ")
            && stderr.contains("exited with status 0; giving up after 1 quick exits"),
        "{stderr}"
    );
}

#[test]
#[ignore = "the helper process of supervisor_reaps_orphans_and_restarts"]
fn supervisor_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        println!("not started by supervisor_reaps_orphans_and_restarts; nothing to do");
        return;
    }
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let service = |name, program: &str, args: &[&str], delay_ms, max| Service {
        name,
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        restart: Restart {
            delay: Duration::from_millis(delay_ms),
            rapid: Duration::from_secs(10),
            max_rapid_failures: max,
        },
    };
    let mut sup = Supervisor::new(
        vec![
            // Exits at once, orphaning a sleep that this process inherits.
            service("flaky", "/bin/sh", &["-c", "sleep 0.2 & exit 0"], 100, None),
            service("broken", "/bin/sh", &["-c", "exit 3"], 10, Some(5)),
            service(
                "missing",
                "/nonexistent/banger-agent-test",
                &[],
                10,
                Some(2),
            ),
            // Exits 0 only if it started with no signal blocked.
            service(
                "unmasked",
                // Not through sh: dash clears the mask itself.
                "/bin/grep",
                &["-Eq", "^SigBlk:[[:space:]]+0+$", "/proc/self/status"],
                10,
                Some(1),
            ),
        ],
        // As PID 1 does (for this thread only, here).
        block_init_signals(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(sup.starts("flaky") >= 3
        && sup.orphans_reaped >= 2
        && sup.gave_up("broken")
        && sup.gave_up("missing")
        && sup.gave_up("unmasked"))
    {
        assert!(
            Instant::now() < deadline,
            "flaky started {} times, {} orphans reaped, broken gave up: {}, missing gave up: {}",
            sup.starts("flaky"),
            sup.orphans_reaped,
            sup.gave_up("broken"),
            sup.gave_up("missing"),
        );
        sup.step(Duration::from_millis(20));
    }
    assert_eq!(sup.starts("broken"), 5);
    assert_eq!(sup.starts("missing"), 2);
    assert!(!sup.gave_up("flaky"));

    // Every zombie child (service or orphan) is gone after the next step.
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let zombies = zombie_children();
        sup.step(Duration::ZERO);
        let left: Vec<i32> = zombie_children()
            .into_iter()
            .filter(|pid| zombies.contains(pid))
            .collect();
        assert!(left.is_empty(), "not reaped: {left:?}");
        sleep(Duration::from_millis(20));
    }
    println!("supervisor helper done");
}

/// Pids of this process's children that are zombies.
fn zombie_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            zombies.push(pid);
        }
    }
    zombies
}
