//! Test helpers: keys and signatures made by the real `openssl` CLI (the
//! release script signs with it, so these tests pin openssl/cosign
//! compatibility), release tarballs, and a loopback HTTP server serving them.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use banger_fetch::testkit::{ok_with_length, serve, status};

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A P-256 key pair in a temp dir, made by `openssl ecparam`.
pub struct Signer {
    pub dir: tempfile::TempDir,
    pub public_pem: String,
}

impl Signer {
    pub fn new() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "key.pem",
            ],
        );
        openssl(
            dir.path(),
            &["ec", "-in", "key.pem", "-pubout", "-out", "pub.pem"],
        );
        let public_pem = std::fs::read_to_string(dir.path().join("pub.pem")).unwrap();
        Signer { dir, public_pem }
    }

    fn sign_der(&self, body: &[u8]) {
        std::fs::write(self.dir.path().join("body"), body).unwrap();
        openssl(
            self.dir.path(),
            &[
                "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.der", "body",
            ],
        );
    }

    /// The signature file as the release script writes it: one base64 line
    /// (`openssl base64 -A`), no newline.
    pub fn sign(&self, body: &[u8]) -> Vec<u8> {
        self.sign_der(body);
        openssl(self.dir.path(), &["base64", "-A", "-in", "sig.der"])
    }

    /// `openssl base64` without `-A`: wrapped at 64 columns, newline-ended.
    pub fn sign_wrapped(&self, body: &[u8]) -> Vec<u8> {
        self.sign_der(body);
        openssl(self.dir.path(), &["base64", "-in", "sig.der"])
    }

    /// An RSA public key, which must not be taken for a P-256 one.
    pub fn rsa_public_pem(&self) -> String {
        openssl(
            self.dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
                "-out",
                "rsa.pem",
            ],
        );
        let out = openssl(self.dir.path(), &["pkey", "-in", "rsa.pem", "-pubout"]);
        String::from_utf8(out).unwrap()
    }
}

/// One tar entry for [`tarball`]: name bytes (written raw into the header,
/// so `..` and absolute names are possible), type, mode and content.
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: Option<&'static str>,
}

pub fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data: data.to_vec(),
        link: None,
    }
}

pub fn special(name: &str, kind: tar::EntryType) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        mode: 0o755,
        data: Vec::new(),
        link: None,
    }
}

/// The four binaries with small distinct contents.
pub fn release_entries() -> Vec<Entry> {
    crate::EXPECTED_ENTRIES
        .iter()
        .map(|n| file(n, format!("#!/bin/sh\necho {n}\n").as_bytes()))
        .collect()
}

/// A gzip'd tar of `entries`.
pub fn tarball(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        if let Some(link) = e.link {
            h.set_link_name(link).unwrap();
        }
        // tar::Builder refuses `..` and absolute names; write them raw.
        h.as_old_mut().name[..e.name.len()].copy_from_slice(&e.name);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A loopback HTTP/1.1 server (on [`banger_fetch::testkit::serve`])
/// answering GETs from a path → body map (404 otherwise) and counting
/// requests per path.
pub struct Server {
    pub base: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    pub async fn start() -> Server {
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (f, h) = (files.clone(), hits.clone());
        let base = serve(move |path| {
            *h.lock().unwrap().entry(path.to_string()).or_default() += 1;
            match f.lock().unwrap().get(path) {
                Some(body) => ok_with_length(body),
                None => status(404, ""),
            }
        })
        .await;
        Server { base, files, hits }
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), body.into());
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}
