//! The files behind `vm logs`: a capped, time-indexed log the daemon
//! writes ([`LogStore`]), and the tail of a raw file a VMM writes
//! ([`RawTail`]).
//!
//! A VMM writes the guest console and its own log to raw files with its own
//! file descriptors (QEMU's `-chardev file` and `-D`, Firecracker's serial
//! and logger files). The daemon never truncates or renames those: it reads
//! what was appended, copies it into the store with the time it read it,
//! and punches the consumed front of the raw file out (`FALLOC_FL_PUNCH_HOLE`),
//! so the raw file's blocks are freed while the VMM keeps writing at its
//! offset. See docs/decisions.md.
//!
//! A store `<dir>/<name>.log` is the bytes as the guest wrote them;
//! `<name>.idx` has one `<unix ms> <offset>` line per append. When the
//! current pair would pass half the cap it becomes `<name>.log.1` /
//! `<name>.idx.1` (replacing the older pair), so between half the cap and
//! the whole cap of the newest output is kept.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The longest index line: two i64/u64 values, a space, a newline.
const MAX_INDEX_LINE: u64 = 42;
/// The raw file's consumed front is freed once this much more was read.
const PUNCH_STEP: u64 = 256 * 1024;
/// Punched ranges are rounded down to this (a multiple of any block size
/// in use; a partial block would only be zeroed, not freed).
const PUNCH_ALIGN: u64 = 64 * 1024;

/// Bytes a log received at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub time_ms: i64,
    pub data: Vec<u8>,
}

fn store_paths(dir: &Path, name: &str) -> [PathBuf; 4] {
    [
        dir.join(format!("{name}.log")),
        dir.join(format!("{name}.idx")),
        dir.join(format!("{name}.log.1")),
        dir.join(format!("{name}.idx.1")),
    ]
}

/// A capped, time-indexed log; the only writer of its files.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    name: String,
    cap: u64,
    log: File,
    idx: File,
    log_len: u64,
    idx_len: u64,
    last_time: Option<i64>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

fn parse_index(text: &[u8]) -> Vec<(i64, u64)> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| {
            let (t, o) = l.split_once(' ')?;
            Some((t.parse().ok()?, o.parse().ok()?))
        })
        .collect()
}

fn mtime_ms(f: &File) -> i64 {
    f.metadata()
        .map(|m| m.mtime() * 1000 + m.mtime_nsec() / 1_000_000)
        .unwrap_or(0)
}

impl LogStore {
    /// Opens (creating) the store `name` in `dir`. `cap` bounds the bytes
    /// kept on disk, both generations and their indexes together.
    pub fn open(dir: &Path, name: &str, cap: u64) -> io::Result<LogStore> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let [log_path, idx_path, _, _] = store_paths(dir, name);
        let log = open_append(&log_path)?;
        let mut idx = open_append(&idx_path)?;
        let log_len = log.metadata()?.len();
        let mut text = Vec::new();
        (&idx).read_to_end(&mut text)?;
        let entries = parse_index(&text);
        // An index that points past the log, or is missing for a log that
        // has data (a crash between the two writes), is rebuilt.
        let sane = entries.windows(2).all(|w| w[0].1 <= w[1].1)
            && entries.iter().all(|e| e.1 <= log_len)
            && (log_len == 0 || entries.first().is_some_and(|e| e.1 == 0));
        let (idx_len, last_time) = if sane {
            (text.len() as u64, entries.last().map(|e| e.0))
        } else {
            idx.set_len(0)?;
            let mut kept: Vec<(i64, u64)> = entries
                .into_iter()
                .filter(|e| e.1 < log_len.max(1))
                .collect();
            kept.sort_by_key(|e| e.1);
            kept.dedup_by_key(|e| e.1);
            if log_len > 0 && kept.first().is_none_or(|e| e.1 != 0) {
                let t = kept.first().map(|e| e.0).unwrap_or_else(|| mtime_ms(&log));
                kept.insert(0, (t, 0));
            }
            let mut s = String::new();
            for (t, o) in &kept {
                s.push_str(&format!("{t} {o}\n"));
            }
            idx.write_all(s.as_bytes())?;
            (s.len() as u64, kept.last().map(|e| e.0))
        };
        Ok(LogStore {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            cap: cap.max(4 * MAX_INDEX_LINE),
            log,
            idx,
            log_len,
            idx_len,
            last_time,
        })
    }

    fn half(&self) -> u64 {
        self.cap / 2
    }

    /// Appends `data`, received at `time_ms`. Rotates first when the
    /// current generation would pass half the cap; of a single append
    /// larger than that, only the newest part is kept.
    pub fn append(&mut self, time_ms: i64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let needed = data.len() as u64 + MAX_INDEX_LINE;
        if self.log_len > 0 && self.log_len + self.idx_len + needed > self.half() {
            self.rotate()?;
        }
        let room = self.half().saturating_sub(MAX_INDEX_LINE) as usize;
        let data = &data[data.len().saturating_sub(room)..];
        self.log.write_all(data)?;
        // One entry per distinct time: appends within the same millisecond
        // share the earlier entry.
        if self.last_time != Some(time_ms) || self.log_len == 0 {
            let line = format!("{time_ms} {}\n", self.log_len);
            self.idx.write_all(line.as_bytes())?;
            self.idx_len += line.len() as u64;
            self.last_time = Some(time_ms);
        }
        self.log_len += data.len() as u64;
        Ok(())
    }

    /// The current pair becomes generation `.1`; new files start.
    fn rotate(&mut self) -> io::Result<()> {
        let [log, idx, log1, idx1] = store_paths(&self.dir, &self.name);
        std::fs::rename(&idx, &idx1)?;
        std::fs::rename(&log, &log1)?;
        self.log = open_append(&log)?;
        self.idx = open_append(&idx)?;
        self.log.set_len(0)?;
        self.idx.set_len(0)?;
        self.log_len = 0;
        self.idx_len = 0;
        self.last_time = None;
        Ok(())
    }

    /// Everything kept, oldest first (see [`read_store`]).
    pub fn read(&self, since_ms: Option<i64>) -> io::Result<Vec<Chunk>> {
        read_store(&self.dir, &self.name, since_ms)
    }

    /// Bytes on disk: both generations and their indexes.
    #[cfg(test)]
    fn disk_bytes(&self) -> u64 {
        store_paths(&self.dir, &self.name)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// One generation's chunks, oldest first.
fn read_generation(log_path: &Path, idx_path: &Path) -> io::Result<Vec<Chunk>> {
    let mut log = match File::open(log_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    log.read_to_end(&mut data)?;
    let entries = match std::fs::read(idx_path) {
        Ok(text) => parse_index(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let len = data.len() as u64;
    // Offsets must rise and stay inside the log; anything else is skipped.
    let mut marks: Vec<(i64, u64)> = Vec::new();
    for (t, o) in entries {
        if o <= len && marks.last().is_none_or(|m| o > m.1) {
            marks.push((t, o));
        }
    }
    if marks.first().is_none_or(|m| m.1 != 0) && !data.is_empty() {
        let t = marks.first().map(|m| m.0).unwrap_or_else(|| mtime_ms(&log));
        marks.insert(0, (t, 0));
    }
    let mut out = Vec::with_capacity(marks.len());
    for (i, (t, start)) in marks.iter().enumerate() {
        let end = marks.get(i + 1).map(|m| m.1).unwrap_or(len);
        if end > *start {
            out.push(Chunk {
                time_ms: *t,
                data: data[*start as usize..end as usize].to_vec(),
            });
        }
    }
    Ok(out)
}

/// What the store `name` in `dir` keeps, oldest first. With `since_ms`,
/// only chunks received at or after it, starting at the beginning of the
/// line the first of them continues (a line is shown whole).
pub fn read_store(dir: &Path, name: &str, since_ms: Option<i64>) -> io::Result<Vec<Chunk>> {
    let [log, idx, log1, idx1] = store_paths(dir, name);
    let mut chunks = read_generation(&log1, &idx1)?;
    chunks.extend(read_generation(&log, &idx)?);
    Ok(match since_ms {
        Some(cutoff) => since(chunks, cutoff),
        None => chunks,
    })
}

fn since(mut chunks: Vec<Chunk>, cutoff: i64) -> Vec<Chunk> {
    let Some(first) = chunks.iter().position(|c| c.time_ms >= cutoff) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if first > 0 {
        let prev = &chunks[first - 1];
        if !prev.data.ends_with(b"\n") {
            let start = prev
                .data
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(0);
            out.push(Chunk {
                time_ms: prev.time_ms,
                data: prev.data[start..].to_vec(),
            });
        }
    }
    out.extend(chunks.drain(first..));
    out
}

/// Whether freeing a raw file's consumed front still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Punch {
    Working,
    /// The filesystem (or a read-only open) refused; the raw file grows
    /// as it did before banger kept logs.
    Unsupported,
}

/// The reading end of a raw file another process appends to.
///
/// The position survives daemon restarts in `pos_path` (`<inode> <offset>`),
/// so a re-adopted VM's output is neither lost nor copied twice (apart from
/// the last read before a crash).
#[derive(Debug)]
pub struct RawTail {
    path: PathBuf,
    pos_path: PathBuf,
    file: Option<File>,
    ino: u64,
    offset: u64,
    saved: u64,
    punched: u64,
    punch: Punch,
}

impl RawTail {
    pub fn new(path: PathBuf, pos_path: PathBuf) -> RawTail {
        RawTail {
            path,
            pos_path,
            file: None,
            ino: 0,
            offset: 0,
            saved: 0,
            punched: 0,
            punch: Punch::Working,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> io::Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        let f = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                self.punch = Punch::Unsupported;
                File::open(&self.path)?
            }
            Err(e) => return Err(e),
        };
        let md = f.metadata()?;
        self.ino = md.ino();
        self.offset = std::fs::read_to_string(&self.pos_path)
            .ok()
            .and_then(|s| {
                let (ino, off) = s.trim().split_once(' ')?;
                Some((ino.parse::<u64>().ok()?, off.parse::<u64>().ok()?))
            })
            .filter(|(ino, off)| *ino == self.ino && *off <= md.len())
            .map(|(_, off)| off)
            .unwrap_or(0);
        self.saved = self.offset;
        self.punched = 0;
        self.file = Some(f);
        Ok(true)
    }

    /// What was appended since the last read, at most `max` bytes. Empty
    /// when there is nothing new or the file does not exist (yet).
    pub fn read_new(&mut self, max: usize) -> io::Result<Vec<u8>> {
        if !self.open()? {
            return Ok(Vec::new());
        }
        let f = self.file.as_ref().expect("opened");
        let len = f.metadata()?.len();
        if len < self.offset {
            // Truncated under us: start over.
            self.offset = 0;
            self.punched = 0;
        }
        let want = (len - self.offset).min(max as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match f.read_at(&mut buf[got..], self.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        self.offset += got as u64;
        Ok(buf)
    }

    /// Everything read so far is stored: remember the position and free
    /// the consumed front of the raw file. Returns whether punching still
    /// works (it is given up after the first refusal).
    pub fn commit(&mut self) -> io::Result<Punch> {
        if self.offset != self.saved {
            let tmp = self.pos_path.with_extension("pos.tmp");
            std::fs::write(&tmp, format!("{} {}\n", self.ino, self.offset))?;
            std::fs::rename(&tmp, &self.pos_path)?;
            self.saved = self.offset;
        }
        let end = self.offset / PUNCH_ALIGN * PUNCH_ALIGN;
        if self.punch == Punch::Working && end >= self.punched + PUNCH_STEP {
            let f = self.file.as_ref().expect("read before commit");
            if let Err(e) = punch_hole(f, self.punched, end - self.punched) {
                self.punch = Punch::Unsupported;
                return Err(e);
            }
            self.punched = end;
        }
        Ok(self.punch)
    }
}

fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The position file of a raw source, beside its store.
pub fn pos_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pos"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[Chunk]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .collect()
    }

    #[test]
    fn appends_read_back_with_their_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), "console", 1 << 20).unwrap();
        s.append(1000, b"Linux version 6.1\n").unwrap();
        s.append(1000, b"more in the same ms\n").unwrap();
        s.append(2000, b"systemd[1]: started\n").unwrap();
        s.append(3000, b"").unwrap();
        let c = s.read(None).unwrap();
        assert_eq!(
            c,
            vec![
                Chunk {
                    time_ms: 1000,
                    data: b"Linux version 6.1\nmore in the same ms\n".to_vec()
                },
                Chunk {
                    time_ms: 2000,
                    data: b"systemd[1]: started\n".to_vec()
                },
            ]
        );
        // The log file is the bytes exactly as written.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("console.log")).unwrap(),
            "Linux version 6.1\nmore in the same ms\nsystemd[1]: started\n"
        );
        // Reopening continues the same files.
        drop(s);
        let mut s = LogStore::open(dir.path(), "console", 1 << 20).unwrap();
        s.append(4000, b"after reopen\n").unwrap();
        let c = s.read(None).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[2].time_ms, 4000);
        assert!(text(&c).ends_with("started\nafter reopen\n"));
    }

    #[test]
    fn rotation_keeps_the_newest_and_stays_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 4096;
        let mut s = LogStore::open(dir.path(), "console", cap).unwrap();
        for i in 0..200 {
            let line = format!("line {i:04} {}\n", "x".repeat(40));
            s.append(i, line.as_bytes()).unwrap();
            assert!(s.disk_bytes() <= cap, "{} > {cap} at {i}", s.disk_bytes());
        }
        assert!(dir.path().join("console.log.1").exists());
        let kept = text(&s.read(None).unwrap());
        assert!(kept.ends_with(&format!("line 0199 {}\n", "x".repeat(40))));
        assert!(!kept.contains("line 0000 "), "the oldest lines are gone");
        // A good part of the cap is output (the rest is index), in order.
        assert!(kept.len() as u64 >= cap / 4, "{} bytes kept", kept.len());
        let nums: Vec<u32> = kept.lines().map(|l| l[5..9].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        // Times survive rotation.
        let c = s.read(None).unwrap();
        assert_eq!(c.last().unwrap().time_ms, 199);
    }

    #[test]
    fn an_append_larger_than_half_the_cap_keeps_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), "vmm", 1000).unwrap();
        s.append(1, b"old\n").unwrap();
        let big: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        s.append(2, &big).unwrap();
        let c = s.read(None).unwrap();
        let all: Vec<u8> = c.iter().flat_map(|c| c.data.clone()).collect();
        assert!(all.ends_with(&big[big.len() - 100..]));
        assert!(all.len() < 1000);
        assert!(s.disk_bytes() <= 1000);
        assert_eq!(c.last().unwrap().time_ms, 2);
    }

    #[test]
    fn since_starts_at_the_line_the_first_new_chunk_continues() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), "console", 1 << 20).unwrap();
        s.append(1000, b"a\nb").unwrap();
        s.append(2000, b"c\n").unwrap();
        s.append(3000, b"d\n").unwrap();
        assert_eq!(text(&s.read(Some(2000)).unwrap()), "bc\nd\n");
        assert_eq!(text(&s.read(Some(2500)).unwrap()), "d\n");
        assert_eq!(text(&s.read(Some(0)).unwrap()), "a\nbc\nd\n");
        assert!(s.read(Some(3001)).unwrap().is_empty());
        // The kept partial line carries its own time.
        assert_eq!(s.read(Some(2000)).unwrap()[0].time_ms, 1000);
    }

    #[test]
    fn since_reaches_into_the_older_generation() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path(), "console", 400).unwrap();
        for i in 0..20 {
            s.append(i * 10, format!("l{i:02}\n").as_bytes()).unwrap();
        }
        assert!(dir.path().join("console.log.1").exists());
        let all = text(&s.read(None).unwrap());
        let recent = text(&s.read(Some(150)).unwrap());
        assert_eq!(recent, "l15\nl16\nl17\nl18\nl19\n");
        assert!(all.ends_with(&recent) && all.len() > recent.len());
    }

    #[test]
    fn a_damaged_index_is_rebuilt_on_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("console.log"), b"kept\n").unwrap();
        std::fs::write(dir.path().join("console.idx"), b"5 0\n9 99\ngarbage\n").unwrap();
        let mut s = LogStore::open(dir.path(), "console", 1 << 20).unwrap();
        s.append(10, b"new\n").unwrap();
        let c = s.read(None).unwrap();
        assert_eq!(
            c,
            vec![
                Chunk {
                    time_ms: 5,
                    data: b"kept\n".to_vec()
                },
                Chunk {
                    time_ms: 10,
                    data: b"new\n".to_vec()
                },
            ]
        );
        // A log without any index gets one at its start.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmm.log"), b"orphan\n").unwrap();
        let s = LogStore::open(dir.path(), "vmm", 1 << 20).unwrap();
        assert_eq!(text(&s.read(None).unwrap()), "orphan\n");
    }

    #[test]
    fn a_missing_store_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_store(&dir.path().join("nope"), "console", None)
            .unwrap()
            .is_empty());
    }

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn raw_tail_reads_appends_and_frees_what_it_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("console.raw");
        let pos = pos_path(dir.path(), "console");
        // The writer: an O_APPEND descriptor, as QEMU's file chardev has.
        let mut w = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&raw)
            .unwrap();
        let mut t = RawTail::new(raw.clone(), pos.clone());
        let block = vec![b'x'; 1 << 20];
        for _ in 0..4 {
            w.write_all(&block).unwrap();
        }
        w.write_all(b"tail\n").unwrap();
        let mut total = 0;
        loop {
            let got = t.read_new(1 << 20).unwrap();
            if got.is_empty() {
                break;
            }
            total += got.len();
        }
        assert_eq!(total, 4 * (1 << 20) + 5);
        let punch = t.commit().unwrap();
        if punch == Punch::Working {
            // The consumed front is freed; the apparent size stays.
            assert!(
                allocated(&raw) < 1 << 20,
                "{} bytes allocated",
                allocated(&raw)
            );
            assert_eq!(std::fs::metadata(&raw).unwrap().len(), 4 * (1 << 20) + 5);
        }
        // The writer keeps appending at the end, and only that is read.
        w.write_all(b"after punch\n").unwrap();
        assert_eq!(t.read_new(1 << 20).unwrap(), b"after punch\n");
        t.commit().unwrap();

        // A new reader (a daemon restart) resumes at the saved position.
        w.write_all(b"while away\n").unwrap();
        let mut t2 = RawTail::new(raw.clone(), pos.clone());
        assert_eq!(t2.read_new(1 << 20).unwrap(), b"while away\n");

        // A different file at the same path starts from the beginning.
        drop(w);
        std::fs::remove_file(&raw).unwrap();
        std::fs::write(&raw, b"fresh\n").unwrap();
        let mut t3 = RawTail::new(raw, pos);
        assert_eq!(t3.read_new(1 << 20).unwrap(), b"fresh\n");
    }

    #[test]
    fn raw_tail_waits_for_a_missing_file_and_honours_max() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("vmm.raw");
        let mut t = RawTail::new(raw.clone(), pos_path(dir.path(), "vmm"));
        assert!(t.read_new(10).unwrap().is_empty());
        std::fs::write(&raw, b"0123456789abc").unwrap();
        assert_eq!(t.read_new(10).unwrap(), b"0123456789");
        assert_eq!(t.read_new(10).unwrap(), b"abc");
        assert!(t.read_new(10).unwrap().is_empty());
    }
}
