//! Uploads: tar archives streamed from the host into a guest directory.
//!
//! The session's reader (see `serve`) owns an [`Uploads`] table. A TarIn
//! request starts an extractor thread; each complete chunk goes to it
//! through a bounded queue ([`QUEUE_CHUNKS`] deep), so a slow disk slows
//! the reader, and with it the host, instead of piling chunks up in guest
//! memory. The price: while the queue is full the reader reads nothing, so
//! other requests of that session (a ping) wait until the extractor catches
//! up, or the upload ends.
//!
//! The extractor answers once: Extracted after End, or an Error as soon as
//! something fails (then it stops reading; the reader drops the rest of the
//! upload's chunks). Cancel, and the host going away, abort an upload: the
//! extractor sees an error, never a clean end of the archive.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsFd as _;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use banger_agent_proto::{Event, MAX_CHUNK_IN_BYTES};

use crate::serve::Out;
use crate::untar;

/// Chunks queued between the reader and an extractor, at most.
pub const QUEUE_CHUNKS: usize = 4;

/// What the reader hands an extractor.
enum Msg {
    /// The next bytes of the archive.
    Data(Vec<u8>),
    /// The host sent End: the archive is complete.
    End,
    /// The upload is abandoned; why.
    Abort(String),
}

/// The open uploads of one session, and the chunk being read.
#[derive(Default)]
pub struct Uploads {
    open: HashMap<u64, SyncSender<Msg>>,
    /// The payload of the chunk being read, when it belongs to an open
    /// upload (else its bytes are dropped as they come).
    chunk: Option<(u64, Vec<u8>)>,
}

impl Uploads {
    /// TarIn: starts an extractor for upload `id`.
    pub fn open(&mut self, id: u64, dest: String, clear: bool, out: &Arc<Out>) {
        if self.open.contains_key(&id) {
            log!("request {id}: an upload with this id is already open; ignored");
            return;
        }
        let (tx, rx) = sync_channel(QUEUE_CHUNKS);
        let thread_out = out.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("req-{id}-tar"))
            .spawn(move || extract(id, &dest, clear, rx, &thread_out));
        match spawned {
            Ok(_) => {
                self.open.insert(id, tx);
            }
            Err(e) => {
                log!("request {id}: cannot start a thread: {e}");
                out.error(id, format!("agent cannot start a thread: {e}"));
            }
        }
    }

    /// A chunk header: its payload follows (see [`chunk_data`](Self::chunk_data)).
    pub fn chunk_start(&mut self, id: u64, len: u64) {
        self.chunk = None;
        if !self.open.contains_key(&id) || len == 0 {
            return; // unknown or finished upload: the payload is dropped
        }
        match usize::try_from(len) {
            Ok(len) if len <= MAX_CHUNK_IN_BYTES => {
                self.chunk = Some((id, Vec::with_capacity(len)))
            }
            _ => self.abort(
                id,
                format!("chunk of {len} bytes exceeds the {MAX_CHUNK_IN_BYTES}-byte limit"),
            ),
        }
    }

    /// Payload bytes of the current chunk; `remaining` more are to come.
    pub fn chunk_data(&mut self, data: &[u8], remaining: u64) {
        let Some((_, buf)) = &mut self.chunk else {
            return;
        };
        buf.extend_from_slice(data);
        if remaining == 0 {
            if let Some((id, buf)) = self.chunk.take() {
                self.deliver(id, Msg::Data(buf));
            }
        }
    }

    /// End: the archive of upload `id` is complete.
    pub fn end(&mut self, id: u64) {
        if let Some(tx) = self.open.remove(&id) {
            // An extractor that already failed has answered already.
            let _ = tx.send(Msg::End);
        }
    }

    /// Cancel: abandons upload `id`; its extractor answers with an Error.
    pub fn cancel(&mut self, id: u64) {
        if self.open.contains_key(&id) {
            self.abort(id, "upload canceled".into());
        }
    }

    /// Abandons every open upload (the host went away): each extractor
    /// stops with an error, never taking the partial archive for a whole
    /// one. Does not wait for a busy extractor.
    pub fn abort_all(&mut self, reason: &str) {
        self.chunk = None;
        for (id, tx) in self.open.drain() {
            log!("request {id}: upload aborted: {reason}");
            // A full queue: dropping the sender tells the extractor too,
            // once it took the queued chunks.
            let _ = tx.try_send(Msg::Abort(format!("upload aborted: {reason}")));
        }
    }

    fn abort(&mut self, id: u64, reason: String) {
        if let Some(tx) = self.open.remove(&id) {
            let _ = tx.send(Msg::Abort(reason));
        }
        if self.chunk.as_ref().is_some_and(|(c, _)| *c == id) {
            self.chunk = None;
        }
    }

    /// Queues a message for upload `id`, waiting while its queue is full.
    /// An extractor that is gone (it failed, and said so) is forgotten.
    fn deliver(&mut self, id: u64, msg: Msg) {
        if let Some(tx) = self.open.get(&id) {
            if tx.send(msg).is_err() {
                self.open.remove(&id);
            }
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.abort_all("the session ended");
    }
}

/// The archive as the extractor reads it: the queued chunks, then EOF on
/// End. Abort, or the reader going away, is an error, remembered so that
/// it can be reported as the reason whatever the tar parser made of it.
struct ChunkReader {
    rx: Receiver<Msg>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
    aborted: Option<String>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended {
                return Ok(0);
            }
            if let Some(reason) = &self.aborted {
                return Err(io::Error::other(reason.clone()));
            }
            match self.rx.recv() {
                Ok(Msg::Data(data)) => {
                    self.chunk = data;
                    self.pos = 0;
                }
                Ok(Msg::End) => self.ended = true,
                Ok(Msg::Abort(reason)) => self.aborted = Some(reason),
                Err(_) => self.aborted = Some("upload aborted: the host went away".into()),
            }
        }
    }
}

/// The extractor thread: unpacks upload `id` and answers once.
fn extract(id: u64, dest: &str, clear: bool, rx: Receiver<Msg>, out: &Out) {
    let started = Instant::now();
    log!(
        "request {id}: receiving an archive into {dest:?}{}",
        if clear { " (cleared first)" } else { "" }
    );
    let reader = ChunkReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        ended: false,
        aborted: None,
    };
    match unpack(dest, clear, reader) {
        Ok(report) => {
            log!(
                "request {id}: extracted {} entries, {} bytes, in {:.1?}",
                report.entries,
                report.bytes,
                started.elapsed()
            );
            out.send(
                id,
                Event::Extracted {
                    entries: report.entries,
                    bytes: report.bytes,
                },
            );
        }
        Err(e) => {
            let message = format!("{e:#}");
            log!("request {id}: upload into {dest:?} failed: {message}");
            out.error(id, message);
        }
    }
    // Returning drops the queue: the reader drops this upload's remaining
    // chunks.
}

fn unpack(dest: &str, clear: bool, reader: ChunkReader) -> anyhow::Result<untar::Report> {
    let dir = untar::open_dest(dest, clear)?;
    let mut archive = tar::Archive::new(reader);
    let result = untar::unpack(dir.as_fd(), &mut archive);
    let mut reader = archive.into_inner();
    let result = result.and_then(|report| {
        // Whatever follows the end-of-archive marker (tar pads archives to
        // whole records) is read up to End, so that an aborted upload is
        // still reported as one.
        io::copy(&mut reader, &mut io::sink())?;
        Ok(report)
    });
    match reader.aborted {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => result,
    }
}
