//! The banger-managed ssh_config include file, which lets plain
//! `ssh <name>.vm` reach a VM the same way `banger vm ssh` does.

use std::fmt::Write;

use crate::argv::SshTarget;
use crate::keys::label_problem;

/// What a VM's name is suffixed with to form its ssh alias.
pub const HOST_SUFFIX: &str = ".vm";

/// First line of the include file.
pub const CONFIG_HEADER: &str =
    "# managed by banger; regenerated on every VM change \u{2014} do not edit";

/// The include file body: a header comment, then one `Host <name>.vm` block
/// per VM, sorted by name:
///
/// ```text
/// Host box.vm
///     HostName 172.16.0.2
///     User root
///     IdentityFile /var/lib/banger/ssh/id_ed25519
///     IdentitiesOnly yes
///     UserKnownHostsFile /var/lib/banger/ssh/known_hosts
///     StrictHostKeyChecking yes
///     HostKeyAlias box.vm
///     LogLevel ERROR
/// ```
///
/// Paths are written with [`config_path_arg`] (`%` doubled, double-quoted
/// when they contain anything but plain path characters). A VM that cannot be
/// written safely (name not a DNS label, a path that is not UTF-8 or holds a
/// control character or `${`) gets a one-line comment instead of a block, so
/// nothing a VM carries can inject ssh_config lines.
pub fn render_config(vms: &[SshTarget]) -> String {
    let mut sorted: Vec<&SshTarget> = vms.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.ip.cmp(&b.ip)));
    let mut out = format!("{CONFIG_HEADER}\n");
    for t in sorted {
        out.push('\n');
        match host_block(t) {
            Ok(block) => out.push_str(&block),
            Err(reason) => {
                let _ = writeln!(out, "# skipped VM {:?}: {reason}", t.name);
            }
        }
    }
    out
}

fn host_block(t: &SshTarget) -> Result<String, &'static str> {
    label_problem(&t.name).map_err(|_| "its name is not a DNS label")?;
    let identity = writable_path(&t.identity)?;
    let known_hosts = writable_path(&t.known_hosts)?;
    let alias = t.alias();
    Ok(format!(
        "Host {alias}\n\
         \x20   HostName {ip}\n\
         \x20   User root\n\
         \x20   IdentityFile {identity}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile {known_hosts}\n\
         \x20   StrictHostKeyChecking yes\n\
         \x20   HostKeyAlias {alias}\n\
         \x20   LogLevel ERROR\n",
        ip = t.ip,
    ))
}

/// `path` as an ssh_config argument, or why it cannot be one.
fn writable_path(path: &std::path::Path) -> Result<String, &'static str> {
    let s = path.to_str().ok_or("a path is not UTF-8")?;
    if s.chars().any(char::is_control) {
        return Err("a path contains a control character");
    }
    if s.contains("${") {
        return Err("a path contains `${`, which ssh would expand");
    }
    Ok(config_path_arg(s))
}

/// A file path as ssh_config (and `ssh -o`) reads it back: `%` doubled,
/// since ssh expands `%` tokens in IdentityFile and UserKnownHostsFile, then
/// quoted with [`quote_config_arg`].
pub fn config_path_arg(path: &str) -> String {
    quote_config_arg(&path.replace('%', "%%"))
}

/// One ssh_config argument: as is when made only of `A-Za-z0-9_@%+:,./-`,
/// otherwise wrapped in double quotes with `\` and `"` backslash-escaped
/// (how OpenSSH splits arguments since 8.7).
pub fn quote_config_arg(arg: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || "_@%+:,./-".contains(c);
    if !arg.is_empty() && arg.chars().all(bare) {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tool;
    use std::net::Ipv4Addr;
    use std::path::Path;

    fn target(name: &str, ip: [u8; 4], dir: &Path) -> SshTarget {
        SshTarget {
            name: name.into(),
            ip: Ipv4Addr::from(ip),
            known_hosts: dir.join(format!("{name}.known_hosts")),
            identity: dir.join("id_ed25519"),
        }
    }

    pub(crate) use crate::testutil::ssh_g;

    pub(crate) fn get<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn two_vms_sorted_by_name() {
        let dir = Path::new("/var/lib/banger/ssh");
        let vms = [
            target("web", [172, 16, 0, 3], dir),
            target("box", [172, 16, 0, 2], dir),
        ];
        let expected = "\
# managed by banger; regenerated on every VM change \u{2014} do not edit

Host box.vm
    HostName 172.16.0.2
    User root
    IdentityFile /var/lib/banger/ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile /var/lib/banger/ssh/box.known_hosts
    StrictHostKeyChecking yes
    HostKeyAlias box.vm
    LogLevel ERROR

Host web.vm
    HostName 172.16.0.3
    User root
    IdentityFile /var/lib/banger/ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile /var/lib/banger/ssh/web.known_hosts
    StrictHostKeyChecking yes
    HostKeyAlias web.vm
    LogLevel ERROR
";
        assert_eq!(render_config(&vms), expected);
        let reversed = [vms[1].clone(), vms[0].clone()];
        assert_eq!(render_config(&reversed), expected);
    }

    #[test]
    fn no_vms_is_just_the_header() {
        assert_eq!(render_config(&[]), format!("{CONFIG_HEADER}\n"));
    }

    #[test]
    fn unsafe_vms_become_comments() {
        let dir = Path::new("/x");
        let mut evil_path = target("ok", [10, 0, 0, 1], dir);
        evil_path.known_hosts = "/x\nHost *\n    User evil".into();
        let vms = [target("Bad Name\nHost *", [10, 0, 0, 2], dir), evil_path];
        let out = render_config(&vms);
        // Only comments and blank lines: nothing ssh would act on.
        assert!(
            out.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "{out}"
        );
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(
            out.contains("# skipped VM \"Bad Name\\nHost *\": its name is not a DNS label\n"),
            "{out}"
        );
        assert!(
            out.contains("# skipped VM \"ok\": a path contains a control character\n"),
            "{out}"
        );
    }

    #[test]
    fn config_path_arg_cases() {
        assert_eq!(config_path_arg("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(config_path_arg("/a/100%"), "/a/100%%");
        assert_eq!(config_path_arg("/a b/c"), "\"/a b/c\"");
        assert_eq!(config_path_arg("/a\"b\\c"), "\"/a\\\"b\\\\c\"");
        assert_eq!(config_path_arg("/#x"), "\"/#x\"");
    }

    #[test]
    fn ssh_resolves_the_rendered_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state dir/100%");
        let vms = [
            target("box", [172, 16, 0, 2], &dir),
            target("web", [172, 16, 0, 3], &dir),
        ];
        let file = tmp.path().join("ssh_config");
        std::fs::write(&file, render_config(&vms)).unwrap();
        let Some(s) = ssh_g(&file, "box.vm") else {
            return;
        };
        assert_eq!(get(&s, "hostname"), ["172.16.0.2"]);
        assert_eq!(get(&s, "user"), ["root"]);
        // `ssh -G` shows IdentityFile before %-expansion, the rest after.
        let identity = dir
            .join("id_ed25519")
            .display()
            .to_string()
            .replace('%', "%%");
        assert_eq!(get(&s, "identityfile"), [identity.as_str()]);
        let known_hosts = dir.join("box.known_hosts").display().to_string();
        assert_eq!(get(&s, "userknownhostsfile"), [known_hosts.as_str()]);
        assert_eq!(get(&s, "identitiesonly"), ["yes"]);
        assert_eq!(get(&s, "stricthostkeychecking"), ["true"]);
        assert_eq!(get(&s, "hostkeyalias"), ["box.vm"]);
        assert_eq!(get(&s, "loglevel"), ["ERROR"]);

        let s = ssh_g(&file, "web.vm").unwrap();
        assert_eq!(get(&s, "hostname"), ["172.16.0.3"]);
        let s = ssh_g(&file, "other.vm").unwrap();
        assert_eq!(get(&s, "hostname"), ["other.vm"]);
    }

    #[test]
    fn ssh_reads_quoted_paths_back_exactly() {
        let Some(_) = tool("ssh") else { return };
        let tmp = tempfile::tempdir().unwrap();
        for odd in ["a b", "q\"uote", "back\\slash", "#hash", "it's", "ü", "=eq"] {
            let dir = tmp.path().join(odd);
            let file = tmp.path().join("ssh_config");
            std::fs::write(&file, render_config(&[target("box", [10, 0, 0, 9], &dir)])).unwrap();
            let s = ssh_g(&file, "box.vm").unwrap();
            let known_hosts = dir.join("box.known_hosts").display().to_string();
            assert_eq!(
                get(&s, "userknownhostsfile"),
                [known_hosts.as_str()],
                "{odd:?}"
            );
        }
    }
}
