//! Uploads (tar_in) through the real agent binary into a real filesystem,
//! driven by the real host client. Archives are built here, by the `tar`
//! crate or, where it refuses (`..`, absolute names), by hand.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use banger_agent_proto::client::{AgentClient, ClientError, TarInReport};
use banger_agent_proto::{decode, encode, Event, GuestFrame, HostFrame, Request};
use tar::{EntryType, Header};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};

mod common;
use common::{spawn_agent, start_raw, Agent, T};
const MTIME: u64 = 1_600_000_000;

async fn start() -> (Agent, AgentClient) {
    let (agent, stream) = start_raw().await;
    (agent, AgentClient::new(stream))
}

async fn upload(
    client: &AgentClient,
    dest: &Path,
    clear: bool,
    archive: &[u8],
) -> Result<TarInReport, ClientError> {
    let dest = dest.to_str().unwrap();
    timeout(T, client.tar_in(dest, clear, archive, T))
        .await
        .expect("the upload ends in time")
}

/// Builds an archive with the `tar` crate.
struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Archive {
        Archive(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h
    }

    fn dir(mut self, path: &str, mode: u32, mtime: u64) -> Archive {
        let mut h = Archive::header(EntryType::Directory, mode, 0);
        h.set_mtime(mtime);
        self.0.append_data(&mut h, path, &b""[..]).unwrap();
        self
    }

    fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Archive {
        let mut h = Archive::header(EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Archive {
        let mut h = Archive::header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    /// An entry written byte by byte: any name, any type.
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Archive {
        let mut h = Archive::header(kind, 0o644, data.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    /// A PAX extended header for the next entry.
    fn pax(self, records: &[(&str, &str)]) -> Archive {
        self.pax_header(EntryType::XHeader, records)
    }

    fn pax_header(self, kind: EntryType, records: &[(&str, &str)]) -> Archive {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            let mut len = body.len() + 1;
            while len.to_string().len() + body.len() != len {
                len = len.to_string().len() + body.len();
            }
            data.extend(format!("{len}{body}").into_bytes());
        }
        self.raw(kind, b"PaxHeaders/x", b"", &data)
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Everything under `root`, without following symlinks: kind, mode,
/// link count and content of each path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let desc = if meta.is_dir() {
                todo.push(path.clone());
                format!("dir {:o}", meta.mode())
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else {
                format!(
                    "file {:o} nlink {} {:?}",
                    meta.mode(),
                    meta.nlink(),
                    std::fs::read(&path).unwrap()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// A directory with a destination in it, and beside it a victim directory
/// that no upload may touch.
struct Scene {
    root: tempfile::TempDir,
    before: BTreeMap<PathBuf, String>,
}

impl Scene {
    fn new() -> Scene {
        Scene::new_in(&std::env::temp_dir())
    }

    fn new_in(dir: &Path) -> Scene {
        let root = tempfile::tempdir_in(dir).unwrap();
        let victim = root.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("file"), b"precious").unwrap();
        std::fs::create_dir(victim.join("sub")).unwrap();
        std::fs::write(victim.join("sub/inner"), b"also precious").unwrap();
        std::fs::create_dir(root.path().join("dest")).unwrap();
        let before = snapshot(&victim);
        Scene { root, before }
    }

    fn dest(&self) -> PathBuf {
        self.root.path().join("dest")
    }

    fn victim(&self) -> PathBuf {
        self.root.path().join("victim")
    }

    /// The victim is byte for byte as it was, and nothing new appeared
    /// beside the destination.
    fn assert_victim_untouched(&self) {
        assert_eq!(snapshot(&self.victim()), self.before);
        let mut names: Vec<_> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names.retain(|n| n != "destlink");
        assert_eq!(names, ["dest", "victim"]);
    }
}

fn assert_agent_error(result: Result<TarInReport, ClientError>, needle: &str) -> String {
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Agent {
                request: "tar_in",
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
    message
}

fn mtime(path: &Path) -> i64 {
    std::fs::symlink_metadata(path).unwrap().mtime()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn an_archive_round_trips() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let dest = scene.dest().join("new/checkout");
    let big: Vec<u8> = (0..(2 * 1024 * 1024 + 12345))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let long_dir = "d".repeat(120);
    let long_name = format!("{long_dir}/{}", "f".repeat(150));
    let archive = Archive::new()
        // What git archive starts with.
        .pax_header(
            EntryType::XGlobalHeader,
            &[("comment", "0123456789abcdef0123456789abcdef01234567")],
        )
        .dir("./", 0o755, MTIME)
        .dir("src/", 0o750, MTIME - 100)
        .dir("src/deep/er/", 0o700, MTIME - 200)
        .file("src/empty", 0o644, b"")
        .file("src/deep/er/big.bin", 0o600, &big)
        .file("run.sh", 0o755, b"#!/bin/sh\necho hi\n")
        .file("README", 0o644, b"read me\n")
        .file("suid", 0o4755, b"no setuid here")
        .file(&long_name, 0o640, b"long name")
        .pax(&[("path", "pax/named file"), ("mtime", "1500000000.25")])
        .file("short", 0o644, b"pax")
        .link(EntryType::Symlink, "link", "src/deep")
        .link(EntryType::Symlink, "dangling", "/nowhere/at/all")
        .link(EntryType::Link, "src/hard", "README")
        .bytes();
    let report = upload(&client, &dest, false, &archive).await.unwrap();
    let files: [(&str, &[u8]); 7] = [
        ("src/empty", b""),
        ("src/deep/er/big.bin", &big),
        ("run.sh", b"#!/bin/sh\necho hi\n"),
        ("README", b"read me\n"),
        ("suid", b"no setuid here"),
        (&long_name, b"long name"),
        ("pax/named file", b"pax"),
    ];
    let total: usize = files.iter().map(|(_, data)| data.len()).sum();
    // ./ is the destination itself and not counted; pax/ is implied.
    assert_eq!(
        report,
        TarInReport {
            entries: 12,
            bytes: total as u64
        }
    );
    for (path, data) in files {
        assert!(std::fs::read(dest.join(path)).unwrap() == data, "{path}");
    }
    assert_eq!(mode(&dest.join("run.sh")), 0o755);
    assert_eq!(mode(&dest.join("README")), 0o644);
    assert_eq!(mode(&dest.join("src/deep/er/big.bin")), 0o600);
    assert_eq!(mode(&dest.join("suid")), 0o755);
    assert_eq!(mode(&dest.join(&long_name)), 0o640);
    assert_eq!(mode(&dest.join("src")), 0o750);
    assert_eq!(mode(&dest.join("src/deep/er")), 0o700);
    assert_eq!(mode(&dest.join("src/deep")), 0o755);
    assert_eq!(mtime(&dest.join("run.sh")), MTIME as i64);
    assert_eq!(mtime(&dest.join("src/deep/er/big.bin")), MTIME as i64);
    assert_eq!(mtime(&dest.join("src")), MTIME as i64 - 100);
    assert_eq!(mtime(&dest.join("src/deep/er")), MTIME as i64 - 200);
    assert_eq!(mtime(&dest.join("link")), MTIME as i64);
    let pax_meta = std::fs::metadata(dest.join("pax/named file")).unwrap();
    assert_eq!(
        (pax_meta.mtime(), pax_meta.mtime_nsec()),
        (1_500_000_000, 250_000_000)
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("src/deep")
    );
    assert_eq!(
        std::fs::read_link(dest.join("dangling")).unwrap(),
        Path::new("/nowhere/at/all")
    );
    let readme = std::fs::metadata(dest.join("README")).unwrap();
    let hard = std::fs::metadata(dest.join("src/hard")).unwrap();
    assert_eq!((readme.ino(), readme.nlink()), (hard.ino(), 2));
    // Owned by the agent, whatever the headers say.
    assert_eq!(readme.uid(), nix_uid());
    scene.assert_victim_untouched();
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[tokio::test]
async fn clear_empties_the_destination_and_no_clear_merges() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let dest = scene.dest();
    std::fs::write(dest.join("old.txt"), b"old").unwrap();
    std::fs::create_dir(dest.join("keep")).unwrap();
    std::fs::write(dest.join("keep/x"), b"x").unwrap();
    std::os::unix::fs::symlink(scene.victim(), dest.join("to-victim")).unwrap();

    let archive = Archive::new()
        .file("new.txt", 0o644, b"new")
        .file("old.txt", 0o600, b"replaced")
        .bytes();
    let report = upload(&client, &dest, false, &archive).await.unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(std::fs::read(dest.join("old.txt")).unwrap(), b"replaced");
    assert_eq!(mode(&dest.join("old.txt")), 0o600);
    assert_eq!(std::fs::read(dest.join("new.txt")).unwrap(), b"new");
    assert_eq!(std::fs::read(dest.join("keep/x")).unwrap(), b"x");

    // Clearing removes the symlink, not what it points to.
    let archive = Archive::new().file("only.txt", 0o644, b"only").bytes();
    upload(&client, &dest, true, &archive).await.unwrap();
    let names: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["only.txt"]);
    assert!(dest.is_dir());
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn a_dot_dot_entry_cannot_escape() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    for name in [
        &b"../escape"[..],
        b"../victim/file",
        b"ok/../../victim/sub/x",
    ] {
        let archive = Archive::new()
            .raw(EntryType::Regular, name, b"", b"pwned")
            .bytes();
        assert_agent_error(upload(&client, &scene.dest(), false, &archive).await, "..");
    }
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn an_absolute_entry_cannot_escape() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    for name in ["file", "pwned"] {
        let target = scene.victim().join(name);
        let archive = Archive::new()
            .raw(
                EntryType::Regular,
                target.to_str().unwrap().as_bytes(),
                b"",
                b"pwned",
            )
            .bytes();
        assert_agent_error(
            upload(&client, &scene.dest(), false, &archive).await,
            "absolute",
        );
    }
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn nothing_is_written_through_a_symlink_from_the_archive() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let victim = scene.victim();
    let archive = Archive::new()
        .link(EntryType::Symlink, "link", victim.to_str().unwrap())
        .file("link/pwned", 0o644, b"pwned")
        .bytes();
    let message = assert_agent_error(
        upload(&client, &scene.dest(), false, &archive).await,
        "link/pwned",
    );
    assert!(message.contains("not a directory"), "{message}");
    // Nor through a directory entry, nor through a deeper path.
    for archive in [
        Archive::new().dir("link/sub/", 0o755, MTIME),
        Archive::new().file("link/sub/inner", 0o644, b"pwned"),
        Archive::new().link(EntryType::Symlink, "link/new-link", "/"),
    ] {
        assert_agent_error(
            upload(&client, &scene.dest(), false, &archive.bytes()).await,
            "not a directory",
        );
    }
    // What was written before the error stays.
    assert!(std::fs::symlink_metadata(scene.dest().join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn nothing_is_written_through_a_symlink_already_there() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let dest = scene.dest();
    std::os::unix::fs::symlink(scene.victim(), dest.join("pre")).unwrap();
    std::os::unix::fs::symlink(scene.victim().join("file"), dest.join("pre-file")).unwrap();
    let archive = Archive::new().file("pre/pwned", 0o644, b"pwned").bytes();
    assert_agent_error(upload(&client, &dest, false, &archive).await, "pre");
    let archive = Archive::new().file("pre/file", 0o644, b"pwned").bytes();
    assert_agent_error(upload(&client, &dest, false, &archive).await, "pre");
    scene.assert_victim_untouched();

    // A file entry where a symlink is replaces the symlink itself.
    let archive = Archive::new()
        .file("pre-file", 0o644, b"mine")
        .dir("pre/", 0o755, MTIME)
        .file("pre/new", 0o644, b"inside dest")
        .bytes();
    upload(&client, &dest, false, &archive).await.unwrap();
    assert_eq!(std::fs::read(dest.join("pre-file")).unwrap(), b"mine");
    assert!(std::fs::symlink_metadata(dest.join("pre"))
        .unwrap()
        .is_dir());
    assert_eq!(std::fs::read(dest.join("pre/new")).unwrap(), b"inside dest");
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn a_hard_link_cannot_reach_outside() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let dest = scene.dest();
    let absolute = scene.victim().join("file");
    std::fs::write(dest.join("was-here"), b"not from the archive").unwrap();
    for (target, needle) in [
        ("../victim/file", ".."),
        (absolute.to_str().unwrap(), "absolute"),
        ("was-here", "not a file this archive extracted"),
        ("missing", "not a file this archive extracted"),
    ] {
        let archive = Archive::new().link(EntryType::Link, "hard", target).bytes();
        assert_agent_error(upload(&client, &dest, false, &archive).await, needle);
        assert!(!dest.join("hard").exists());
    }
    // Nor through a symlink the archive made to the victim.
    let archive = Archive::new()
        .link(EntryType::Symlink, "v", scene.victim().to_str().unwrap())
        .link(EntryType::Link, "hard", "v/file")
        .bytes();
    assert_agent_error(upload(&client, &dest, false, &archive).await, "not a file");
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn device_entries_are_refused() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    for (kind, what) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "fifo"),
    ] {
        let archive = Archive::new().raw(kind, b"dev/null2", b"", b"").bytes();
        let message =
            assert_agent_error(upload(&client, &scene.dest(), false, &archive).await, what);
        assert!(message.contains("dev/null2"), "{message}");
    }
    assert!(!scene.dest().join("dev").exists());
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn the_destination_must_be_a_real_directory() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let link = scene.root.path().join("destlink");
    std::os::unix::fs::symlink(scene.victim(), &link).unwrap();
    let archive = Archive::new().file("pwned", 0o644, b"pwned").bytes();
    assert_agent_error(upload(&client, &link, false, &archive).await, "symlink");
    assert_agent_error(upload(&client, &link, true, &archive).await, "symlink");
    let file = scene.victim().join("file");
    assert_agent_error(
        upload(&client, &file, false, &archive).await,
        "not a directory",
    );
    for bad in ["relative/dir", "/", "/tmp/../etc", "/tmp/./x"] {
        assert_agent_error(
            timeout(T, client.tar_in(bad, false, &archive[..], T))
                .await
                .unwrap(),
            bad,
        );
    }
    scene.assert_victim_untouched();
}

#[tokio::test]
async fn an_early_error_stops_the_upload_without_sending_it_all() {
    let (_agent, client) = start().await;
    // Endless input: only the agent's answer can end this.
    let started = Instant::now();
    let err = timeout(
        T,
        client.tar_in("not/absolute", false, tokio::io::repeat(0), T),
    )
    .await
    .expect("the error comes in time");
    assert_agent_error(err, "not an absolute path");
    assert!(started.elapsed() < T);
    client.ping(T).await.unwrap();

    // A bad entry in the middle of a long archive: same.
    let scene = Scene::new();
    let head = Archive::new()
        .raw(EntryType::Char, b"tty", b"", b"")
        .bytes();
    let head = &head[..512]; // the header only, no end marker
    let input = tokio::io::AsyncReadExt::chain(head, tokio::io::repeat(0));
    let err = timeout(
        T,
        client.tar_in(scene.dest().to_str().unwrap(), false, input, T),
    )
    .await
    .expect("the error comes in time");
    assert_agent_error(err, "tty");
    client.ping(T).await.unwrap();
}

async fn read_frame(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> GuestFrame {
    let mut line = String::new();
    timeout(T, r.read_line(&mut line)).await.unwrap().unwrap();
    decode(line.as_bytes()).unwrap()
}

#[tokio::test]
async fn cancel_mid_stream_answers_an_error() {
    let (_agent, stream) = start_raw().await;
    let scene = Scene::new();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let archive = Archive::new()
        .file("a", 0o644, &vec![b'a'; 100_000])
        .file("b", 0o644, b"b")
        .bytes();
    let dest = scene.dest().to_str().unwrap().to_owned();
    w.write_all(&encode(&HostFrame {
        id: 7,
        req: Request::TarIn { dest, clear: false },
    }))
    .await
    .unwrap();
    let part = &archive[..50_000];
    w.write_all(&encode(&HostFrame {
        id: 7,
        req: Request::Chunk {
            len: part.len() as u64,
        },
    }))
    .await
    .unwrap();
    w.write_all(part).await.unwrap();
    w.write_all(&encode(&HostFrame {
        id: 7,
        req: Request::Cancel,
    }))
    .await
    .unwrap();
    let frame = read_frame(&mut r).await;
    assert_eq!(frame.id, 7);
    match frame.event {
        Event::Error { message } => assert!(message.contains("upload canceled"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    // Later chunks and End for it are dropped; the session goes on.
    w.write_all(&encode(&HostFrame {
        id: 7,
        req: Request::Chunk { len: 3 },
    }))
    .await
    .unwrap();
    w.write_all(b"\n\n\n").await.unwrap();
    w.write_all(&encode(&HostFrame {
        id: 7,
        req: Request::End,
    }))
    .await
    .unwrap();
    let client = AgentClient::from_split(r.into_inner(), w);
    client.ping(T).await.unwrap();
    let report = upload(&client, &scene.dest(), false, &archive)
        .await
        .unwrap();
    assert_eq!(report.entries, 2);
}

/// Yields `data`, then fails.
struct FailingReader {
    data: Vec<u8>,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Ready(Err(std::io::Error::other("input broke")));
        }
        let n = buf.remaining().min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data.drain(..n);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_input_cancels_and_the_agent_goes_on() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let archive = Archive::new()
        .file("big", 0o644, &vec![7u8; 3 * 1024 * 1024])
        .bytes();
    let reader = FailingReader {
        data: archive[..2 * 1024 * 1024 + 1000].to_vec(),
    };
    let err = timeout(
        T,
        client.tar_in(scene.dest().to_str().unwrap(), false, reader, T),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, ClientError::Input { .. }), "{err}");
    assert!(err.to_string().contains("input broke"), "{err}");
    client.ping(T).await.unwrap();
    let report = upload(&client, &scene.dest(), false, &archive)
        .await
        .unwrap();
    assert_eq!(report.bytes, 3 * 1024 * 1024);
}

#[tokio::test]
async fn a_connection_closed_mid_chunk_leaves_the_agent_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("listen.sock");
    let _child = spawn_agent("--listen", &sock);
    let (first, _) = banger_agent_proto::client::wait_ready(&sock, Instant::now() + T)
        .await
        .unwrap();
    drop(first);
    let scene = Scene::new();
    let archive = Archive::new()
        .file("a", 0o644, &vec![b'\n'; 200_000])
        .bytes();

    let mut raw = UnixStream::connect(&sock).await.unwrap();
    raw.write_all(&encode(&HostFrame {
        id: 1,
        req: Request::TarIn {
            dest: scene.dest().to_str().unwrap().into(),
            clear: false,
        },
    }))
    .await
    .unwrap();
    raw.write_all(&encode(&HostFrame {
        id: 1,
        req: Request::Chunk {
            len: archive.len() as u64,
        },
    }))
    .await
    .unwrap();
    raw.write_all(&archive[..100_000]).await.unwrap();
    drop(raw);

    let client = AgentClient::connect_unix(&sock).await.unwrap();
    client.ping(T).await.unwrap();
    let report = upload(&client, &scene.dest(), false, &archive)
        .await
        .unwrap();
    assert_eq!(report.entries, 1);
    assert_eq!(
        std::fs::read(scene.dest().join("a")).unwrap().len(),
        200_000
    );
}

#[tokio::test]
async fn a_ping_is_answered_while_an_upload_is_open() {
    let (_agent, client) = start().await;
    let scene = Scene::new();
    let archive = Archive::new()
        .file("a", 0o644, &vec![1u8; 3 * 1024 * 1024])
        .file("b", 0o644, b"b")
        .bytes();
    let (mut feed, input) = tokio::io::duplex(64 * 1024);
    let upload = {
        let (c, dest) = (client.clone(), scene.dest());
        tokio::spawn(async move { c.tar_in(dest.to_str().unwrap(), false, input, T).await })
    };
    let half = archive.len() / 2;
    feed.write_all(&archive[..half]).await.unwrap();
    // The upload is open, waiting for more input.
    client.ping(T).await.unwrap();
    feed.write_all(&archive[half..]).await.unwrap();
    drop(feed);
    let report = timeout(T, upload).await.unwrap().unwrap().unwrap();
    assert_eq!(report.entries, 2);
    client.ping(T).await.unwrap();
}

/// A checkout-sized upload (10,000 files, 200 MB), timed. Run by hand:
/// `cargo test -p banger-agent --release --test tar_in -- --ignored --nocapture`
/// (`BANGER_BENCH_DIR=/dev/shm` takes the disk out of the measure).
#[tokio::test]
#[ignore]
async fn checkout_sized_upload_speed() {
    let (_agent, client) = start().await;
    let scene = match std::env::var_os("BANGER_BENCH_DIR") {
        Some(dir) => Scene::new_in(Path::new(&dir)),
        None => Scene::new(),
    };
    let mut archive = Archive::new();
    let mut total = 0u64;
    for d in 0..100 {
        archive = archive.dir(&format!("dir{d}/"), 0o755, MTIME);
        for f in 0..100 {
            // Mostly small files, a few large ones: 200 MB in all.
            let len = if f == 0 {
                1_900_000
            } else {
                900 + (f * 37) % 1000
            };
            let data = vec![(d + f) as u8; len];
            total += len as u64;
            archive = archive.file(&format!("dir{d}/file{f}.rs"), 0o644, &data);
        }
    }
    let archive = archive.bytes();
    let started = Instant::now();
    let report = upload(&client, &scene.dest(), true, &archive)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(report.entries, 10_100);
    assert_eq!(report.bytes, total);
    eprintln!(
        "{} entries, {} MB in {took:.2?}: {:.0} MB/s",
        report.entries,
        total / 1_000_000,
        total as f64 / 1e6 / took.as_secs_f64()
    );
}
