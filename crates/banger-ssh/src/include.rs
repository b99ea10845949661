//! `banger ssh-config --install` / `--uninstall`: adding the banger include
//! file to the user's `~/.ssh/config`, and taking it out again.
//!
//! The user's file is edited by appending a marked block and, later, by
//! cutting exactly that block out; every other byte is left as it was. The
//! new contents always go through a temporary file in `~/.ssh` and a rename,
//! keeping the file's mode and owner.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::quote_config_arg;
use crate::fsutil::replace_file;
use crate::SshError;

/// First line of the block [`install_include`] appends.
pub const INCLUDE_MARKER: &str =
    "# banger: lets `ssh <name>.vm` reach banger VMs (banger ssh-config --uninstall removes this)";

/// Makes `<home>/.ssh/config` include `include_path` (which must be
/// absolute); `home` is passed in, never read from the environment.
///
/// Creates `~/.ssh` (0700) and the config (0600) when missing. Otherwise it
/// appends to the file, keeping its mode, owner and every existing byte:
///
/// ```text
/// <newline, unless the file is empty>
/// # banger: lets `ssh <name>.vm` reach banger VMs (banger ssh-config --uninstall removes this)
/// Match all
/// Include <include_path>
/// ```
///
/// The leading newline makes a blank line before the block when the file
/// ends with a newline; when the file's last line has no newline, it ends
/// that line instead (no blank line then), so that [`uninstall_include`]
/// can tell the two apart and restore the file byte for byte. `Match all`
/// is there because an `Include` after a `Host` block would otherwise only
/// apply to that host.
///
/// Returns `Ok(false)` and changes nothing when the block for this
/// `include_path` is already there. A config that is a symlink is never
/// replaced by a file: that is an error saying which lines to add by hand.
pub fn install_include(home: &Path, include_path: &Path) -> Result<bool, SshError> {
    let line = include_line(include_path)?;
    let block = block(&line);
    let ssh_dir = home.join(".ssh");
    let config = ssh_dir.join("config");

    let (mut contents, mode, owner) = match fs::symlink_metadata(&config) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if let Ok(target_contents) = fs::read(&config) {
                if find_block(&target_contents, &line).is_some() {
                    return Ok(false);
                }
            }
            return Err(symlink_error(
                &config,
                format!("add these lines to it yourself:\n{block}"),
            ));
        }
        Ok(meta) if !meta.is_file() => return Err(SshError::NotAFile { path: config }),
        Ok(meta) => {
            let contents = fs::read(&config).map_err(SshError::io("reading", &config))?;
            (
                contents,
                meta.mode() & 0o7777,
                Some((meta.uid(), meta.gid())),
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_ssh_dir(&ssh_dir)?;
            (Vec::new(), 0o600, None)
        }
        Err(e) => return Err(SshError::io("reading metadata of", &config)(e)),
    };

    if find_block(&contents, &line).is_some() {
        return Ok(false);
    }
    if !contents.is_empty() {
        contents.push(b'\n');
    }
    contents.extend_from_slice(block.as_bytes());
    replace_file(&config, &contents, mode, owner)?;
    Ok(true)
}

/// Removes the block [`install_include`] added for `include_path` from
/// `<home>/.ssh/config`: the marker, `Match all` and `Include` lines and the
/// newline install put before them, leaving every other byte as it was.
///
/// Returns `Ok(false)` when the block is not there (or there is no config).
/// The file is kept even when nothing else is left in it. A config that is a
/// symlink is not replaced; if its target holds the block, that is an error
/// saying which lines to remove by hand.
pub fn uninstall_include(home: &Path, include_path: &Path) -> Result<bool, SshError> {
    let line = include_line(include_path)?;
    let config = home.join(".ssh").join("config");

    let (mode, owner) = match fs::symlink_metadata(&config) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return match fs::read(&config) {
                Ok(target_contents) if find_block(&target_contents, &line).is_some() => {
                    Err(symlink_error(
                        &config,
                        format!("remove these lines from it yourself:\n{}", block(&line)),
                    ))
                }
                _ => Ok(false),
            };
        }
        Ok(meta) if !meta.is_file() => return Err(SshError::NotAFile { path: config }),
        Ok(meta) => (meta.mode() & 0o7777, Some((meta.uid(), meta.gid()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SshError::io("reading metadata of", &config)(e)),
    };

    let mut contents = fs::read(&config).map_err(SshError::io("reading", &config))?;
    let mut removed = false;
    while let Some((start, end)) = find_block(&contents, &line) {
        let before = &contents[..start];
        // Undo the newline install put before the block: it made a blank
        // line (`\n\n`), or ended a last line that had no newline (block at
        // the very end, preceded by a single `\n`).
        let from =
            if before.ends_with(b"\n\n") || (end == contents.len() && before.ends_with(b"\n")) {
                start - 1
            } else {
                start
            };
        contents.drain(from..end);
        removed = true;
    }
    if removed {
        replace_file(&config, &contents, mode, owner)?;
    }
    Ok(removed)
}

/// `Include <path>`, with `path` escaped for ssh's glob expansion of Include
/// arguments (`\`, `*`, `?`, `[`) and then quoted as a config argument.
///
/// The path must be absolute (a relative Include is resolved against
/// `~/.ssh`), UTF-8, free of control characters, and free of `%` and `${`,
/// which some OpenSSH versions expand in Include and others do not.
fn include_line(include_path: &Path) -> Result<String, SshError> {
    let unusable = |reason| SshError::UnusablePath {
        path: include_path.to_path_buf(),
        reason,
    };
    if !include_path.is_absolute() {
        return Err(unusable("it is not absolute"));
    }
    let s = include_path
        .to_str()
        .ok_or_else(|| unusable("it is not UTF-8"))?;
    if s.chars().any(char::is_control) {
        return Err(unusable("it contains a control character"));
    }
    if s.contains('%') || s.contains("${") {
        return Err(unusable("it contains `%` or `${`, which ssh may expand"));
    }
    let mut glob_escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '*' | '?' | '[') {
            glob_escaped.push('\\');
        }
        glob_escaped.push(c);
    }
    Ok(format!("Include {}", quote_config_arg(&glob_escaped)))
}

fn block(include_line: &str) -> String {
    format!("{INCLUDE_MARKER}\nMatch all\n{include_line}\n")
}

/// Byte range of the first marker / `Match all` / `include_line` run of
/// lines (surrounding whitespace on each line ignored), including the last
/// line's newline when it has one.
fn find_block(contents: &[u8], include_line: &str) -> Option<(usize, usize)> {
    // (start of line, end of line including its newline)
    let mut lines = Vec::new();
    let mut start = 0;
    while start < contents.len() {
        let end = contents[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(contents.len(), |i| start + i + 1);
        lines.push((start, end));
        start = end;
    }
    let text = |(s, e): (usize, usize)| contents[s..e].trim_ascii();
    let wanted = [
        INCLUDE_MARKER.as_bytes(),
        b"Match all".as_slice(),
        include_line.as_bytes(),
    ];
    lines.windows(3).find_map(|w| {
        let found = w.iter().zip(wanted).all(|(&l, want)| text(l) == want);
        found.then(|| (w[0].0, w[2].1))
    })
}

fn create_ssh_dir(dir: &Path) -> Result<(), SshError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(SshError::io("creating directory", dir)(e)),
    }
}

fn symlink_error(config: &Path, advice: String) -> SshError {
    let target = fs::read_link(config).unwrap_or_else(|_| PathBuf::from("?"));
    SshError::ConfigSymlink {
        path: config.to_path_buf(),
        target,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::SshTarget;
    use crate::config::render_config;
    use std::os::unix::fs::PermissionsExt;

    struct Home {
        _tmp: tempfile::TempDir,
        home: PathBuf,
        include: PathBuf,
    }

    impl Home {
        /// A temporary HOME and a rendered include file for VM `box`
        /// (172.16.0.2) under `include_dir` (relative to the temp dir).
        fn new(include_dir: &str) -> Home {
            let tmp = tempfile::tempdir().unwrap();
            let home = tmp.path().join("home");
            fs::create_dir(&home).unwrap();
            let state = tmp.path().join(include_dir);
            let include = state.join("ssh_config");
            let vm = SshTarget {
                name: "box".into(),
                ip: "172.16.0.2".parse().unwrap(),
                known_hosts: state.join("known_hosts"),
                identity: state.join("id_ed25519"),
            };
            crate::write_atomic(&include, &render_config(&[vm])).unwrap();
            Home {
                _tmp: tmp,
                home,
                include,
            }
        }

        fn config(&self) -> PathBuf {
            self.home.join(".ssh/config")
        }

        fn write_config(&self, contents: &str, mode: u32) {
            fs::create_dir_all(self.home.join(".ssh")).unwrap();
            fs::write(self.config(), contents).unwrap();
            fs::set_permissions(self.config(), fs::Permissions::from_mode(mode)).unwrap();
        }

        fn read_config(&self) -> String {
            fs::read_to_string(self.config()).unwrap()
        }

        fn install(&self) -> bool {
            install_include(&self.home, &self.include).unwrap()
        }

        fn uninstall(&self) -> bool {
            uninstall_include(&self.home, &self.include).unwrap()
        }

        fn block(&self) -> String {
            block(&include_line(&self.include).unwrap())
        }

        /// `ssh -G` for `host` under the user's config, or `None` without ssh.
        fn resolve(&self, host: &str) -> Option<Vec<(String, String)>> {
            crate::testutil::ssh_g(&self.config(), host)
        }
    }

    fn get<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_creates_ssh_dir_and_config() {
        let h = Home::new("state");
        assert!(h.install());
        assert_eq!(mode(&h.home.join(".ssh")), 0o700);
        assert_eq!(mode(&h.config()), 0o600);
        let expected = format!(
            "{INCLUDE_MARKER}\nMatch all\nInclude {}\n",
            h.include.display()
        );
        assert_eq!(h.read_config(), expected);
        assert!(!h.install());
        assert_eq!(h.read_config(), expected);
        if let Some(s) = h.resolve("box.vm") {
            assert_eq!(get(&s, "hostname"), Some("172.16.0.2"));
            assert_eq!(get(&s, "user"), Some("root"));
        }

        assert!(h.uninstall());
        assert_eq!(h.read_config(), "", "the file is kept, empty");
        assert!(!h.uninstall());
        assert_eq!(fs::read_dir(h.home.join(".ssh")).unwrap().count(), 1);
    }

    const USER_CONFIG: &str = "\
# my settings
Host *
    ServerAliveInterval 30

Host foo
    HostName foo.example.com
    User bar";

    #[test]
    fn install_appends_after_user_content_without_trailing_newline() {
        let h = Home::new("state");
        h.write_config(USER_CONFIG, 0o644);
        assert!(h.install());
        let installed = h.read_config();
        assert!(installed.starts_with(USER_CONFIG));
        assert_eq!(installed, format!("{USER_CONFIG}\n{}", h.block()));
        assert_eq!(mode(&h.config()), 0o644, "mode kept");
        assert!(!h.install());
        assert_eq!(h.read_config(), installed);

        if let Some(s) = h.resolve("box.vm") {
            // The include applies although the user's file ends inside `Host foo`.
            assert_eq!(get(&s, "hostname"), Some("172.16.0.2"));
            assert_eq!(get(&s, "user"), Some("root"));
            assert_eq!(get(&s, "hostkeyalias"), Some("box.vm"));
            assert_eq!(get(&s, "serveraliveinterval"), Some("30"));
            let foo = h.resolve("foo").unwrap();
            assert_eq!(get(&foo, "hostname"), Some("foo.example.com"));
            assert_eq!(get(&foo, "user"), Some("bar"));
        }

        assert!(h.uninstall());
        assert_eq!(h.read_config(), USER_CONFIG);
        assert_eq!(mode(&h.config()), 0o644);
        assert!(!h.uninstall());
        assert_eq!(h.read_config(), USER_CONFIG);
    }

    #[test]
    fn round_trip_is_exact_for_every_ending() {
        for original in [
            "",
            "\n",
            "\n\n",
            "Host a\n",
            "Host a\n\n",
            "Host a\n\n\n",
            "Host a",
            "Host a\r\n",
            "   ",
        ] {
            let h = Home::new("state");
            h.write_config(original, 0o600);
            assert!(h.install(), "{original:?}");
            let installed = h.read_config();
            assert!(installed.starts_with(original), "{original:?}");
            if original.ends_with('\n') {
                assert_eq!(
                    installed,
                    format!("{original}\n{}", h.block()),
                    "blank line first"
                );
            }
            assert!(h.uninstall(), "{original:?}");
            assert_eq!(h.read_config(), original, "{original:?}");
        }
    }

    #[test]
    fn uninstall_keeps_what_the_user_added_after_the_block() {
        for original in ["Host a\n", "Host a"] {
            let h = Home::new("state");
            h.write_config(original, 0o600);
            assert!(h.install());
            let mut edited = h.read_config();
            edited.push_str("Host b\n    User c\n");
            fs::write(h.config(), &edited).unwrap();
            assert!(h.uninstall());
            assert_eq!(
                h.read_config(),
                "Host a\nHost b\n    User c\n",
                "{original:?}"
            );
        }
    }

    #[test]
    fn install_path_with_awkward_characters_resolves() {
        let h = Home::new("banger state/x[1] it's *");
        assert!(h.install());
        let config = h.read_config();
        assert!(config.contains("Include \"/"), "{config}");
        if let Some(s) = h.resolve("box.vm") {
            assert_eq!(get(&s, "hostname"), Some("172.16.0.2"));
        }
        assert!(h.uninstall());
        assert_eq!(h.read_config(), "");
    }

    #[test]
    fn blocks_for_different_include_paths_are_separate() {
        let h = Home::new("state");
        let other = h.include.with_file_name("other_config");
        h.write_config("Host a\n", 0o600);
        assert!(h.install());
        assert!(install_include(&h.home, &other).unwrap());
        assert!(h.uninstall());
        let left = h.read_config();
        assert_eq!(
            left,
            format!("Host a\n\n{}", block(&include_line(&other).unwrap()))
        );
        assert!(uninstall_include(&h.home, &other).unwrap());
        assert_eq!(h.read_config(), "Host a\n");
    }

    #[test]
    fn symlinked_config_is_refused_not_replaced() {
        let h = Home::new("state");
        let dotfiles = h.home.join("dotfiles");
        fs::create_dir(&dotfiles).unwrap();
        let target = dotfiles.join("ssh_config");
        fs::write(&target, "Host a\n").unwrap();
        fs::create_dir(h.home.join(".ssh")).unwrap();
        std::os::unix::fs::symlink(&target, h.config()).unwrap();

        let err = install_include(&h.home, &h.include).unwrap_err();
        assert!(matches!(err, SshError::ConfigSymlink { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&target.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("Include {}", h.include.display())),
            "{msg}"
        );
        assert!(msg.contains("Match all"), "{msg}");
        assert!(fs::symlink_metadata(h.config())
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&target).unwrap(), "Host a\n");
        assert!(!h.uninstall(), "nothing to remove");

        // Once the user has added the lines, install has nothing to do and
        // uninstall tells them what to remove.
        fs::write(&target, format!("Host a\n\n{}", h.block())).unwrap();
        assert!(!h.install());
        let err = uninstall_include(&h.home, &h.include).unwrap_err();
        assert!(err.to_string().contains("remove these lines"), "{err}");
        assert!(fs::symlink_metadata(h.config())
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn uninstall_without_config_creates_nothing() {
        let h = Home::new("state");
        assert!(!h.uninstall());
        assert!(!h.home.join(".ssh").exists());
        h.write_config("Host a\n", 0o600);
        assert!(!h.uninstall());
        assert_eq!(h.read_config(), "Host a\n");
    }

    #[test]
    fn bad_include_paths_and_configs_are_errors() {
        let h = Home::new("state");
        for bad in ["relative/ssh_config", "/a/100%/x", "/a/${HOME}/x", "/a\n/x"] {
            let err = install_include(&h.home, Path::new(bad)).unwrap_err();
            assert!(
                matches!(err, SshError::UnusablePath { .. }),
                "{bad:?}: {err:?}"
            );
        }
        assert!(!h.home.join(".ssh").exists());

        fs::create_dir_all(h.config()).unwrap();
        let err = install_include(&h.home, &h.include).unwrap_err();
        assert!(matches!(err, SshError::NotAFile { .. }), "{err:?}");

        let missing_home = h.home.join("nope");
        let err = install_include(&missing_home, &h.include).unwrap_err();
        assert!(err.to_string().starts_with("creating directory "), "{err}");
    }
}
