//! Unpacking a verified release tarball: exactly the four binaries, as
//! fresh 0755 files in a new directory, nothing else.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::UpdateError;

/// The top-level entries a release tarball holds, no more, no fewer.
pub const EXPECTED_ENTRIES: [&str; 4] = ["banger", "bangerd", "banger-helper", "banger-agent"];
/// Most bytes one binary may unpack to.
pub const MAX_STAGED_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Most bytes read after the tar's end marker (tar pads to 10 KiB records;
/// reading to the end also checks the gzip trailer).
const MAX_TRAILING_BYTES: u64 = 1024 * 1024;

/// The unpacked binaries of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedRelease {
    /// The directory [`stage_tarball`] created (mode 0700).
    pub dir: PathBuf,
    pub banger: PathBuf,
    pub bangerd: PathBuf,
    pub helper: PathBuf,
    pub agent: PathBuf,
}

/// Unpacks the gzip'd tar `tarball` into `dest`, a new directory (its
/// parent must exist; `dest` must not).
///
/// The archive must hold exactly [`EXPECTED_ENTRIES`] at its top level, as
/// regular files (a leading `./` is fine, and so is a `./` entry for the
/// archive root itself, as `tar -C dir .` writes). Anything else is refused:
/// other or missing names, duplicates, `..` or absolute paths,
/// directories, symlinks, hard links, devices, FIFOs, and files over
/// [`MAX_STAGED_FILE_BYTES`]. Each file is created with `O_EXCL` and
/// `O_NOFOLLOW` and ends up mode 0755 whatever the header says. On any
/// error `dest` is removed again.
pub fn stage_tarball(tarball: &Path, dest: &Path) -> Result<StagedRelease, UpdateError> {
    stage_capped(tarball, dest, MAX_STAGED_FILE_BYTES)
}

fn stage_capped(tarball: &Path, dest: &Path, cap: u64) -> Result<StagedRelease, UpdateError> {
    let file = std::fs::File::open(tarball).map_err(|source| UpdateError::Io {
        context: format!("opening {}", tarball.display()),
        source,
    })?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|source| UpdateError::Io {
            context: format!("creating {}", dest.display()),
            source,
        })?;
    let guard = RemoveOnDrop(Some(dest));
    unpack(file, tarball, dest, cap)?;
    std::mem::forget(guard);
    Ok(StagedRelease {
        dir: dest.to_path_buf(),
        banger: dest.join("banger"),
        bangerd: dest.join("bangerd"),
        helper: dest.join("banger-helper"),
        agent: dest.join("banger-agent"),
    })
}

/// Removes the directory it names when dropped (an error, or a panic).
struct RemoveOnDrop<'a>(Option<&'a Path>);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unpack(file: std::fs::File, tarball: &Path, dest: &Path, cap: u64) -> Result<(), UpdateError> {
    let bad = |problem: String| UpdateError::Tarball {
        tarball: tarball.display().to_string(),
        problem,
    };
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("reading tar: {e}")))?;
    let mut seen = HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("reading tar: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let name = std::str::from_utf8(&raw)
            .map_err(|_| bad(format!("entry {shown:?} is not a UTF-8 name")))?;
        let name = name.strip_prefix("./").unwrap_or(name);
        let kind = entry.header().entry_type();
        if (name.is_empty() || name == ".") && kind.is_dir() {
            // The archive root (`./`): nothing to create.
            continue;
        }
        if name.starts_with('/') {
            return Err(bad(format!("entry {shown:?} is an absolute path")));
        }
        if name.split('/').any(|part| part == "..") {
            return Err(bad(format!("entry {shown:?} has a '..' component")));
        }
        if kind != tar::EntryType::Regular {
            return Err(bad(format!(
                "entry {shown:?} is a {kind:?}; only regular files are allowed"
            )));
        }
        let Some(&expected) = EXPECTED_ENTRIES.iter().find(|&&n| n == name) else {
            return Err(bad(format!(
                "unexpected entry {shown:?}; a release holds exactly {}",
                EXPECTED_ENTRIES.join(", ")
            )));
        };
        if !seen.insert(expected) {
            return Err(bad(format!("{expected} appears twice")));
        }
        let size = entry.size();
        if size > cap {
            return Err(bad(format!(
                "{expected} is {size} bytes, over the cap of {cap} bytes"
            )));
        }
        let path = dest.join(expected);
        let io = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |source| UpdateError::Io { context, source }
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io("creating"))?;
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| {
            // A read error here is the archive's (truncated, bad gzip).
            bad(format!("reading {expected}: {e}"))
        })?;
        if copied != size {
            return Err(bad(format!(
                "{expected} is truncated: {copied} of {size} bytes"
            )));
        }
        // The umask may have narrowed the mode at creation.
        out.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod"))?;
        out.flush().map_err(io("writing"))?;
        out.sync_all().map_err(io("syncing"))?;
    }
    let missing: Vec<&str> = EXPECTED_ENTRIES
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("missing {}", missing.join(", "))));
    }
    // Read to the end, so a corrupt gzip trailer (crc, length) is noticed.
    let mut rest = archive.into_inner().take(MAX_TRAILING_BYTES + 1);
    let trailing = std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| bad(format!("after the tar: {e}")))?;
    if trailing > MAX_TRAILING_BYTES {
        return Err(bad(format!(
            "more than {MAX_TRAILING_BYTES} bytes after the tar's end"
        )));
    }
    if let Ok(dir) = std::fs::File::open(dest) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{file, release_entries, special, tarball, Entry};
    use banger_fetch::testkit::listing;
    use std::os::unix::fs::MetadataExt;

    fn write_tarball(dir: &Path, entries: &[Entry]) -> PathBuf {
        let path = dir.join("release.tar.gz");
        std::fs::write(&path, tarball(entries)).unwrap();
        path
    }

    #[test]
    fn stages_the_four_binaries_as_0755() {
        let tmp = tempfile::tempdir().unwrap();
        let mut entries = release_entries();
        entries[0].mode = 0o600;
        entries[1].mode = 0o4777; // setuid in the header: dropped.
        let t = write_tarball(tmp.path(), &entries);
        let dest = tmp.path().join("staged");
        let s = stage_tarball(&t, &dest).unwrap();
        assert_eq!(s.dir, dest);
        assert_eq!(s.banger, dest.join("banger"));
        assert_eq!(s.bangerd, dest.join("bangerd"));
        assert_eq!(s.helper, dest.join("banger-helper"));
        assert_eq!(s.agent, dest.join("banger-agent"));
        assert_eq!(
            listing(&dest),
            ["banger", "banger-agent", "banger-helper", "bangerd"]
        );
        for (p, n) in [
            (&s.banger, "banger"),
            (&s.bangerd, "bangerd"),
            (&s.helper, "banger-helper"),
            (&s.agent, "banger-agent"),
        ] {
            let meta = std::fs::symlink_metadata(p).unwrap();
            assert!(meta.file_type().is_file());
            assert_eq!(meta.mode() & 0o7777, 0o755, "{n}");
            assert_eq!(
                std::fs::read_to_string(p).unwrap(),
                format!("#!/bin/sh\necho {n}\n")
            );
        }
        assert_eq!(std::fs::metadata(&dest).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn dot_slash_names_and_the_root_entry_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let mut entries = vec![special("./", tar::EntryType::Directory)];
        for mut e in release_entries() {
            e.name.splice(0..0, *b"./");
            entries.push(e);
        }
        let t = write_tarball(tmp.path(), &entries);
        let s = stage_tarball(&t, &tmp.path().join("staged")).unwrap();
        assert!(s.agent.is_file());
    }

    fn assert_refused(entries: Vec<Entry>, needle: &str) {
        assert_refused_capped(entries, MAX_STAGED_FILE_BYTES, needle);
    }

    fn assert_refused_capped(entries: Vec<Entry>, cap: u64, needle: &str) {
        let tmp = tempfile::tempdir().unwrap();
        let t = write_tarball(tmp.path(), &entries);
        let dest = tmp.path().join("staged");
        let e = stage_capped(&t, &dest, cap).unwrap_err();
        assert!(matches!(e, UpdateError::Tarball { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
        assert!(e.to_string().contains("release.tar.gz"), "{e}");
        assert_eq!(listing(tmp.path()), ["release.tar.gz"], "{e}");
    }

    fn with(extra: Entry) -> Vec<Entry> {
        let mut v = release_entries();
        v.insert(2, extra);
        v
    }

    #[test]
    fn extra_missing_and_duplicate_entries_are_refused() {
        assert_refused(with(file("README", b"hi")), "unexpected entry \"README\"");
        assert_refused(
            with(file("bin/banger", b"x")),
            "unexpected entry \"bin/banger\"",
        );
        assert_refused(with(file("banger", b"again")), "banger appears twice");
        assert_refused(with(file("./banger", b"again")), "banger appears twice");
        let mut three = release_entries();
        three.remove(2);
        assert_refused(three, "missing banger-helper");
        assert_refused(
            vec![],
            "missing banger, bangerd, banger-helper, banger-agent",
        );
    }

    #[test]
    fn escaping_names_are_refused() {
        assert_refused(with(file("../banger", b"x")), "'..'");
        assert_refused(with(file("a/../../x", b"x")), "'..'");
        assert_refused(with(file("/usr/bin/banger", b"x")), "absolute path");
        assert_refused(with(file(".//etc/x", b"x")), "absolute path");
    }

    #[test]
    fn non_regular_entries_are_refused() {
        use tar::EntryType::*;
        for kind in [Directory, Symlink, Link, Char, Block, Fifo, Continuous] {
            // Under an expected name, so only the type is wrong.
            let mut e = special("banger-helper", kind);
            if matches!(kind, Symlink | Link) {
                e.link = Some("/usr/bin/sudo");
            }
            let mut entries = release_entries();
            entries[2] = e;
            assert_refused(entries, "only regular files are allowed");
        }
        // A GNU sparse header without its map does not even parse; refused
        // all the same.
        let mut entries = release_entries();
        entries[2] = special("banger-helper", GNUSparse);
        assert_refused(entries, "release tarball");
        // A directory of another name too.
        assert_refused(with(special("extra/", Directory)), "only regular files");
        // `git archive` puts a pax global header first.
        let mut entries = release_entries();
        entries.insert(0, special("pax_global_header", XGlobalHeader));
        assert_refused(entries, "only regular files");
    }

    #[test]
    fn oversized_files_are_refused() {
        let mut entries = release_entries();
        entries[1].data = vec![0; 2000];
        assert_refused_capped(entries, 1000, "bangerd is 2000 bytes, over the cap of 1000");
    }

    #[test]
    fn corrupt_archives_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("staged");
        let good = tarball(&release_entries());
        // Not gzip at all; truncated; a flipped byte in the crc trailer.
        let mut bad_crc = good.clone();
        let n = bad_crc.len();
        bad_crc[n - 6] ^= 0xff;
        for (data, needle) in [
            (b"plain text".to_vec(), "reading"),
            (good[..good.len() / 2].to_vec(), ""),
            (bad_crc, ""),
        ] {
            let t = tmp.path().join("release.tar.gz");
            std::fs::write(&t, &data).unwrap();
            let e = stage_tarball(&t, &dest).unwrap_err();
            assert!(matches!(e, UpdateError::Tarball { .. }), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
            assert_eq!(listing(tmp.path()), ["release.tar.gz"], "{e}");
        }
    }

    #[test]
    fn dest_must_be_new_and_is_left_alone_when_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let t = write_tarball(tmp.path(), &release_entries());
        let dest = tmp.path().join("staged");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("keep"), b"keep").unwrap();
        let e = stage_tarball(&t, &dest).unwrap_err();
        assert!(matches!(e, UpdateError::Io { .. }), "{e}");
        assert!(e.to_string().contains("staged"), "{e}");
        assert_eq!(listing(&dest), ["keep"]);
        // A symlink in its place is not followed either.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dest, &link).unwrap();
        assert!(stage_tarball(&t, &link).is_err());
        assert_eq!(listing(&dest), ["keep"]);
        // Nor is a missing tarball a reason to create anything.
        let e = stage_tarball(&tmp.path().join("nope.tar.gz"), &tmp.path().join("s2")).unwrap_err();
        assert!(e.to_string().contains("nope.tar.gz"), "{e}");
        assert!(!tmp.path().join("s2").exists());
    }
}
