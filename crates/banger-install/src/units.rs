//! The systemd units of a system install and its tmpfiles.d line.
//!
//! Every value put into a unit is validated first ([`UnitParams::new`]):
//! unit files have their own quoting, `%` starts a specifier, `$` expands
//! the environment in `ExecStart=` and `\` is an escape, so anything outside
//! a plain character set is refused rather than escaped. With valid
//! [`UnitParams`] the renderers cannot fail.
//!
//! Both services keep running VMMs alive across `systemctl restart`:
//! QEMU/Firecracker processes the helper spawned stay in its cgroup, and
//! `KillMode=process` + `SendSIGKILL=no` make stop/restart signal only the
//! main process. The daemon only `Wants=` the helper (no `Requires=`), so
//! restarting the helper never restarts the daemon.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use banger_paths::system;

/// The user `bangerd` runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Login name (`[a-z_][a-z0-9_-]*`, at most 32 characters, not `root`).
    pub user: String,
    /// Not 0.
    pub uid: u32,
    /// The owner's primary group; not 0.
    pub gid: u32,
    /// `HOME` for the daemon (its SSH material, repos it reads).
    pub home: PathBuf,
}

/// The VMM binaries the helper launches. The caller fills these in from
/// `banger_vmm::jailer::DEFAULT_FIRECRACKER_BIN`/`DEFAULT_JAILER_BIN` and
/// QEMU (`banger_vmm::qemu::DEFAULT_QEMU_BIN`) resolved on `PATH` to an
/// absolute path, unless the user chose others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmBins {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub qemu: PathBuf,
}

/// Validated values for the units; see [`UnitParams::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitParams {
    owner: Owner,
    vmm: VmmBins,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("refusing owner user name {0:?}: it must match [a-z_][a-z0-9_-]* and be at most 32 characters")]
    BadUserName(String),
    #[error("refusing to run bangerd as root (user {user:?}, uid {uid}, gid {gid}): the owner must be an ordinary user")]
    RootOwner { user: String, uid: u32, gid: u32 },
    #[error("refusing {what} {}: {why}", path.display())]
    BadPath {
        what: &'static str,
        path: PathBuf,
        why: &'static str,
    },
}

/// Longest user name `useradd` accepts.
pub const MAX_USER_NAME: usize = 32;

/// `[a-z_][a-z0-9_-]*`, at most [`MAX_USER_NAME`] characters.
pub fn valid_user_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b'a'..=b'z' | b'_') => {}
        _ => return false,
    }
    name.len() <= MAX_USER_NAME
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// Checks a path that goes into a unit file: UTF-8, absolute, normalized
/// (no `.`, `..`, `//` or trailing `/`), and only `A-Z a-z 0-9 / . _ - + @ , :`.
/// That leaves out whitespace, control characters, quotes, `\`, `$`, `;`
/// and `%`, all of which mean something to systemd.
pub fn check_unit_path(what: &'static str, path: &Path) -> Result<(), UnitError> {
    let bad = |why| {
        Err(UnitError::BadPath {
            what,
            path: path.to_path_buf(),
            why,
        })
    };
    let Some(s) = path.to_str() else {
        return bad("not valid UTF-8");
    };
    if !path.is_absolute() {
        return bad("not an absolute path");
    }
    if let Some(c) = s.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ',' | ':'))
    }) {
        return Err(UnitError::BadPath {
            what,
            path: path.to_path_buf(),
            why: match c {
                '%' => "'%' would be a systemd specifier",
                '$' => "'$' would expand a variable",
                '"' | '\'' => "quotes are not allowed",
                '\\' => "'\\' would be an escape",
                c if c.is_whitespace() => "whitespace is not allowed",
                c if c.is_control() => "control characters are not allowed",
                _ => "only A-Z a-z 0-9 / . _ - + @ , : are allowed",
            },
        });
    }
    // Path's own comparison ignores `.` and `//`; check the text.
    if s != "/"
        && s.split('/')
            .skip(1)
            .any(|seg| matches!(seg, "" | "." | ".."))
    {
        return bad("not a normalized path (no '.', '..', '//' or trailing '/')");
    }
    Ok(())
}

impl UnitParams {
    /// Validates everything that goes into the units.
    pub fn new(owner: Owner, vmm: VmmBins) -> Result<UnitParams, UnitError> {
        if !valid_user_name(&owner.user) {
            return Err(UnitError::BadUserName(owner.user));
        }
        if owner.user == "root" || owner.uid == 0 || owner.gid == 0 {
            return Err(UnitError::RootOwner {
                user: owner.user,
                uid: owner.uid,
                gid: owner.gid,
            });
        }
        check_unit_path("owner home", &owner.home)?;
        for (what, p) in [
            ("firecracker binary", &vmm.firecracker),
            ("jailer binary", &vmm.jailer),
            ("qemu binary", &vmm.qemu),
        ] {
            check_unit_path(what, p)?;
            if p.file_name().is_none() {
                return Err(UnitError::BadPath {
                    what,
                    path: p.clone(),
                    why: "not a file path",
                });
            }
        }
        Ok(UnitParams { owner, vmm })
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    pub fn vmm(&self) -> &VmmBins {
        &self.vmm
    }
}

/// The helper's `RuntimeDirectory=` ([`system::HELPER_RUNTIME_DIR`] under `/run`).
pub const HELPER_RUNTIME_NAME: &str = "banger-helper";
/// The daemon's `RuntimeDirectory=`, `StateDirectory=` and `CacheDirectory=`
/// ([`system::RUNTIME_DIR`], [`system::STATE_DIR`], [`system::CACHE_DIR`]).
pub const DAEMON_DIR_NAME: &str = "banger";
/// What the helper may do as root, and nothing more.
pub const HELPER_CAPABILITIES: &str = "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_MKNOD \
     CAP_NET_ADMIN CAP_NET_RAW CAP_SETGID CAP_SETUID CAP_SYS_ADMIN CAP_SYS_CHROOT";

fn header(out: &mut String, unit: &str, owner: &str) {
    let _ = writeln!(
        out,
        "# {unit}: written by `banger system install` for {owner}.\n\
         # `banger system install`/`banger update` rewrite it and `banger system\n\
         # uninstall` removes it: put local changes in a drop-in ({unit}.d/)."
    );
}

/// Lines both services share: restart policy, VMM survival, hardening.
fn common_service(out: &mut String) {
    out.push_str(
        "Restart=on-failure\n\
         RestartSec=2s\n\
         # VMMs spawned by the helper stay in its cgroup: stop and restart signal\n\
         # only the main process and never SIGKILL what is left, so VMs keep running.\n\
         KillMode=process\n\
         SendSIGKILL=no\n\
         RuntimeDirectoryPreserve=yes\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         PrivateTmp=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n",
    );
}

/// `banger-helper.service`: root, the capabilities in
/// [`HELPER_CAPABILITIES`], writes only under the state and runtime dirs,
/// logs to the journal (no `--log-file`).
pub fn render_helper_unit(p: &UnitParams) -> String {
    let o = &p.owner;
    let v = &p.vmm;
    let mut out = String::new();
    header(&mut out, system::HELPER_UNIT, &o.user);
    let _ = write!(
        out,
        "\n[Unit]\n\
         Description=banger root helper (privileged operations for bangerd)\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={helper} \\\n  \
         --socket {socket} \\\n  \
         --state-dir {state} \\\n  \
         --runtime-dir {runtime} \\\n  \
         --owner-uid {uid} --owner-gid {gid} \\\n  \
         --firecracker-bin {fc} \\\n  \
         --jailer-bin {jailer} \\\n  \
         --qemu-bin {qemu}\n",
        helper = system::HELPER_BIN,
        socket = system::HELPER_SOCKET,
        state = system::STATE_DIR,
        runtime = system::RUNTIME_DIR,
        uid = o.uid,
        gid = o.gid,
        fc = v.firecracker.display(),
        jailer = v.jailer.display(),
        qemu = v.qemu.display(),
    );
    common_service(&mut out);
    let _ = write!(
        out,
        "ProtectHome=yes\n\
         RuntimeDirectory={HELPER_RUNTIME_NAME}\n\
         RuntimeDirectoryMode=0711\n\
         # Both exist before the helper starts: install creates them, and\n\
         # {tmpfiles} recreates the runtime dir at boot.\n\
         ReadWritePaths={state} {runtime}\n\
         CapabilityBoundingSet={HELPER_CAPABILITIES}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        tmpfiles = system::TMPFILES_FILE,
        state = system::STATE_DIR,
        runtime = system::RUNTIME_DIR,
    );
    out
}

/// `bangerd.service`: the owner user, its env pointing at the system paths,
/// ordered after the helper but not bound to it.
pub fn render_daemon_unit(p: &UnitParams) -> String {
    let o = &p.owner;
    let mut out = String::new();
    header(&mut out, system::DAEMON_UNIT, &o.user);
    let _ = write!(
        out,
        "\n[Unit]\n\
         Description=banger daemon (VMs of {user})\n\
         # Wants=, not Requires=: restarting the helper must not restart bangerd.\n\
         Wants={helper_unit} network-online.target\n\
         After={helper_unit} network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User={user}\n\
         Group={gid}\n\
         ExecStart={bangerd}\n\
         Environment=BANGER_STATE_DIR={state}\n\
         Environment=BANGER_RUNTIME_DIR={runtime}\n\
         Environment=BANGER_CACHE_DIR={cache}\n\
         Environment=BANGER_CONFIG={config}\n\
         Environment=BANGER_HELPER_SOCKET={socket}\n\
         Environment=BANGER_AGENT_BIN={agent}\n\
         Environment=HOME={home}\n\
         UMask=0077\n",
        user = o.user,
        gid = o.gid,
        helper_unit = system::HELPER_UNIT,
        bangerd = system::BANGERD_BIN,
        state = system::STATE_DIR,
        runtime = system::RUNTIME_DIR,
        cache = system::CACHE_DIR,
        config = system::CONFIG_FILE,
        socket = system::HELPER_SOCKET,
        agent = system::AGENT_BIN,
        home = o.home.display(),
    );
    common_service(&mut out);
    let _ = write!(
        out,
        "ProtectHome=read-only\n\
         RuntimeDirectory={DAEMON_DIR_NAME}\n\
         RuntimeDirectoryMode=0700\n\
         StateDirectory={DAEMON_DIR_NAME}\n\
         StateDirectoryMode=0700\n\
         CacheDirectory={DAEMON_DIR_NAME}\n\
         CacheDirectoryMode=0700\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    );
    out
}

/// The tmpfiles.d line that recreates [`system::RUNTIME_DIR`] for the owner
/// at every boot, before either service starts (the helper's
/// `ReadWritePaths=` needs it to exist).
pub fn render_tmpfiles(p: &UnitParams) -> String {
    let o = &p.owner;
    format!(
        "# {file}: written by `banger system install` for {user}.\n\
         d {runtime} 0700 {user} {gid} -\n",
        file = system::TMPFILES_FILE,
        user = o.user,
        gid = o.gid,
        runtime = system::RUNTIME_DIR,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hardening::{
        directive_values, missing_directives, DAEMON_REQUIRED, HELPER_REQUIRED,
    };

    pub(crate) fn owner(uid: u32) -> Owner {
        Owner {
            user: "alice".into(),
            uid,
            gid: uid,
            home: "/home/alice".into(),
        }
    }

    pub(crate) fn vmm() -> VmmBins {
        VmmBins {
            firecracker: "/usr/bin/firecracker".into(),
            jailer: "/usr/bin/jailer".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
        }
    }

    pub(crate) fn params(uid: u32) -> UnitParams {
        UnitParams::new(owner(uid), vmm()).unwrap()
    }

    #[test]
    fn dir_names_match_the_system_paths() {
        assert_eq!(
            format!("/run/{HELPER_RUNTIME_NAME}"),
            system::HELPER_RUNTIME_DIR
        );
        assert_eq!(format!("/run/{DAEMON_DIR_NAME}"), system::RUNTIME_DIR);
        assert_eq!(format!("/var/lib/{DAEMON_DIR_NAME}"), system::STATE_DIR);
        assert_eq!(format!("/var/cache/{DAEMON_DIR_NAME}"), system::CACHE_DIR);
        assert!(system::HELPER_SOCKET.starts_with(system::HELPER_RUNTIME_DIR));
    }

    #[test]
    fn every_hardening_directive_is_present() {
        let p = params(1000);
        let helper = render_helper_unit(&p);
        assert_eq!(
            missing_directives(&helper, HELPER_REQUIRED),
            Vec::<String>::new()
        );
        let daemon = render_daemon_unit(&p);
        assert_eq!(
            missing_directives(&daemon, DAEMON_REQUIRED),
            Vec::<String>::new()
        );
        assert_eq!(
            missing_directives(&daemon, &[("User", "alice"), ("Group", "1000")]),
            Vec::<String>::new()
        );
        // The helper runs as root: no User= at all.
        assert!(!helper.contains("User="));
        // The daemon must not be bound to the helper.
        for key in [
            "Unit.Requires",
            "Unit.BindsTo",
            "Unit.PartOf",
            "Unit.Requisite",
        ] {
            assert!(directive_values(&daemon, key).is_empty(), "{key}: {daemon}");
        }
    }

    #[test]
    fn helper_exec_start_has_every_flag_and_no_log_file() {
        let unit = render_helper_unit(&params(1000));
        let exec = crate::hardening::directive_values(&unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{unit}");
        let argv: Vec<&str> = exec[0].split_whitespace().collect();
        assert_eq!(
            argv,
            [
                system::HELPER_BIN,
                "--socket",
                system::HELPER_SOCKET,
                "--state-dir",
                system::STATE_DIR,
                "--runtime-dir",
                system::RUNTIME_DIR,
                "--owner-uid",
                "1000",
                "--owner-gid",
                "1000",
                "--firecracker-bin",
                "/usr/bin/firecracker",
                "--jailer-bin",
                "/usr/bin/jailer",
                "--qemu-bin",
                "/usr/bin/qemu-system-x86_64",
            ]
        );
        assert!(!unit.contains("--log-file"));
    }

    #[test]
    fn daemon_env_points_at_the_system_paths() {
        let unit = render_daemon_unit(&params(1000));
        let env = crate::hardening::directive_values(&unit, "Environment");
        let want = [
            format!("BANGER_STATE_DIR={}", system::STATE_DIR),
            format!("BANGER_RUNTIME_DIR={}", system::RUNTIME_DIR),
            format!("BANGER_CACHE_DIR={}", system::CACHE_DIR),
            format!("BANGER_CONFIG={}", system::CONFIG_FILE),
            format!("BANGER_HELPER_SOCKET={}", system::HELPER_SOCKET),
            format!("BANGER_AGENT_BIN={}", system::AGENT_BIN),
            "HOME=/home/alice".to_string(),
        ];
        assert_eq!(env, want);
        let exec = crate::hardening::directive_values(&unit, "ExecStart");
        assert_eq!(exec, [system::BANGERD_BIN]);
    }

    #[test]
    fn tmpfiles_line() {
        let text = render_tmpfiles(&params(1000));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["d /run/banger 0700 alice 1000 -"]);
    }

    #[test]
    fn bad_user_names_are_refused() {
        for name in [
            "", "Alice", "1alice", "-alice", "al ice", "al%ice", "alice$", "al/ice", "al.ice",
            "alicé", "a\nb",
        ] {
            let mut o = owner(1000);
            o.user = name.into();
            assert_eq!(
                UnitParams::new(o, vmm()),
                Err(UnitError::BadUserName(name.into())),
                "{name:?}"
            );
        }
        let mut o = owner(1000);
        o.user = "a".repeat(33);
        assert!(UnitParams::new(o, vmm()).is_err());
        for name in ["_svc", "a", "bob-2", "x_y", &"a".repeat(32)] {
            let mut o = owner(1000);
            o.user = name.into();
            assert!(UnitParams::new(o, vmm()).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn root_is_refused_as_owner() {
        let mut o = owner(1000);
        o.user = "root".into();
        assert!(matches!(
            UnitParams::new(o, vmm()),
            Err(UnitError::RootOwner { .. })
        ));
        assert!(UnitParams::new(owner(0), vmm()).is_err());
        let mut o = owner(1000);
        o.gid = 0;
        assert!(UnitParams::new(o, vmm()).is_err());
    }

    #[test]
    fn bad_paths_are_refused() {
        for home in [
            "home/alice",
            "/home/al ice",
            "/home/al\tice",
            "/home/%u",
            "/home/$USER",
            "/home/\"a\"",
            "/home/'a'",
            "/home/a\\x20",
            "/home/a;b",
            "/home/a\nb",
            "/home/a\u{7f}",
            "/home/../etc",
            "/home/./a",
            "/home//a",
            "/home/a/",
            "/home/ålice",
        ] {
            let mut o = owner(1000);
            o.home = home.into();
            let e = UnitParams::new(o, vmm()).unwrap_err();
            assert!(
                matches!(
                    e,
                    UnitError::BadPath {
                        what: "owner home",
                        ..
                    }
                ),
                "{home:?}: {e}"
            );
        }
        let mut v = vmm();
        v.jailer = "/opt/fc %i/jailer".into();
        let e = UnitParams::new(owner(1000), v).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("refusing jailer binary /opt/fc %i/jailer:"),
            "{e}"
        );
        let mut v = vmm();
        v.qemu = "qemu-system-x86_64".into();
        assert!(UnitParams::new(owner(1000), v).is_err());
        let mut v = vmm();
        v.firecracker = "/".into();
        assert!(UnitParams::new(owner(1000), v).is_err());
        let mut o = owner(1000);
        o.home = "/srv/users/a-b_c.d+e@f,g:h".into();
        assert!(UnitParams::new(o, vmm()).is_ok());
    }
}
