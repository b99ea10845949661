//! A malicious-layer corpus, built here, one test per attack; then the
//! ordinary layering rules.
//!
//! Every attack runs with a `victim` directory beside the root; the test
//! checks that nothing outside the root changed (paths, bytes, modes) and
//! that nothing new appeared there.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// Builds a layer. Headers are written by hand (name and link name copied
/// into the raw fields) so that names the tar crate refuses (`..`,
/// absolute, bare `.wh.`) can be made too.
struct Layer(tar::Builder<Vec<u8>>, u64);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()), 0)
    }

    fn raw(mut self, name: &str, kind: EntryType, mode: u32, link: &str, data: &[u8]) -> Layer {
        self.raw_sized(name, kind, mode, link, data.len() as u64, data);
        self
    }

    fn raw_sized(
        &mut self,
        name: &str,
        kind: EntryType,
        mode: u32,
        link: &str,
        size: u64,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(self.1);
        h.set_gid(self.1);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }

    /// Owner (uid and gid) of the entries added after this.
    fn owner(mut self, id: u64) -> Layer {
        self.1 = id;
        self
    }

    fn file(self, name: &str, data: &str) -> Layer {
        self.raw(name, EntryType::Regular, 0o644, "", data.as_bytes())
    }

    fn dir(self, name: &str) -> Layer {
        self.raw(name, EntryType::Directory, 0o755, "", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Layer {
        self.raw(name, EntryType::Symlink, 0o777, target, b"")
    }

    fn hardlink(self, name: &str, target: &str) -> Layer {
        self.raw(name, EntryType::Link, 0o644, target, b"")
    }

    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

struct Env {
    tmp: tempfile::TempDir,
    root: PathBuf,
    victim: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let victim = tmp.path().join("victim");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(victim.join("sub")).unwrap();
    fs::write(victim.join("file"), "secret").unwrap();
    fs::write(victim.join("sub/inner"), "inner").unwrap();
    fs::set_permissions(victim.join("file"), fs::Permissions::from_mode(0o640)).unwrap();
    Env { tmp, root, victim }
}

/// Path → (mode, content or link target), for everything under `dir`
/// except `skip`, symlinks not followed.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p == skip {
                continue;
            }
            let meta = fs::symlink_metadata(&p).unwrap();
            let data = if meta.is_dir() {
                todo.push(p.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                fs::read(&p).unwrap()
            };
            out.insert(p, (meta.mode(), data));
        }
    }
    out
}

impl Env {
    fn run(&self, layers: Vec<Vec<u8>>, limits: Limits) -> Result<FlattenReport, FlattenError> {
        let mut f = Flattener::new(&self.root, limits)?;
        for (i, layer) in layers.iter().enumerate() {
            f.apply_layer(i, layer.as_slice())?;
        }
        Ok(f.finish())
    }

    /// Runs `layers`, checks nothing outside the root changed, and returns
    /// the error they must have caused.
    fn attack(&self, layers: Vec<Vec<u8>>, limits: Limits) -> FlattenError {
        let before = snapshot(self.tmp.path(), &self.root);
        assert!(before.contains_key(&self.victim.join("file")));
        let result = self.run(layers, limits);
        assert_eq!(
            snapshot(self.tmp.path(), &self.root),
            before,
            "outside the root changed"
        );
        match result {
            Ok(report) => panic!("the attack was accepted: {report:?}"),
            Err(e) => e,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn rejected(e: &FlattenError, needle: &str) {
    let msg = e.to_string();
    assert!(
        matches!(e, FlattenError::Rejected { .. }) && msg.contains(needle),
        "unexpected error: {msg}"
    );
}

// ---- attacks ----

#[test]
fn dotdot_traversal_is_rejected() {
    let env = env();
    let layer = Layer::new().file("../victim/file", "pwned").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "a .. component",
    );
    let layer = Layer::new().file("a/../../victim/new", "pwned").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "a .. component",
    );
}

#[test]
fn absolute_name_is_rejected() {
    let env = env();
    let name = format!("{}/file", env.victim.display());
    let layer = Layer::new().file(&name, "pwned").done();
    let e = env.attack(vec![layer], Limits::default());
    rejected(&e, "absolute name");
    assert!(e.to_string().starts_with("layer 0: entry "), "{e}");
}

#[test]
fn symlinked_ancestor_in_one_layer_is_not_followed() {
    let env = env();
    let layer = Layer::new()
        .symlink("link", "../victim")
        .file("link/pwned", "pwned")
        .file("link/file", "pwned")
        .done();
    rejected(&env.attack(vec![layer], Limits::default()), "is a symlink");
}

#[test]
fn symlinked_ancestor_across_layers_is_not_followed() {
    let env = env();
    let victim = env.victim.display().to_string();
    let lower = Layer::new()
        .symlink("etc", &victim)
        .symlink("up", "../../..")
        .done();
    let upper = Layer::new().file("etc/file", "pwned").done();
    let e = env.attack(vec![lower.clone(), upper], Limits::default());
    rejected(&e, "ancestor \"etc\" is a symlink");
    assert!(e.to_string().starts_with("layer 1: "), "{e}");

    let env = crate::oci::flatten::tests::env();
    let upper = Layer::new().file("up/tmp/pwned", "pwned").done();
    rejected(
        &env.attack(vec![lower, upper], Limits::default()),
        "is a symlink",
    );
}

#[test]
fn hardlink_outside_is_rejected() {
    let env = env();
    let layer = Layer::new().hardlink("stolen", "../victim/file").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "a .. component",
    );
    let target = format!("{}/file", env.victim.display());
    let layer = Layer::new().hardlink("stolen", &target).done();
    rejected(&env.attack(vec![layer], Limits::default()), "absolute name");
    assert!(!env.path("stolen").exists());
}

#[test]
fn hardlink_through_symlinked_ancestor_is_rejected() {
    let env = env();
    let lower = Layer::new().symlink("link", "../victim").done();
    let upper = Layer::new().hardlink("stolen", "link/file").done();
    rejected(
        &env.attack(vec![lower, upper], Limits::default()),
        "is a symlink",
    );
    assert!(fs::symlink_metadata(env.path("stolen")).is_err());
}

#[test]
fn hardlink_to_a_symlink_is_rejected() {
    let env = env();
    let victim = format!("{}/file", env.victim.display());
    let layer = Layer::new()
        .symlink("s", &victim)
        .hardlink("stolen", "s")
        .done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "not a regular file",
    );
}

#[test]
fn whiteout_dotdot_is_rejected() {
    let env = env();
    let layer = Layer::new().file("sub/.wh...", "").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "bad whiteout name",
    );
}

#[test]
fn bare_whiteout_is_rejected() {
    let env = env();
    let layer = Layer::new().file(".wh.", "").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "bad whiteout name",
    );
    let layer = Layer::new().file("d/.wh..", "").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "bad whiteout name",
    );
}

#[test]
fn whiteout_with_a_slash_after_the_prefix_is_rejected() {
    let env = env();
    let layer = Layer::new().file(".wh.link/file", "").done();
    rejected(
        &env.attack(vec![layer], Limits::default()),
        "whiteout name as an ancestor",
    );
}

#[test]
fn whiteout_through_symlinked_ancestor_deletes_nothing_outside() {
    let env = env();
    let lower = Layer::new().symlink("link", "../victim").done();
    let upper = Layer::new().file("link/.wh.file", "").done();
    rejected(
        &env.attack(vec![lower, upper], Limits::default()),
        "is a symlink",
    );
}

#[test]
fn opaque_marker_through_symlink_empties_nothing_outside() {
    let env = env();
    let victim = env.victim.display().to_string();
    let lower = Layer::new().symlink("link", &victim).done();
    let upper = Layer::new().file("link/.wh..wh..opq", "").done();
    rejected(
        &env.attack(vec![lower, upper], Limits::default()),
        "is a symlink",
    );
}

#[test]
fn device_nodes_are_skipped_and_reported() {
    let env = env();
    let layer = Layer::new()
        .raw("dev/sda", EntryType::Block, 0o660, "", b"")
        .raw("dev/mem", EntryType::Char, 0o640, "", b"")
        .raw("run/fifo", EntryType::Fifo, 0o600, "", b"")
        .file("etc/ok", "ok")
        .done();
    let before = snapshot(env.tmp.path(), &env.root);
    let report = env.run(vec![layer], Limits::default()).unwrap();
    assert_eq!(snapshot(env.tmp.path(), &env.root), before);
    assert_eq!(report.skipped_devices, ["dev/sda", "dev/mem", "run/fifo"]);
    for p in ["dev/sda", "dev/mem", "run/fifo"] {
        assert!(
            fs::symlink_metadata(env.path(p)).is_err(),
            "{p} was created"
        );
    }
    assert_eq!(fs::read(env.path("etc/ok")).unwrap(), b"ok");
}

#[test]
fn oversized_entry_is_rejected_before_reading() {
    let env = env();
    // The header claims a terabyte, the archive holds none of it: reading
    // the content would fail with an early end, not the limit.
    let mut layer = Layer::new();
    layer.raw_sized("big", EntryType::Regular, 0o644, "", 1 << 40, b"");
    let limits = Limits {
        max_entry_bytes: 1024,
        ..Limits::default()
    };
    let e = env.attack(vec![layer.done()], limits);
    assert!(matches!(e, FlattenError::Limit { layer: 0, .. }), "{e}");
    assert!(!env.path("big").exists());
}

#[test]
fn total_size_is_capped() {
    let env = env();
    let limits = Limits {
        max_total_bytes: 10,
        ..Limits::default()
    };
    let lower = Layer::new().file("a", "123456").done();
    let upper = Layer::new().file("b", "123456").done();
    let e = env.attack(vec![lower, upper], limits);
    assert!(matches!(e, FlattenError::Limit { layer: 1, .. }), "{e}");
}

#[test]
fn entry_count_bomb_is_rejected() {
    let env = env();
    let mut layer = Layer::new();
    for i in 0..50 {
        layer = layer.file(&format!("f{i}"), "x");
    }
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let e = env.attack(vec![layer.done()], limits);
    assert!(matches!(e, FlattenError::Limit { .. }), "{e}");
    assert!(e.to_string().contains("more than 10 entries"), "{e}");
}

/// Not an error: the symlink at the leaf is replaced, never written through.
#[test]
fn file_and_dir_over_a_symlink_leaf_replace_the_symlink() {
    let env = env();
    let victim = env.victim.display().to_string();
    let lower = Layer::new()
        .symlink("file-link", "../victim/file")
        .symlink("dir-link", &victim)
        .done();
    let upper = Layer::new()
        .file("file-link", "pwned")
        .dir("dir-link/")
        .file("dir-link/file", "pwned")
        .file("missing/.wh.x", "")
        .done();
    let before = snapshot(env.tmp.path(), &env.root);
    env.run(vec![lower, upper], Limits::default()).unwrap();
    assert_eq!(
        snapshot(env.tmp.path(), &env.root),
        before,
        "outside the root changed"
    );
    let meta = fs::symlink_metadata(env.path("file-link")).unwrap();
    assert!(meta.is_file());
    assert!(fs::symlink_metadata(env.path("dir-link")).unwrap().is_dir());
    assert_eq!(fs::read(env.path("dir-link/file")).unwrap(), b"pwned");
    assert!(!env.path("missing").exists());
}

#[test]
fn root_must_be_a_real_directory() {
    let env = env();
    let link = env.tmp.path().join("rootlink");
    std::os::unix::fs::symlink(&env.victim, &link).unwrap();
    assert!(matches!(
        Flattener::new(&link, Limits::default()),
        Err(FlattenError::Root { .. })
    ));
}

// ---- layering ----

#[test]
fn upper_layer_whiteouts_opaque_dirs_and_replacements() {
    let env = env();
    let lower = Layer::new()
        .file("etc/gone", "lower")
        .file("etc/kept", "lower")
        .file("opq/old", "lower")
        .file("opq/sub/deep", "lower")
        .file("was-file", "lower")
        .file("was-dir/child", "lower")
        .symlink("link-gone", "/etc/passwd")
        .done();
    let upper = Layer::new()
        .file("etc/.wh.gone", "")
        .file(".wh.link-gone", "")
        .file("opq/new", "upper")
        .file("opq/.wh..wh..opq", "")
        .dir("was-file/")
        .file("was-file/inside", "upper")
        .file("was-dir", "upper")
        .done();
    let report = env.run(vec![lower, upper], Limits::default()).unwrap();
    assert!(!env.path("etc/gone").exists());
    assert!(fs::symlink_metadata(env.path("link-gone")).is_err());
    assert_eq!(fs::read(env.path("etc/kept")).unwrap(), b"lower");
    let mut opq: Vec<_> = fs::read_dir(env.path("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opq.sort();
    assert_eq!(opq, ["new"]);
    assert!(env.path("was-file").is_dir());
    assert_eq!(fs::read(env.path("was-file/inside")).unwrap(), b"upper");
    assert_eq!(fs::read(env.path("was-dir")).unwrap(), b"upper");
    assert_eq!(report.whiteouts, 3);
    for p in ["etc/.wh.gone", "opq/.wh..wh..opq", ".wh.link-gone"] {
        assert!(
            fs::symlink_metadata(env.path(p)).is_err(),
            "{p} was created"
        );
    }
}

#[test]
fn whiteout_after_the_same_layers_file_keeps_it() {
    let env = env();
    let lower = Layer::new()
        .file("d/f", "lower")
        .file("d/other", "lower")
        .done();
    let upper = Layer::new()
        .file("d/f", "upper")
        .file("d/.wh.f", "")
        .file("d/.wh..wh..opq", "")
        .done();
    env.run(vec![lower, upper], Limits::default()).unwrap();
    assert_eq!(fs::read(env.path("d/f")).unwrap(), b"upper");
    assert!(!env.path("d/other").exists());
}

#[test]
fn directory_over_directory_keeps_contents_and_takes_the_mode() {
    let env = env();
    let lower = Layer::new().dir("d/").file("d/f", "lower").done();
    let upper = Layer::new()
        .raw("d/", EntryType::Directory, 0o750, "", b"")
        .done();
    env.run(vec![lower, upper], Limits::default()).unwrap();
    assert_eq!(fs::read(env.path("d/f")).unwrap(), b"lower");
    assert_eq!(fs::metadata(env.path("d")).unwrap().mode() & 0o7777, 0o750);
}

#[test]
fn hardlink_inside_the_tree_works() {
    let env = env();
    let lower = Layer::new().file("usr/bin/a", "binary").done();
    let upper = Layer::new().hardlink("usr/bin/b", "usr/bin/a").done();
    env.run(vec![lower, upper], Limits::default()).unwrap();
    let a = fs::metadata(env.path("usr/bin/a")).unwrap();
    let b = fs::metadata(env.path("usr/bin/b")).unwrap();
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_eq!(a.nlink(), 2);
}

#[test]
fn setuid_bits_are_kept_and_reported() {
    let env = env();
    let layer = Layer::new()
        .raw("usr/bin/sudo", EntryType::Regular, 0o4755, "", b"sudo")
        .raw("usr/bin/wall", EntryType::Regular, 0o2755, "", b"wall")
        .raw("tmp/", EntryType::Directory, 0o1777, "", b"")
        .file("usr/bin/ls", "ls")
        .done();
    let report = env.run(vec![layer], Limits::default()).unwrap();
    let mode = |p: &str| fs::symlink_metadata(env.path(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("usr/bin/sudo"), 0o4755);
    assert_eq!(mode("usr/bin/wall"), 0o2755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("usr/bin/ls"), 0o644);
    assert_eq!(report.setuid, ["usr/bin/sudo", "usr/bin/wall"]);
}

#[test]
fn owners_are_applied_as_root() {
    let env = env();
    let layer = Layer::new()
        .owner(1234)
        .file("home/u/f", "x")
        .dir("home/u/d/")
        .symlink("home/u/l", "/nowhere")
        .done();
    env.run(vec![layer], Limits::default()).unwrap();
    let owner = |p: &str| {
        let m = fs::symlink_metadata(env.path(p)).unwrap();
        (m.uid(), m.gid())
    };
    let want = if nix::unistd::geteuid().is_root() {
        (1234, 1234)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    };
    for p in ["home/u/f", "home/u/d", "home/u/l"] {
        assert_eq!(owner(p), want, "{p}");
    }
}

#[test]
fn symlink_leaf_is_kept_verbatim() {
    let env = env();
    let layer = Layer::new()
        .symlink("etc-link", "/etc")
        .symlink("up", "../../..")
        .file("lib/x", "x")
        .symlink("lib/x", "../victim/file")
        .done();
    let report = env.run(vec![layer], Limits::default()).unwrap();
    let target = |p: &str| fs::read_link(env.path(p)).unwrap();
    assert_eq!(target("etc-link"), Path::new("/etc"));
    assert_eq!(target("up"), Path::new("../../.."));
    assert_eq!(target("lib/x"), Path::new("../victim/file"));
    assert_eq!(fs::read(env.victim.join("file")).unwrap(), b"secret");
    assert_eq!(report.entries, 4);
}

#[test]
fn names_are_checked() {
    let ok = |p: &[u8]| split_path(p).unwrap();
    assert_eq!(ok(b"./etc/passwd"), [b"etc".to_vec(), b"passwd".to_vec()]);
    assert_eq!(ok(b"etc/"), [b"etc".to_vec()]);
    assert!(ok(b"./").is_empty());
    for bad in [
        &b""[..],
        b"/etc",
        b"a/../b",
        b"..",
        b"a//b",
        b"a/./b",
        b"a\0b",
        b".wh.x/y",
    ] {
        assert!(split_path(bad).is_err(), "{bad:?}");
    }
}
