//! Installs into a tempdir root and compares the exact file set; runs
//! systemd's own offline tools against the result.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use super::*;
use crate::install_meta::BuildInfo;
use crate::swap::BACKUP_SUFFIX;
use crate::units::tests::{owner, vmm};
use crate::units::UnitParams;

/// The effective uid/gid of this process (a file we create is owned by it).
fn whoami() -> (u32, u32) {
    let f = tempfile::NamedTempFile::new().unwrap();
    let m = f.as_file().metadata().unwrap();
    (m.uid(), m.gid())
}

/// The owner's ids for tests: a foreign uid when root (so chown is really
/// exercised), else our own (the only one we may chown to).
fn owner_ids() -> (u32, u32) {
    match whoami() {
        (0, _) => (1234, 1234),
        ids => ids,
    }
}

struct Host {
    root: tempfile::TempDir,
    plan: InstallPlan,
    sources: tempfile::TempDir,
}

impl Host {
    /// A root with the host's own dirs (never created or removed by banger).
    fn new() -> Host {
        let root = tempfile::tempdir().unwrap();
        for d in [
            "usr/local/bin",
            "usr/local/lib",
            "etc/systemd/system",
            "etc/tmpfiles.d",
            "var/lib",
            "var/cache",
            "run",
        ] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let plan = InstallPlan::new(root.path());
        let sources = tempfile::tempdir().unwrap();
        Host {
            root,
            plan,
            sources,
        }
    }

    /// Stub executables standing in for a build, tagged with `version`.
    fn build(&self, version: &str) -> Vec<(Binary, PathBuf)> {
        Binary::ALL
            .iter()
            .map(|&b| {
                let p = self
                    .sources
                    .path()
                    .join(format!("{}-{version}", b.file_name()));
                fs::write(
                    &p,
                    format!("#!/bin/sh\n# {} {version}\nexit 0\n", b.file_name()),
                )
                .unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
                (b, p)
            })
            .collect()
    }

    fn params(&self) -> UnitParams {
        let (uid, gid) = owner_ids();
        let mut o = owner(uid);
        o.gid = gid;
        UnitParams::new(o, vmm()).unwrap()
    }

    /// Swaps in `build` and the units; the swap is left for the caller.
    fn swap_in(&self, build: &[(Binary, PathBuf)]) -> (Swap, Result<(), PlanError>) {
        let mut swap = Swap::new(BACKUP_SUFFIX).unwrap();
        let sources: Vec<(Binary, &Path)> = build.iter().map(|(b, p)| (*b, p.as_path())).collect();
        let res = self
            .plan
            .install_binaries(&mut swap, &sources)
            .and_then(|()| self.plan.install_units(&mut swap, &self.params()));
        (swap, res)
    }

    /// A whole install of `version`.
    fn install(&self, version: &str) {
        let (uid, gid) = owner_ids();
        self.plan.create_dirs(uid, gid).unwrap();
        let build = self.build(version);
        let (swap, res) = self.swap_in(&build);
        res.unwrap();
        swap.cleanup_backups().unwrap();
        let meta = InstallMeta::new(
            self.params().owner(),
            &BuildInfo {
                version: version.into(),
                commit: "abc".into(),
                built_at: "2026-01-01T00:00:00Z".into(),
            },
        );
        self.plan.write_meta(&meta).unwrap();
    }

    /// Every path under the root, relative, dirs ending in `/`.
    fn snapshot(&self) -> BTreeSet<String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let rel = e
                    .path()
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    out.insert(format!("{rel}/"));
                    walk(base, &e.path(), out);
                } else {
                    out.insert(rel);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(self.root.path())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn read(&self, abs: &str) -> String {
        fs::read_to_string(self.plan.path(abs)).unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn install_creates_exactly_the_planned_paths() {
    let host = Host::new();
    let before = host.snapshot();
    assert_eq!(host.plan.missing().len(), 8 + 5);
    host.install("1.0.0");

    let mut expected = before.clone();
    for f in host.plan.files() {
        expected.insert(host.rel(&f.path));
        assert_eq!(mode(&f.path), f.mode, "{}", f.path.display());
    }
    for d in host
        .plan
        .dirs()
        .into_iter()
        .filter(|d| d.created_by_install)
    {
        expected.insert(format!("{}/", host.rel(&d.path)));
        assert_eq!(mode(&d.path), d.mode, "{}", d.path.display());
        if d.owner == DirOwner::Owner {
            let m = fs::metadata(&d.path).unwrap();
            assert_eq!((m.uid(), m.gid()), owner_ids(), "{}", d.path.display());
        }
    }
    assert_eq!(host.snapshot(), expected);
    assert!(host.plan.missing().is_empty());
    assert!(host.read(system::BANGERD_BIN).contains("bangerd 1.0.0"));
    assert!(host
        .read(system::HELPER_BIN)
        .contains("banger-helper 1.0.0"));
    // Sources are only read.
    assert!(host.sources.path().join("bangerd-1.0.0").exists());
    let meta = host.plan.read_meta().unwrap();
    assert_eq!(
        (meta.owner_uid, meta.version.as_str()),
        (owner_ids().0, "1.0.0")
    );
    // The units on disk pass the doctor's check.
    let helper =
        crate::hardening::read_unit_with_dropins(host.root.path(), system::HELPER_UNIT).unwrap();
    assert!(
        crate::hardening::missing_directives(&helper, crate::hardening::HELPER_REQUIRED).is_empty()
    );
}

#[test]
fn update_keeps_previous_until_cleanup_and_rolls_back() {
    let host = Host::new();
    host.install("1.0.0");
    let installed = host.snapshot();

    let v2 = host.build("2.0.0");
    let (mut swap, res) = host.swap_in(&v2);
    res.unwrap();
    assert_eq!(swap.replaced().len(), 7);
    assert!(host.read(system::BANGER_BIN).contains("2.0.0"));
    let prev = crate::swap::backup_path(&host.plan.binary_path(Binary::Banger), BACKUP_SUFFIX);
    assert!(fs::read_to_string(&prev).unwrap().contains("1.0.0"));

    swap.rollback().unwrap();
    assert!(host.read(system::BANGER_BIN).contains("1.0.0"));
    assert_eq!(host.snapshot(), installed);

    let (swap, res) = host.swap_in(&v2);
    res.unwrap();
    swap.cleanup_backups().unwrap();
    crate::install_meta::update_build_info(
        &host.plan.install_file(),
        &BuildInfo {
            version: "2.0.0".into(),
            commit: "def".into(),
            built_at: "2026-02-01T00:00:00Z".into(),
        },
    )
    .unwrap();
    assert!(host.read(system::AGENT_BIN).contains("2.0.0"));
    assert_eq!(host.snapshot(), installed);
    assert_eq!(host.plan.read_meta().unwrap().version, "2.0.0");
}

#[test]
fn failed_staging_and_failed_swaps_leave_the_host_as_it_was() {
    let host = Host::new();
    host.install("1.0.0");
    let installed = host.snapshot();

    // A source that does not exist: nothing is staged or replaced.
    let mut v2 = host.build("2.0.0");
    v2[2].1 = host.sources.path().join("no-such-helper");
    let (swap, res) = host.swap_in(&v2);
    let e = res.unwrap_err();
    assert!(e.to_string().contains("no-such-helper"), "{e}");
    assert!(swap.replaced().is_empty());
    assert_eq!(host.snapshot(), installed);

    // The third target cannot be replaced: two are, then rolled back.
    let v2 = host.build("2.0.0");
    let helper = host.plan.binary_path(Binary::Helper);
    fs::remove_file(&helper).unwrap();
    fs::create_dir(&helper).unwrap();
    let installed = host.snapshot();
    let (mut swap, res) = host.swap_in(&v2);
    let e = res.unwrap_err();
    assert!(
        matches!(e, PlanError::Swap(SwapError::TargetIsDir(_))),
        "{e}"
    );
    assert_eq!(swap.replaced().len(), 2);
    assert!(host.read(system::BANGER_BIN).contains("2.0.0"));
    swap.rollback().unwrap();
    assert_eq!(host.snapshot(), installed);
    assert!(host.read(system::BANGER_BIN).contains("1.0.0"));
}

#[test]
fn duplicate_binaries_are_refused() {
    let host = Host::new();
    let b = host.build("1");
    let mut swap = Swap::new(BACKUP_SUFFIX).unwrap();
    let e = host
        .plan
        .install_binaries(
            &mut swap,
            &[(Binary::Agent, &b[3].1), (Binary::Agent, &b[3].1)],
        )
        .unwrap_err();
    assert!(
        matches!(e, PlanError::DuplicateBinary("banger-agent")),
        "{e}"
    );
}

/// Leaves what a running install accumulates: data, settings, runtime
/// files, enable links, a stale backup, a staged leftover, and files that
/// are not banger's.
fn lived_in(host: &Host) {
    let p = |abs: &str| host.plan.path(abs);
    fs::create_dir_all(p(system::STATE_DIR).join("images/debian")).unwrap();
    fs::write(p(system::STATE_DIR).join("state.db"), "db").unwrap();
    fs::write(p(system::STATE_DIR).join("images/debian/rootfs.ext4"), "fs").unwrap();
    fs::write(p(system::CACHE_DIR).join("blob"), "b").unwrap();
    fs::write(p(system::CONFIG_FILE), "vmm = \"qemu\"\n").unwrap();
    fs::create_dir_all(p(system::RUNTIME_DIR).join("vms/x")).unwrap();
    fs::write(p(system::RUNTIME_DIR).join("vms/x/qemu.pid"), "1").unwrap();
    fs::create_dir_all(p(system::HELPER_RUNTIME_DIR)).unwrap();
    fs::write(p(system::HELPER_SOCKET), "").unwrap();
    let wants = p(system::UNIT_DIR).join(WANTS_DIR);
    fs::create_dir_all(&wants).unwrap();
    for unit in [system::HELPER_UNIT, system::DAEMON_UNIT] {
        std::os::unix::fs::symlink(format!("{}/{unit}", system::UNIT_DIR), wants.join(unit))
            .unwrap();
    }
    fs::write(wants.join("ssh.service"), "").unwrap();
    fs::write(p(system::UNIT_DIR).join("other.service"), "[Service]\n").unwrap();
    fs::write(p("/usr/local/bin/other-tool"), "").unwrap();
    fs::write(p("/usr/local/bin/banger.previous"), "stale").unwrap();
    fs::write(p("/usr/local/bin/.bangerd.Ab12Cd.tmp"), "half").unwrap();
}

#[test]
fn uninstall_keeps_data_and_settings_by_default() {
    let host = Host::new();
    let before = host.snapshot();
    host.install("1.0.0");
    lived_in(&host);
    let report = host.plan.uninstall(UninstallOptions::default()).unwrap();

    let mut expected = before;
    expected.extend(set(&[
        "etc/banger/",
        "etc/banger/config.toml",
        "etc/systemd/system/other.service",
        "etc/systemd/system/multi-user.target.wants/",
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "usr/local/bin/other-tool",
        "var/lib/banger/",
        "var/lib/banger/state.db",
        "var/lib/banger/images/",
        "var/lib/banger/images/debian/",
        "var/lib/banger/images/debian/rootfs.ext4",
        "var/cache/banger/",
        "var/cache/banger/blob",
    ]));
    assert_eq!(host.snapshot(), expected);
    assert_eq!(report.removed[0], host.plan.install_file());
    let kept: Vec<String> = report.kept.iter().map(|k| host.rel(&k.path)).collect();
    assert_eq!(
        kept,
        [
            "etc/banger/config.toml",
            "etc/banger",
            "var/lib/banger",
            "var/cache/banger"
        ]
    );
    assert!(report
        .removed
        .contains(&host.plan.path("/usr/local/bin/banger.previous")));
    assert!(report
        .removed
        .contains(&host.plan.path("/usr/local/bin/.bangerd.Ab12Cd.tmp")));
    assert!(report
        .removed
        .contains(&host.plan.path(system::HELPER_RUNTIME_DIR)));

    // Again: nothing left to remove, the same things kept.
    let again = host.plan.uninstall(UninstallOptions::default()).unwrap();
    assert!(again.removed.is_empty(), "{:?}", again.removed);
    assert_eq!(again.kept.len(), 4);
    assert_eq!(host.snapshot(), expected);
}

#[test]
fn purge_removes_data_and_settings_too() {
    let host = Host::new();
    let before = host.snapshot();
    host.install("1.0.0");
    lived_in(&host);
    // A file that is not banger's keeps the lib dir.
    fs::write(host.plan.path(system::LIB_DIR).join("notes"), "").unwrap();
    let report = host
        .plan
        .uninstall(UninstallOptions { purge: true })
        .unwrap();
    let mut expected = before;
    expected.extend(set(&[
        "etc/systemd/system/other.service",
        "etc/systemd/system/multi-user.target.wants/",
        "etc/systemd/system/multi-user.target.wants/ssh.service",
        "usr/local/bin/other-tool",
        "usr/local/lib/banger/",
        "usr/local/lib/banger/notes",
    ]));
    assert_eq!(host.snapshot(), expected);
    assert_eq!(
        report.kept,
        [Kept {
            path: host.plan.path(system::LIB_DIR),
            reason: "not empty: holds files banger did not install",
        }]
    );
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn purge_never_removes_through_a_mount() {
    if whoami().0 != 0 {
        eprintln!("skipping: bind mounts need root");
        return;
    }
    let host = Host::new();
    host.install("1.0.0");
    // What a Firecracker jail looks like: the host's /lib bound inside.
    let host_lib = tempfile::tempdir().unwrap();
    fs::write(host_lib.path().join("libc.so.6"), "precious").unwrap();
    let jail_lib = host
        .plan
        .path(system::STATE_DIR)
        .join("jailer/firecracker/x/root/lib");
    fs::create_dir_all(&jail_lib).unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(host_lib.path())
        .arg(&jail_lib)
        .status()
        .unwrap();
    if !status.success() {
        eprintln!("skipping: mount --bind failed here");
        return;
    }
    let guard = Mount(jail_lib.clone());
    let e = host
        .plan
        .uninstall(UninstallOptions { purge: true })
        .unwrap_err();
    assert!(
        matches!(&e, PlanError::Mounted { mount, .. } if *mount == fs::canonicalize(&jail_lib).unwrap()),
        "{e}"
    );
    assert!(e.to_string().contains("stop the VMs first"), "{e}");
    assert_eq!(
        fs::read_to_string(host_lib.path().join("libc.so.6")).unwrap(),
        "precious"
    );
    drop(guard);
    host.plan
        .uninstall(UninstallOptions { purge: true })
        .unwrap();
    assert!(!host.plan.path(system::STATE_DIR).exists());
    assert!(host_lib.path().join("libc.so.6").exists());
}

/// An executable named `name` on PATH or in the usual system dirs.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// `systemd-analyze verify --root=<root> <units>`: (success, stderr).
fn verify(tool: &Path, root: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("--man=no")
        .args(units)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}

/// How this works offline, without systemd running (PID 1 here is not
/// systemd, and nothing may start it): `systemd-analyze verify` loads units
/// in a private manager and checks them, and with `--root` it takes unit
/// files, `ExecStart=` binaries and the units they depend on from that
/// root. So the test installs into a tempdir root for real (the binaries
/// are executable stubs at the exact `ExecStart=` paths) and adds stub
/// targets (`sysinit`, `basic`, `multi-user`, `network-online`, `shutdown`:
/// the default dependencies, `After=`, `WantedBy=`), and verify needs
/// nothing from the host. Verify exits 0 on an unknown key or an
/// unparsable value ("..., ignoring."), so the test also fails on any
/// output at all; the negative cases prove both checks bite.
#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(tool) = find_tool("systemd-analyze") else {
        eprintln!(
            "skipping: systemd-analyze not found on PATH or in /usr/bin, /bin \
             (Debian package `systemd`; scripts/install-deps installs it)"
        );
        return;
    };
    let host = Host::new();
    host.install("1.0.0");
    let lib = host.plan.path("/usr/lib/systemd/system");
    fs::create_dir_all(&lib).unwrap();
    for target in [
        "sysinit.target",
        "basic.target",
        "multi-user.target",
        "network-online.target",
        "shutdown.target",
    ] {
        fs::write(lib.join(target), "[Unit]\nDescription=stub for verify\n").unwrap();
    }
    let units = [system::HELPER_UNIT, system::DAEMON_UNIT];
    let (ok, out) = verify(&tool, host.root.path(), &units);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );

    // An unknown key: exit 0, but a warning we must catch.
    let daemon = host.plan.daemon_unit_path();
    let good = fs::read_to_string(&daemon).unwrap();
    fs::write(
        &daemon,
        good.replace("UMask=0077", "UMask=0077\nNoSuchKey=1"),
    )
    .unwrap();
    let (_, out) = verify(&tool, host.root.path(), &units);
    assert!(out.contains("NoSuchKey"), "{out}");
    fs::write(
        &daemon,
        good.replace("ProtectSystem=strict", "ProtectSystem=bogus"),
    )
    .unwrap();
    let (_, out) = verify(&tool, host.root.path(), &units);
    assert!(out.contains("bogus"), "{out}");
    fs::write(&daemon, &good).unwrap();

    // A missing ExecStart binary fails outright.
    fs::remove_file(host.plan.binary_path(Binary::Helper)).unwrap();
    let (ok, out) = verify(&tool, host.root.path(), &units);
    assert!(!ok && out.contains(system::HELPER_BIN), "{out}");
}

/// `systemd-tmpfiles --root` applies the rendered line to a tempdir root,
/// resolving the owner from that root's /etc/passwd and /etc/group.
#[test]
fn systemd_tmpfiles_creates_the_runtime_dir_for_the_owner() {
    let Some(tool) = find_tool("systemd-tmpfiles") else {
        eprintln!("skipping: systemd-tmpfiles not found (Debian package `systemd`)");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let plan = InstallPlan::new(root.path());
    let (uid, gid) = owner_ids();
    let mut o = owner(uid);
    o.gid = gid;
    let params = UnitParams::new(o, vmm()).unwrap();
    fs::create_dir_all(root.path().join("etc/tmpfiles.d")).unwrap();
    fs::write(
        root.path().join("etc/passwd"),
        format!("alice:x:{uid}:{gid}::/home/alice:/bin/sh\n"),
    )
    .unwrap();
    fs::write(root.path().join("etc/group"), format!("alice:x:{gid}:\n")).unwrap();
    let conf = plan.tmpfiles_path();
    fs::write(&conf, units::render_tmpfiles(&params)).unwrap();
    // The config path is given as seen from here (not from inside root).
    let out = Command::new(&tool)
        .arg(format!("--root={}", root.path().display()))
        .arg("--create")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-tmpfiles: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = plan.path(system::RUNTIME_DIR);
    let m = fs::symlink_metadata(&run).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
    assert_eq!((m.uid(), m.gid()), (uid, gid));
}
