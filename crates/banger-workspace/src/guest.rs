//! Argv for the commands the daemon runs in the guest through the agent.
//!
//! Each is `sh -c <fixed script> <name> <args...>`: the script text is a
//! constant, and everything that comes from a user (paths, commands, a
//! commit) reaches it as a positional parameter, never spliced into it.
//! The guest is Debian with git, like the host; `sh` is dash there.

use crate::WorkspaceError;

const MISE_TRUST: &str = r#"if command -v mise >/dev/null 2>&1; then
  (cd -- "$1" && mise trust --quiet --all) || true
fi
exit 0"#;

const EXEC: &str = r#"if [ "$#" -eq 0 ]; then
  echo "banger: no command to run" >&2
  exit 2
fi
if command -v mise >/dev/null 2>&1; then exec mise exec -- "$@"; fi
exec "$@""#;

const BOOTSTRAP: &str = r#"if ! command -v mise >/dev/null 2>&1; then
  echo "banger: mise is not installed in this guest; skipping tool bootstrap" >&2
  exit 0
fi
cd -- "$1" && exec mise install"#;

/// The export script. The temporary index lives in the git directory, not
/// on /tmp: git writes an index as `<index>.lock` and renames it into
/// place, which fails across filesystems (tmpfs /tmp, overlay root).
/// `set -e` makes any failing git step the script's exit status; the EXIT
/// trap removes the temporary index (and its lock) however the script
/// ends, signals included (`|| :` because under `set -e` a failing trap
/// command would replace the exit status).
const EXPORT: &str = r#"set -eu
cd -- "$1"
base=$2
gitdir=$(git rev-parse --absolute-git-dir)
tmp="$gitdir/banger-export-index.$$"
trap 'rm -f -- "$tmp" "$tmp.lock" || :' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
GIT_INDEX_FILE=$tmp
export GIT_INDEX_FILE
if head=$(git rev-parse --verify -q HEAD); then
  git read-tree "$head"
else
  git read-tree --empty
fi
git add -A
set -- --cached --binary --no-color --no-ext-diff --no-textconv --no-relative --src-prefix=a/ --dst-prefix=b/
if [ -n "$base" ]; then set -- "$@" "$base"; fi
git -c core.quotepath=off diff "$@" --"#;

fn sh(script: &str, name: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), name.into()];
    argv.extend(args);
    argv
}

/// Marks the mise config files of the checkout at `guest_path` (and its
/// parents) trusted, when mise is installed. Best effort: exits 0 always.
pub fn mise_trust_argv(guest_path: &str) -> Vec<String> {
    sh(MISE_TRUST, "banger-mise-trust", [guest_path.to_string()])
}

/// Runs `cmd` under `mise exec --` when mise is on PATH (so the repo's
/// tools are on PATH), else as is. The exit status is the command's; an
/// empty `cmd` exits 2 with a message.
pub fn exec_argv(cmd: &[String]) -> Vec<String> {
    sh(EXEC, "banger-exec", cmd.iter().cloned())
}

/// Installs the tools the repo's mise config asks for: `mise install` in
/// `guest_path`, with its exit status. Without mise in the guest it says
/// so on stderr ("banger: mise is not installed in this guest; skipping
/// tool bootstrap") and exits 0.
pub fn bootstrap_argv(guest_path: &str) -> Vec<String> {
    sh(BOOTSTRAP, "banger-bootstrap", [guest_path.to_string()])
}

/// Prints to stdout a binary patch of the checkout at `guest_path`: its
/// uncommitted changes, new untracked (not ignored) files and deletions,
/// against `base_commit` when given (so commits made in the guest since
/// are included) or else against the guest's HEAD (so guest commits are
/// not). The repository's own index is never touched. A failing git step
/// makes the command fail with git's exit status.
///
/// `base_commit` must be 4 to 64 hex characters.
pub fn export_argv(
    guest_path: &str,
    base_commit: Option<&str>,
) -> Result<Vec<String>, WorkspaceError> {
    let base = match base_commit {
        Some(c) if (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit()) => c,
        Some(c) => {
            return Err(WorkspaceError::InvalidCommit {
                commit: c.to_string(),
            })
        }
        None => "",
    };
    Ok(sh(
        EXPORT,
        "banger-export",
        [guest_path.to_string(), base.to_string()],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Runs an argv from this module the way the agent would: program
    /// `sh`, here pinned to /bin/sh so PATH can be anything.
    fn run(argv: &[String], path_env: &str, cwd: &Path) -> Output {
        isolate();
        assert_eq!(argv[0], "sh");
        Command::new("/bin/sh")
            .args(&argv[1..])
            .env("PATH", path_env)
            .current_dir(cwd)
            .output()
            .unwrap()
    }

    /// A PATH holding only `sh`: surely no mise.
    fn bare_path(t: &Path) -> String {
        let bin = t.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("sh")).unwrap();
        bin.to_str().unwrap().to_string()
    }

    /// This process's PATH, for scripts that need git and coreutils.
    fn host_path() -> String {
        std::env::var("PATH").unwrap()
    }

    /// A stand-in `mise` first on PATH: records its working directory and
    /// arguments, one per line, in `<t>/mise.log`; `mise exec -- cmd...`
    /// runs the command; other calls exit with `$MISE_STATUS` (default 0).
    fn fake_mise(t: &Path) -> (String, PathBuf) {
        let dir = t.join("fake");
        std::fs::create_dir_all(&dir).unwrap();
        let log = t.join("mise.log");
        let script = format!(
            "#!/bin/sh\n{{ pwd; printf '%s\\n' \"$@\"; }} >> '{}'\n\
             if [ \"$1\" = exec ]; then shift; [ \"$1\" = -- ] && shift; exec \"$@\"; fi\n\
             exit \"${{MISE_STATUS:-0}}\"\n",
            log.display()
        );
        let mise = dir.join("mise");
        std::fs::write(&mise, script).unwrap();
        std::fs::set_permissions(&mise, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", dir.display(), bare_path(t));
        (path, log)
    }

    fn log_lines(log: &Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn mise_trust_without_mise_is_a_no_op() {
        let t = tempfile::tempdir().unwrap();
        let argv = mise_trust_argv("/nonexistent/repo");
        let out = run(&argv, &bare_path(t.path()), t.path());
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }

    #[test]
    fn mise_trust_runs_in_the_checkout_and_never_fails() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("my repo");
        std::fs::create_dir(&repo).unwrap();
        let (path, log) = fake_mise(t.path());

        let argv = mise_trust_argv(repo.to_str().unwrap());
        assert_eq!(argv[3], "banger-mise-trust");
        assert_eq!(argv[4], repo.to_str().unwrap());
        let out = run(&argv, &path, t.path());
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            log_lines(&log),
            [repo.to_str().unwrap(), "trust", "--quiet", "--all"]
        );

        // mise failing does not fail the step.
        let out = Command::new("/bin/sh")
            .args(&argv[1..])
            .env("PATH", &path)
            .env("MISE_STATUS", "3")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn bootstrap_without_mise_says_so_and_succeeds() {
        let t = tempfile::tempdir().unwrap();
        let out = run(
            &bootstrap_argv("/root/repo"),
            &bare_path(t.path()),
            t.path(),
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            "banger: mise is not installed in this guest; skipping tool bootstrap"
        );
    }

    #[test]
    fn bootstrap_runs_mise_install_in_the_checkout_with_its_status() {
        let t = tempfile::tempdir().unwrap();
        let repo = t.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let (path, log) = fake_mise(t.path());
        let argv = bootstrap_argv(repo.to_str().unwrap());

        let out = run(&argv, &path, t.path());
        assert!(out.status.success(), "{out:?}");
        assert_eq!(log_lines(&log), [repo.to_str().unwrap(), "install"]);

        let out = Command::new("/bin/sh")
            .args(&argv[1..])
            .env("PATH", &path)
            .env("MISE_STATUS", "7")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(7), "{out:?}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exec_passes_arguments_verbatim_and_the_exit_status() {
        let t = tempfile::tempdir().unwrap();
        let path = bare_path(t.path());
        let tricky = ["a b", "it's", "\"quoted\"", "$HOME", "`id`", "*", ""];
        let mut cmd = strings(&["sh", "-c", "printf '%s|' \"$@\"; exit 42", "x"]);
        cmd.extend(strings(&tricky));

        let out = run(&exec_argv(&cmd), &path, t.path());
        assert_eq!(out.status.code(), Some(42), "{out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a b|it's|\"quoted\"|$HOME|`id`|*||"
        );

        let out = run(&exec_argv(&[]), &path, t.path());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }

    #[test]
    fn exec_goes_through_mise_when_present() {
        let t = tempfile::tempdir().unwrap();
        let (path, log) = fake_mise(t.path());
        let cmd = strings(&["sh", "-c", "exit 42", "two words"]);
        let out = run(&exec_argv(&cmd), &path, t.path());
        assert_eq!(out.status.code(), Some(42), "{out:?}");
        let lines = log_lines(&log);
        assert_eq!(
            &lines[1..],
            ["exec", "--", "sh", "-c", "exit 42", "two words"]
        );
    }

    #[test]
    fn export_refuses_a_bad_base_commit() {
        for bad in ["", "abc", "xyz1", "-rf", "HEAD", "abcd ef", &"a".repeat(65)] {
            let err = export_argv("/root/repo", Some(bad)).unwrap_err();
            assert!(
                matches!(err, WorkspaceError::InvalidCommit { .. }),
                "{bad:?}: {err:?}"
            );
        }
        for good in ["abcd", "ABCDEF012345", &"f".repeat(40), &"0".repeat(64)] {
            let argv = export_argv("/root/repo", Some(good)).unwrap();
            assert_eq!(argv.last().unwrap(), good);
        }
    }

    struct Exported {
        _t: tempfile::TempDir,
        host: PathBuf,
        guest: PathBuf,
        base: String,
        path_env: String,
    }

    /// A host repo at `base`, and a "prepared" copy of it (as the guest has
    /// it) with a modified file, a new untracked file, an ignored file, a
    /// deleted file, and one commit on top of `base`.
    fn guest_with_changes() -> Exported {
        let (t, host) = new_repo();
        write(&host, ".gitignore", b"*.log\n");
        write(&host, "edit.txt", b"one\ntwo\n");
        write(&host, "remove.txt", b"bye\n");
        write(&host, "committed.txt", b"before\n");
        write(&host, "bin.dat", &[0, 1, 2, 3, 255]);
        let base = commit_all(&host, "base");

        let guest = t.path().join("guest repo");
        let st = Command::new("cp")
            .arg("-a")
            .arg(&host)
            .arg(&guest)
            .status()
            .unwrap();
        assert!(st.success());
        write(&guest, "committed.txt", b"after\n");
        commit_all(&guest, "guest commit");
        write(&guest, "edit.txt", b"one\n2\n");
        write(&guest, "new file.txt", b"fresh\n");
        write(&guest, "caf\u{e9}.txt", b"unicode name\n");
        write(&guest, "debug.log", b"ignored\n");
        write(&guest, "bin.dat", &[0, 1, 2, 3, 254, 0]);
        std::fs::remove_file(guest.join("remove.txt")).unwrap();
        let path_env = host_path();
        Exported {
            _t: t,
            host,
            guest,
            base,
            path_env,
        }
    }

    fn export(e: &Exported, base: Option<&str>) -> Vec<u8> {
        let argv = export_argv(e.guest.to_str().unwrap(), base).unwrap();
        let out = run(&argv, &e.path_env, Path::new("/"));
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }

    fn apply_check(repo: &Path, patch: &[u8]) {
        let p = repo.parent().unwrap().join("check.patch");
        std::fs::write(&p, patch).unwrap();
        git(repo, &["apply", "--check", p.to_str().unwrap()]);
    }

    fn leftovers(git_dir: &Path) -> Vec<String> {
        std::fs::read_dir(git_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("banger-"))
            .collect()
    }

    #[test]
    fn export_leaves_guest_commits_out_unless_given_the_base() {
        let e = guest_with_changes();
        let index = e.guest.join(".git/index");
        let index_before = std::fs::read(&index).unwrap();

        let plain = export(&e, None);
        let text = String::from_utf8_lossy(&plain);
        assert!(text.contains("diff --git a/edit.txt b/edit.txt"), "{text}");
        assert!(text.contains("+2\n"), "{text}");
        assert!(text.contains("new file mode 100644"), "{text}");
        assert!(text.contains("b/new file.txt"), "{text}");
        assert!(text.contains("caf\u{e9}.txt"), "quotepath off: {text}");
        assert!(text.contains("deleted file mode 100644"), "{text}");
        assert!(text.contains("GIT binary patch"), "{text}");
        assert!(!text.contains("debug.log"), "ignored file exported: {text}");
        assert!(
            !text.contains("committed.txt"),
            "guest commit exported: {text}"
        );
        apply_check(&e.host, &plain);

        let since_base = export(&e, Some(&e.base));
        let text = String::from_utf8_lossy(&since_base);
        assert!(text.contains("a/committed.txt"), "{text}");
        assert!(text.contains("+after"), "{text}");
        assert!(text.contains("b/new file.txt"), "{text}");
        assert!(text.contains("deleted file mode"), "{text}");
        apply_check(&e.host, &since_base);

        // An abbreviated base works too.
        let short = export(&e, Some(&e.base[..8]));
        assert_eq!(short, since_base);

        assert_eq!(std::fs::read(&index).unwrap(), index_before);
        assert!(leftovers(&e.guest.join(".git")).is_empty());
        // The guest's own status is as it was: nothing got staged.
        let status = git(&e.guest, &["status", "--porcelain"]);
        assert!(
            String::from_utf8_lossy(&status).contains("?? \"new file.txt\"")
                || String::from_utf8_lossy(&status).contains("?? new file.txt")
        );
    }

    #[test]
    fn export_of_an_unborn_repo_adds_everything() {
        let (_t, root) = new_repo();
        write(&root, ".gitignore", b"target/\n");
        write(&root, "src/a.rs", b"fn a() {}\n");
        write(&root, "target/junk", b"ignored\n");
        let argv = export_argv(root.to_str().unwrap(), None).unwrap();
        let out = run(&argv, &host_path(), Path::new("/"));
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        assert!(text.contains("b/src/a.rs"), "{text}");
        assert!(text.contains("b/.gitignore"), "{text}");
        assert!(!text.contains("junk"), "{text}");
        assert!(
            !root.join(".git/index").exists(),
            "the real index was created"
        );
        assert!(leftovers(&root.join(".git")).is_empty());

        let (_t2, empty) = new_repo();
        apply_check(&empty, &out.stdout);
    }

    #[test]
    fn export_fails_when_git_fails() {
        let e = guest_with_changes();
        // A base that does not exist in the guest.
        let argv = export_argv(e.guest.to_str().unwrap(), Some("deadbeefdeadbeef")).unwrap();
        let out = run(&argv, &e.path_env, Path::new("/"));
        assert!(!out.status.success(), "{out:?}");
        assert!(leftovers(&e.guest.join(".git")).is_empty());

        // Not a repository at all.
        let t = tempfile::tempdir().unwrap();
        let argv = export_argv(t.path().to_str().unwrap(), None).unwrap();
        let out = run(&argv, &e.path_env, Path::new("/"));
        assert_eq!(out.status.code(), Some(128), "{out:?}");
        assert!(out.stdout.is_empty());
    }
}
