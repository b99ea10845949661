//! The `ssh` command line for `banger vm ssh`, and POSIX shell quoting.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::config::{config_path_arg, HOST_SUFFIX};

/// What `ssh` needs to reach one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The VM's name, a DNS label; `<name>.vm` is its ssh alias.
    pub name: String,
    pub ip: Ipv4Addr,
    /// The banger-managed known_hosts file holding `<name>.vm <host key>`.
    pub known_hosts: PathBuf,
    /// The client private key.
    pub identity: PathBuf,
}

impl SshTarget {
    /// `<name>.vm`: the `Host` and `HostKeyAlias` for this VM.
    pub fn alias(&self) -> String {
        format!("{}{HOST_SUFFIX}", self.name)
    }
}

/// The argv (argv\[0\] = `ssh`) that logs into `t` as root with only the
/// banger key and only the banger known_hosts, never prompting:
///
/// `ssh -i <identity> -o IdentitiesOnly=yes -o UserKnownHostsFile=<known_hosts>
///  -o StrictHostKeyChecking=yes -o HostKeyAlias=<name>.vm -o LogLevel=ERROR
///  -o ConnectTimeout=10 [-o BatchMode=yes] [-t | -T] root@<ip> [<command>]`
///
/// - `-o BatchMode=yes` only when `batch`;
/// - `-t` when `tty`; `-T` when `cmd` is non-empty and `tty` is false;
///   neither for an interactive login without `tty` (ssh then decides);
/// - ssh joins the arguments after the destination with spaces and the
///   remote shell splits them again, so `cmd` is sent as ONE argument: every
///   element shell-quoted ([`shell_quote`]) and joined with spaces. The
///   remote shell thus runs exactly the argv the user gave, and
///   `["sh", "-c", "exit 42"]` stays three words.
///
/// The known_hosts path is quoted and `%`-escaped the way ssh reads option
/// values ([`crate::config::config_path_arg`]). The identity path goes to
/// `-i` as is, except that a path containing `%` is passed as
/// `-o IdentityFile=<escaped>` instead: ssh checks an `-i` file under its
/// literal name but loads it after `%`-expansion, so `-i` cannot name it.
/// Paths that are not UTF-8 are passed lossily; a path containing `${`
/// cannot be expressed at all (ssh expands it and has no escape for it).
pub fn ssh_argv(t: &SshTarget, cmd: &[String], tty: bool, batch: bool) -> Vec<String> {
    let alias = t.alias();
    let identity = t.identity.to_string_lossy();
    let identity_args: [String; 2] = if identity.contains('%') {
        // `-i` checks that the file exists under its literal name but loads
        // it after %-expansion, so a path with `%` only works as an option.
        [
            "-o".into(),
            format!("IdentityFile={}", config_path_arg(&identity)),
        ]
    } else {
        ["-i".into(), identity.into_owned()]
    };
    let mut argv: Vec<String> = vec!["ssh".into()];
    argv.extend(identity_args);
    argv.extend([
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!(
            "UserKnownHostsFile={}",
            config_path_arg(&t.known_hosts.to_string_lossy())
        ),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("HostKeyAlias={alias}"),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ]);
    if batch {
        argv.extend(["-o".into(), "BatchMode=yes".into()]);
    }
    if tty {
        argv.push("-t".into());
    } else if !cmd.is_empty() {
        argv.push("-T".into());
    }
    argv.push(format!("root@{}", t.ip));
    if !cmd.is_empty() {
        argv.push(
            cmd.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    argv
}

/// Quotes `s` for a POSIX shell: strings made only of `A-Za-z0-9_@%+=:,./-`
/// pass bare, the empty string becomes `''`, anything else is wrapped in
/// single quotes with each `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if s.is_empty() {
        return "''".into();
    }
    if s.chars().all(safe) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn target() -> SshTarget {
        SshTarget {
            name: "box".into(),
            ip: Ipv4Addr::new(172, 16, 0, 2),
            known_hosts: "/var/lib/banger/ssh/known_hosts".into(),
            identity: "/var/lib/banger/ssh/id_ed25519".into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const BASE: &[&str] = &[
        "ssh",
        "-i",
        "/var/lib/banger/ssh/id_ed25519",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "UserKnownHostsFile=/var/lib/banger/ssh/known_hosts",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "HostKeyAlias=box.vm",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ];

    fn expected(extra: &[&str]) -> Vec<String> {
        strings(&[BASE, extra].concat())
    }

    #[test]
    fn interactive_login() {
        assert_eq!(
            ssh_argv(&target(), &[], true, false),
            expected(&["-t", "root@172.16.0.2"])
        );
        assert_eq!(
            ssh_argv(&target(), &[], false, false),
            expected(&["root@172.16.0.2"])
        );
    }

    #[test]
    fn command_becomes_one_quoted_argument() {
        let cmd = strings(&["sh", "-c", "exit 42"]);
        assert_eq!(
            ssh_argv(&target(), &cmd, false, true),
            expected(&[
                "-o",
                "BatchMode=yes",
                "-T",
                "root@172.16.0.2",
                "sh -c 'exit 42'"
            ])
        );
        assert_eq!(
            ssh_argv(&target(), &cmd, true, false),
            expected(&["-t", "root@172.16.0.2", "sh -c 'exit 42'"])
        );

        // What the remote shell would do with it: run `sh -c 'exit 42'`.
        let remote = ssh_argv(&target(), &cmd, false, true).pop().unwrap();
        let status = Command::new("sh").arg("-c").arg(&remote).status().unwrap();
        assert_eq!(status.code(), Some(42));
    }

    #[test]
    fn paths_with_space_and_percent_are_escaped_for_ssh() {
        let mut t = target();
        t.known_hosts = "/home/a b/100%/known_hosts".into();
        t.identity = "/home/a b/id_ed25519".into();
        let argv = ssh_argv(&t, &[], false, false);
        assert_eq!(argv[1..3], ["-i", "/home/a b/id_ed25519"]);
        assert_eq!(
            argv[6],
            "UserKnownHostsFile=\"/home/a b/100%%/known_hosts\""
        );

        t.identity = "/home/100%/id_ed25519".into();
        let argv = ssh_argv(&t, &[], false, false);
        assert_eq!(argv[1..3], ["-o", "IdentityFile=/home/100%%/id_ed25519"]);
        assert_eq!(argv.len(), BASE.len() + 1);
    }

    #[test]
    fn shell_quote_cases() {
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("abc-1.2_x@y%z+w=v:u,t/s"),
            "abc-1.2_x@y%z+w=v:u,t/s"
        );
        assert_eq!(shell_quote("exit 42"), "'exit 42'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("~"), "'~'");
        assert_eq!(shell_quote("*"), "'*'");
    }

    /// Runs `printf '%s\0' <quoted args>` through a real shell and returns
    /// the arguments it saw.
    fn shell_round_trip(args: &[String]) -> Vec<String> {
        let script = format!(
            "printf '%s\\0' {}",
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut seen: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .map(str::to_string)
            .collect();
        assert_eq!(seen.pop().as_deref(), Some(""), "output ends with NUL");
        seen
    }

    #[test]
    fn shell_quote_round_trips_awkward_strings() {
        let args = strings(&[
            "",
            " ",
            "plain",
            "two words",
            "it's",
            "''",
            "\"double\"",
            "$HOME $(id) `id` ${x:-y}",
            "back\\slash\\\\",
            "new\nline",
            "tab\there",
            "glob * ? [a]",
            "semi; && || | > < &",
            "#comment",
            "~root",
            "-n",
            "ünïcödé ✓",
            "'\\''",
        ]);
        assert_eq!(shell_round_trip(&args), args);
        for a in &args {
            assert_eq!(shell_round_trip(std::slice::from_ref(a)), vec![a.clone()]);
        }
    }

    #[test]
    fn remote_command_round_trips_through_a_shell() {
        // The single trailing argv element is what the remote shell parses.
        let cmd = strings(&["printf", "%s\\0", "a b", "", "it's", "$x", "new\nline"]);
        let remote = ssh_argv(&target(), &cmd, false, true).pop().unwrap();
        let out = Command::new("sh").arg("-c").arg(&remote).output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"a b\0\0it's\0$x\0new\nline\0");
    }
}
