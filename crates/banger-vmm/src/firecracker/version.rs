//! Which Firecracker is installed, whether banger supports it, and what it
//! can do.
//!
//! banger supports Firecracker from [`MIN_SUPPORTED`] on and is tested
//! against [`KNOWN_TESTED`]; anything newer probably works (its API is
//! checked against the 1.16.1 spec too) but deserves a warning.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A release number. Pre-release and build suffixes (`-dev`) are dropped:
/// banger only ever compares on the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SemVer {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl SemVer {
    pub const fn new(major: u32, minor: u32, patch: u32) -> SemVer {
        SemVer {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest Firecracker banger supports.
pub const MIN_SUPPORTED: SemVer = SemVer::new(1, 5, 0);
/// The newest Firecracker banger is tested against.
pub const KNOWN_TESTED: SemVer = SemVer::new(1, 14, 1);

/// How long `firecracker --version` may take.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("no \"Firecracker vX.Y.Z\" line in the version output: {output:?}")]
    Unrecognized { output: String },
    #[error("cannot run {} --version: {source}", .bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} --version did not finish within {timeout:?}", .bin.display())]
    Timeout { bin: PathBuf, timeout: Duration },
    #[error("{} --version failed ({status}): {stderr}", .bin.display())]
    Failed {
        bin: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// How banger stands with a Firecracker version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Older than [`MIN_SUPPORTED`]: refuse.
    TooOld,
    /// In `[MIN_SUPPORTED, KNOWN_TESTED]`: fine.
    Tested,
    /// Newer than [`KNOWN_TESTED`]: use, with a warning.
    Newer,
}

pub fn classify(v: SemVer) -> Support {
    if v < MIN_SUPPORTED {
        Support::TooOld
    } else if v <= KNOWN_TESTED {
        Support::Tested
    } else {
        Support::Newer
    }
}

/// Version-dependent behaviour banger has to adapt to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Firecracker builds ACPI tables on x86_64 (since 1.8.0) and the guest
    /// finds its virtio-mmio devices through them. Before that Firecracker
    /// appends `virtio_mmio.device=...` to the kernel command line itself,
    /// so the guest kernel needs `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`.
    pub acpi: bool,
    /// `PUT /serial` sets where the guest console goes. Both specs banger
    /// checks (1.14.1, 1.16.1) have it; banger uses it from the tested
    /// 1.14.0 on (an assumption for 1.14.0 itself) and runs older releases
    /// without a console log.
    pub serial_config: bool,
    /// Firecracker boots a compressed bzImage directly rather than only an
    /// uncompressed ELF vmlinux. ASSUMPTION: taken as 1.16.0 and later,
    /// after upstream firecracker#6037 (July 2026) added bzImage direct
    /// boot; it has not been verified against a running 1.16 here. Until
    /// then banger extracts the ELF itself (see [`super::kernel`]).
    pub boots_bzimage: bool,
    /// `PUT /snapshot/load` takes `network_overrides`, so a VM restored from
    /// a snapshot can use its own tap instead of the one stored in the
    /// snapshot. Both specs banger checks (1.14.1, 1.16.1) have it; older
    /// releases are taken not to (upstream added it a little earlier, but no
    /// spec of those is checked here), which only costs them warm starts.
    pub snapshot_network_overrides: bool,
    /// `PUT /snapshot/load` takes `vsock_override`, so a restored VM can bind
    /// its own vsock socket instead of the path stored in the snapshot. The
    /// 1.16.1 spec has it, the 1.14.1 spec does not; taken as 1.16.0 and
    /// later (1.15 is not checked here, so it is treated as lacking it).
    pub snapshot_vsock_override: bool,
}

pub fn features(v: SemVer) -> Features {
    Features {
        acpi: v >= SemVer::new(1, 8, 0),
        serial_config: v >= SemVer::new(1, 14, 0),
        boots_bzimage: v >= SemVer::new(1, 16, 0),
        snapshot_network_overrides: v >= SemVer::new(1, 14, 0),
        snapshot_vsock_override: v >= SemVer::new(1, 16, 0),
    }
}

/// Parses `firecracker --version`, which prints `Firecracker v1.14.1` and
/// possibly more lines after it (a log line about exiting, for instance).
pub fn parse_version_output(output: &str) -> Result<SemVer, VersionError> {
    let unrecognized = || VersionError::Unrecognized {
        output: output.trim().to_string(),
    };
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("Firecracker v") else {
            continue;
        };
        let word = rest.split_whitespace().next().unwrap_or("");
        // `1.15.0-dev` and `1.15.0+build` compare as 1.15.0.
        let numbers = word.split(['-', '+']).next().unwrap_or("");
        return parse_triple(numbers).ok_or_else(unrecognized);
    }
    Err(unrecognized())
}

fn parse_triple(s: &str) -> Option<SemVer> {
    let mut parts = s.split('.');
    let mut num = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = SemVer::new(num()?, num()?, num()?);
    parts.next().is_none().then_some(v)
}

/// Runs `<bin> --version` (no shell) and parses what it prints.
pub fn query_version(bin: &Path) -> Result<SemVer, VersionError> {
    query_version_timeout(bin, VERSION_TIMEOUT)
}

/// [`query_version`] with an explicit limit; the process is killed past it.
pub fn query_version_timeout(bin: &Path, timeout: Duration) -> Result<SemVer, VersionError> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VersionError::Spawn {
            bin: bin.to_path_buf(),
            source,
        })?;
    // The output is a line or two, far below a pipe's buffer, so waiting
    // before reading cannot deadlock.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VersionError::Timeout {
                    bin: bin.to_path_buf(),
                    timeout,
                });
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VersionError::Spawn {
                    bin: bin.to_path_buf(),
                    source,
                });
            }
        }
    };
    let stdout = drain(child.stdout.take());
    if !status.success() {
        return Err(VersionError::Failed {
            bin: bin.to_path_buf(),
            status,
            stderr: drain(child.stderr.take()).trim().to_string(),
        });
    }
    parse_version_output(&stdout)
}

fn drain(pipe: Option<impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_output() {
        let ok = [
            ("Firecracker v1.14.1\n", (1, 14, 1)),
            ("Firecracker v1.5.0", (1, 5, 0)),
            ("Firecracker v1.15.0-dev\n", (1, 15, 0)),
            ("Firecracker v1.16.1+abc\n", (1, 16, 1)),
            (
                "Firecracker v1.14.1\n\n2026-01-01T00:00:00.000000000 [anonymous-instance:main] \
                 Firecracker exiting successfully. exit_code=0\n",
                (1, 14, 1),
            ),
            ("  Firecracker v1.10.0  \n", (1, 10, 0)),
            ("some banner\nFirecracker v1.7.2\n", (1, 7, 2)),
        ];
        for (out, (a, b, c)) in ok {
            assert_eq!(
                parse_version_output(out).unwrap(),
                SemVer::new(a, b, c),
                "{out:?}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for out in [
            "",
            "garbage",
            "Firecracker",
            "Firecracker v",
            "Firecracker 1.14.1",
            "Firecracker v1.14",
            "Firecracker v1.14.1.2",
            "Firecracker vx.y.z",
            "Firecracker v1..1",
            "Firecracker v-1.2.3",
            "Firecracker v1.2.99999999999",
            "Jailer v1.14.1",
        ] {
            let err = parse_version_output(out).unwrap_err();
            assert!(matches!(err, VersionError::Unrecognized { .. }), "{out:?}");
        }
    }

    #[test]
    fn orders_on_numbers() {
        assert!(SemVer::new(1, 10, 0) > SemVer::new(1, 9, 9));
        assert!(SemVer::new(2, 0, 0) > SemVer::new(1, 99, 99));
        assert!(SemVer::new(1, 14, 1) > SemVer::new(1, 14, 0));
        let dev = parse_version_output("Firecracker v1.15.0-dev").unwrap();
        assert_eq!(dev, SemVer::new(1, 15, 0));
        assert_eq!(SemVer::new(1, 14, 1).to_string(), "1.14.1");
    }

    #[test]
    fn classifies() {
        let table = [
            ((0, 25, 0), Support::TooOld),
            ((1, 4, 1), Support::TooOld),
            ((1, 5, 0), Support::Tested),
            ((1, 8, 0), Support::Tested),
            ((1, 14, 0), Support::Tested),
            ((1, 14, 1), Support::Tested),
            ((1, 14, 2), Support::Newer),
            ((1, 16, 1), Support::Newer),
            ((2, 0, 0), Support::Newer),
        ];
        for ((a, b, c), want) in table {
            assert_eq!(classify(SemVer::new(a, b, c)), want, "{a}.{b}.{c}");
        }
    }

    #[test]
    fn features_by_version() {
        // (version, acpi, serial_config, boots_bzimage, network overrides,
        // vsock override)
        let table = [
            ((1, 5, 0), false, false, false, false, false),
            ((1, 7, 9), false, false, false, false, false),
            ((1, 8, 0), true, false, false, false, false),
            ((1, 13, 9), true, false, false, false, false),
            ((1, 14, 0), true, true, false, true, false),
            ((1, 14, 1), true, true, false, true, false),
            ((1, 15, 9), true, true, false, true, false),
            ((1, 16, 0), true, true, true, true, true),
            ((1, 16, 1), true, true, true, true, true),
            ((2, 0, 0), true, true, true, true, true),
        ];
        for ((a, b, c), acpi, serial_config, boots_bzimage, net, vsock) in table {
            assert_eq!(
                features(SemVer::new(a, b, c)),
                Features {
                    acpi,
                    serial_config,
                    boots_bzimage,
                    snapshot_network_overrides: net,
                    snapshot_vsock_override: vsock,
                },
                "{a}.{b}.{c}"
            );
        }
    }

    /// A fake `firecracker` binary: a shell script in a temp dir. Running a
    /// file just written races with other test threads forking while it was
    /// open for writing (ETXTBSY), hence the retries.
    fn fake_bin(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("firecracker");
        std::fs::write(&bin, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    fn query(bin: &Path, timeout: Duration) -> Result<SemVer, VersionError> {
        for _ in 0..50 {
            match query_version_timeout(bin, timeout) {
                Err(VersionError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
        panic!("{} stayed busy", bin.display());
    }

    #[test]
    fn queries_a_real_process() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(
            dir.path(),
            "[ \"$1\" = --version ] || exit 3\n\
             echo 'Firecracker v1.14.1'\necho\necho 'Firecracker exiting successfully. exit_code=0'",
        );
        assert_eq!(query(&bin, VERSION_TIMEOUT).unwrap(), KNOWN_TESTED);
    }

    #[test]
    fn reports_failures_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(dir.path(), "echo 'no such flag' >&2\nexit 1");
        let err = query(&bin, VERSION_TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, VersionError::Failed { stderr, .. } if stderr == "no such flag"),
            "{err}"
        );

        let missing = dir.path().join("missing");
        let err = query_version(&missing).unwrap_err();
        assert!(matches!(err, VersionError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn kills_a_hung_process() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(dir.path(), "exec sleep 30");
        let started = Instant::now();
        let err = query(&bin, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, VersionError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
