//! The real `banger` binary: completion scripts, the dynamic completion
//! protocol with no daemon to ask, and man pages.
//!
//! Completion of VM names against a real daemon needs a VM; scripts/smoke
//! (scenario admin) checks that.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_banger");

/// banger with its state and runtime in `dir`, where no daemon runs.
fn banger(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("BANGER_STATE_DIR", dir.join("state"))
        .env("BANGER_RUNTIME_DIR", dir.join("run"))
        .env_remove("COMPLETE")
        .env("NO_COLOR", "1");
    c
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the engine offers for `words` (the last one being completed), asked
/// the way fish asks: one candidate per line, a tab before its help.
fn complete(dir: &Path, words: &[&str]) -> Vec<String> {
    let out = ok(banger(dir)
        .env("COMPLETE", "fish")
        .arg("--")
        .arg("banger")
        .args(words)
        .output()
        .unwrap());
    out.lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

#[test]
fn bash_script_registers_the_completer() {
    let dir = tempfile::tempdir().unwrap();
    let script = ok(banger(dir.path())
        .args(["completion", "bash"])
        .output()
        .unwrap());
    assert!(script.contains("COMPLETE=\"bash\""), "{script}");
    assert!(
        script.contains(BIN),
        "calls back into this binary: {script}"
    );
    // What the README tells people to put in ~/.bashrc.
    let out = ok(Command::new("bash")
        .arg("-c")
        .arg(r#"source <("$1" completion bash) && complete -p banger"#)
        .arg("bash")
        .arg(BIN)
        .output()
        .unwrap());
    assert!(out.contains("-F _clap_complete_banger banger"), "{out}");
}

#[test]
fn zsh_and_fish_scripts_call_back_into_banger() {
    let dir = tempfile::tempdir().unwrap();
    let zsh = ok(banger(dir.path())
        .args(["completion", "zsh"])
        .output()
        .unwrap());
    assert!(zsh.contains("#compdef banger"), "{zsh}");
    assert!(zsh.contains("COMPLETE=\"zsh\""), "{zsh}");
    let fish = ok(banger(dir.path())
        .args(["completion", "fish"])
        .output()
        .unwrap());
    assert!(fish.contains("--command banger"), "{fish}");
    assert!(fish.contains("COMPLETE=fish"), "{fish}");
    let out = banger(dir.path())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn subcommands_and_flags_complete() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(complete(dir.path(), &["vm", "ex"]), ["exec"]);
    assert_eq!(complete(dir.path(), &["kernel", "ca"]), ["catalog"]);
    assert!(complete(dir.path(), &["vm", "create", "--im"]).contains(&"--image".to_string()));
    // The bash side of the protocol: the index says which word is completed.
    let out = ok(banger(dir.path())
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "2")
        .args(["--", "banger", "vm", "sto"])
        .output()
        .unwrap());
    let mut got: Vec<&str> = out.split(['\n', '\u{b}']).collect();
    got.sort();
    assert_eq!(got, ["stop"]);
}

#[test]
fn names_without_a_daemon_are_no_candidates_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for words in [
        &["vm", "exec", ""][..],
        &["vm", "delete", "b"],
        &["vm", "create", "--image", ""],
        &["image", "show", ""],
        &["kernel", "pull", ""],
        &["image", "pull", "x", "--kernel", ""],
    ] {
        let t = Instant::now();
        let got = complete(dir.path(), words);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{words:?}: {:?}",
            t.elapsed()
        );
        // Only flags (the engine offers them when no value is known).
        assert!(got.iter().all(|c| c.starts_with('-')), "{words:?}: {got:?}");
    }
    // No daemon was started by a TAB.
    assert!(!dir.path().join("run/bangerd.sock").exists());
}

#[test]
fn man_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let listed = ok(banger(dir.path())
        .args(["man", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap());
    for page in [
        "banger.1",
        "banger-vm.1",
        "banger-vm-create.1",
        "banger-vm-workspace-export.1",
        "banger-kernel-pull.1",
        "banger-completion.1",
        "banger-man.1",
    ] {
        let path = out_dir.join(page);
        assert!(path.is_file(), "{page} missing; listed:\n{listed}");
        assert!(listed.contains(&path.display().to_string()));
    }
    let create = std::fs::read_to_string(out_dir.join("banger-vm-create.1")).unwrap();
    assert!(create.contains("\n.TH banger-vm-create 1 "), "{create}");
    assert!(create.contains("Create a VM and boot it"), "{create}");
    assert!(create.contains(".SH EXAMPLES"), "{create}");
    // One page printed, the same as the file.
    let printed = ok(banger(dir.path())
        .args(["man", "vm", "create"])
        .output()
        .unwrap());
    assert_eq!(printed, create);
    let bad = banger(dir.path())
        .args(["man", "vm", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // man-db renders it without a warning (scripts/install-deps installs it).
    if Command::new("man").arg("--version").output().is_ok() {
        let r = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(out_dir.join("banger-vm-create.1"))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success(), "{r:?}");
        assert!(
            r.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(text.contains("banger-vm-create"), "{text}");
    }
}
