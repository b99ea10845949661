//! OCI pull/import against real tools on loopback: images built with umoci,
//! pushed with skopeo to a `docker-registry` this test starts itself.
//! Missing tools fail (CI runs scripts/install-deps first).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_image::oci::layout::{import_docker_archive, import_layout};
use banger_image::oci::registry::pull;
use banger_image::oci::source::{Compression, Credentials, FetchedImage, Layer, OciError};

const REGISTRY: &str = "/usr/bin/docker-registry";

fn need(tool: &str) {
    let found = Path::new(tool).is_absolute() && Path::new(tool).exists()
        || Command::new("sh")
            .args(["-c", "command -v \"$1\"", "sh", tool])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: run scripts/install-deps (as root) to install the OCI test tools"
    );
}

fn run(argv: &[&str]) {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A registry child process on 127.0.0.1; killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path, htpasswd: Option<&str>) -> Registry {
        need(REGISTRY);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            s(&dir.join("data"))
        );
        if let Some(line) = htpasswd {
            let path = dir.join("htpasswd");
            std::fs::write(&path, format!("{line}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: banger-test\n    path: {}\n",
                s(&path)
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(REGISTRY)
            .args(["serve", s(&config_path)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning docker-registry");
        let reg = Registry { child, port };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = c.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if c.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return reg;
                }
            }
            assert!(Instant::now() < deadline, "registry did not answer /v2/");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Reads the manifest descriptor index.json gives for `tag`.
fn tagged_descriptor(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in index.json"))
        .clone()
}

/// Adds an image index blob, tagged `tag`, listing `entries` (tag, arch).
fn add_index(layout: &Path, tag: &str, entries: &[(&str, &str)]) {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(t, arch)| {
            let mut d = tagged_descriptor(layout, t);
            d.as_object_mut().unwrap().remove("annotations");
            d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            d
        })
        .collect();
    let blob = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let hex = sha256_hex(&blob);
    std::fs::write(layout.join("blobs/sha256").join(&hex), &blob).unwrap();
    let path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": blob.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// An OCI layout with `img` (two layers: /etc/banger-one, /opt/two,
/// amd64), `arm` (same layers, arm64), `multi` (index of both) and
/// `armonly` (index of arm only).
fn build_layout(dir: &Path) -> PathBuf {
    need("umoci");
    let layout = dir.join("layout");
    let lay = |t: &str| format!("{}:{t}", s(&layout));
    run(&["umoci", "init", "--layout", s(&layout)]);
    run(&["umoci", "new", "--image", &lay("base")]);
    let b1 = dir.join("bundle1");
    run(&["umoci", "unpack", "--image", &lay("base"), s(&b1)]);
    std::fs::create_dir_all(b1.join("rootfs/etc")).unwrap();
    std::fs::write(b1.join("rootfs/etc/banger-one"), "layer one\n").unwrap();
    run(&["umoci", "repack", "--image", &lay("one"), s(&b1)]);
    let b2 = dir.join("bundle2");
    run(&["umoci", "unpack", "--image", &lay("one"), s(&b2)]);
    std::fs::create_dir_all(b2.join("rootfs/opt")).unwrap();
    std::fs::write(b2.join("rootfs/opt/two"), "layer two\n").unwrap();
    run(&["umoci", "repack", "--image", &lay("img"), s(&b2)]);
    run(&[
        "umoci",
        "config",
        "--image",
        &lay("img"),
        "--config.env",
        "BANGER=1",
        "--config.cmd",
        "/bin/sh",
        "--config.workingdir",
        "/opt",
        "--architecture",
        "amd64",
        "--os",
        "linux",
    ]);
    run(&[
        "umoci",
        "config",
        "--image",
        &lay("img"),
        "--tag",
        "arm",
        "--architecture",
        "arm64",
    ]);
    add_index(&layout, "multi", &[("arm", "arm64"), ("img", "amd64")]);
    add_index(&layout, "armonly", &[("arm", "arm64")]);
    layout
}

fn skopeo(args: &[&str]) {
    need("skopeo");
    let mut argv = vec!["skopeo", "--insecure-policy"];
    argv.extend_from_slice(args);
    run(&argv);
}

fn push(layout: &Path, tag: &str, dest: &str, all: bool) {
    let src = format!("oci:{}:{tag}", s(layout));
    let dest = format!("docker://{dest}");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if all {
        args.push("--all");
    }
    args.extend_from_slice(&[&src, &dest]);
    skopeo(&args);
}

/// Reads `name` out of a layer tar.
fn file_in_layer(layer: &Layer, name: &str) -> Option<String> {
    let file = std::fs::File::open(&layer.path).unwrap();
    let reader: Box<dyn Read> = match layer.compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        Compression::None => Box::new(file),
        Compression::Zstd => panic!("umoci writes gzip"),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.trim_start_matches("./") == name {
            let mut out = String::new();
            entry.read_to_string(&mut out).unwrap();
            return Some(out);
        }
    }
    None
}

fn check_image(image: &FetchedImage) {
    assert_eq!(image.layers.len(), 2, "{image:#?}");
    for layer in &image.layers {
        let bytes = std::fs::read(&layer.path).unwrap();
        assert_eq!(bytes.len() as u64, layer.size);
        assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), layer.digest);
    }
    assert_eq!(
        file_in_layer(&image.layers[0], "etc/banger-one").as_deref(),
        Some("layer one\n")
    );
    assert_eq!(
        file_in_layer(&image.layers[1], "opt/two").as_deref(),
        Some("layer two\n")
    );
    assert_eq!(image.config.architecture().to_string(), "amd64");
    let config = image.config.config().as_ref().expect("config section");
    assert!(config
        .env()
        .as_ref()
        .unwrap()
        .contains(&"BANGER=1".to_string()));
    assert_eq!(config.working_dir().as_deref(), Some("/opt"));
    assert_eq!(config.cmd().as_ref().unwrap(), &vec!["/bin/sh".to_string()]);
}

#[tokio::test]
async fn pull_anonymous_multi_arch_and_unknown_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = build_layout(tmp.path());
    let reg = Registry::start(tmp.path(), None);
    let host = reg.host();
    push(&layout, "img", &format!("{host}/test/img:v1"), false);
    push(&layout, "multi", &format!("{host}/test/multi:latest"), true);

    let blobs = tmp.path().join("blobs");
    let mut events = Vec::new();
    let image = pull(
        &format!("{host}/test/img:v1"),
        &Credentials::Anonymous,
        &blobs,
        true,
        |p| events.push(p),
    )
    .await
    .unwrap();
    check_image(&image);
    assert_eq!(image.reference, format!("{host}/test/img:v1"));
    assert!(image.index_digest.is_none());
    assert!(events
        .iter()
        .any(|p| p.digest == image.layers[1].digest && p.done == p.total && !p.cached));

    // Again: every blob comes from the cache.
    let mut events = Vec::new();
    let again = pull(
        &format!("{host}/test/img:v1"),
        &Credentials::Anonymous,
        &blobs,
        true,
        |p| events.push(p),
    )
    .await
    .unwrap();
    assert_eq!(again.layers, image.layers);
    assert!(events.iter().all(|p| p.cached), "{events:?}");

    let multi = pull(
        &format!("{host}/test/multi:latest"),
        &Credentials::Anonymous,
        &blobs,
        true,
        |_| {},
    )
    .await
    .unwrap();
    assert!(multi.index_digest.is_some());
    assert_eq!(multi.manifest_digest, image.manifest_digest);
    check_image(&multi);

    let err = pull(
        &format!("{host}/test/img:nope"),
        &Credentials::Anonymous,
        &blobs,
        true,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("img:nope"), "{err}");
}

#[tokio::test]
async fn pull_basic_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = build_layout(tmp.path());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let reg = Registry::start(tmp.path(), Some(&format!("banger:{hash}")));
    let host = reg.host();
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "banger:s3cret",
        &format!("oci:{}:img", s(&layout)),
        &format!("docker://{host}/test/img:v1"),
    ]);
    let blobs = tmp.path().join("blobs");
    let reference = format!("{host}/test/img:v1");
    let good = Credentials::Basic {
        username: "banger".into(),
        password: "s3cret".into(),
    };
    let image = pull(&reference, &good, &blobs, true, |_| {}).await.unwrap();
    check_image(&image);

    let bad = Credentials::Basic {
        username: "banger".into(),
        password: "wrong".into(),
    };
    let err = pull(&reference, &bad, &tmp.path().join("blobs2"), true, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Auth { .. }), "{err:?}");
    let err = pull(
        &reference,
        &Credentials::Anonymous,
        &tmp.path().join("blobs3"),
        true,
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OciError::Auth { .. }), "{err:?}");
}

#[test]
fn import_layout_and_docker_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = build_layout(tmp.path());
    let blobs = tmp.path().join("blobs");

    let image = import_layout(&layout, Some("img"), &blobs).unwrap();
    check_image(&image);
    let multi = import_layout(&layout, Some("multi"), &blobs).unwrap();
    assert_eq!(multi.manifest_digest, image.manifest_digest);
    assert!(multi.index_digest.is_some());

    let err = import_layout(&layout, Some("armonly"), &blobs).unwrap_err();
    assert!(matches!(err, OciError::NoPlatform { .. }), "{err:?}");
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    let err = import_layout(&layout, Some("missing"), &blobs).unwrap_err();
    assert!(err.to_string().contains("multi"), "lists the tags: {err}");
    let err = import_layout(&layout, None, &blobs).unwrap_err();
    assert!(matches!(err, OciError::Layout { .. }), "{err:?}");

    let tar = tmp.path().join("img.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:img", s(&layout)),
        &format!("docker-archive:{}:test/img:v1", s(&tar)),
    ]);
    let docker = import_docker_archive(&tar, &tmp.path().join("blobs-docker")).unwrap();
    // skopeo writes the normalised name into RepoTags.
    assert_eq!(docker.reference, "docker.io/test/img:v1");
    assert!(docker
        .layers
        .iter()
        .all(|l| l.compression == Compression::None));
    check_image(&docker);

    // Docker 25+ form without manifest.json: an OCI layout inside the tar.
    let single = tmp.path().join("single");
    skopeo(&[
        "copy",
        &format!("oci:{}:img", s(&layout)),
        &format!("oci:{}:img", s(&single)),
    ]);
    let layout_tar = tmp.path().join("layout.tar");
    run(&["tar", "-C", s(&single), "-cf", s(&layout_tar), "."]);
    let in_tar = import_docker_archive(&layout_tar, &tmp.path().join("blobs-lt")).unwrap();
    assert_eq!(in_tar.manifest_digest, image.manifest_digest);
    check_image(&in_tar);
}

#[test]
fn tampered_layout_blob_is_refused_and_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = build_layout(tmp.path());
    let image = import_layout(&layout, Some("img"), &tmp.path().join("good")).unwrap();
    let layer = &image.layers[1];
    let victim = layout
        .join("blobs/sha256")
        .join(layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();

    let blobs = tmp.path().join("blobs");
    let err = import_layout(&layout, Some("img"), &blobs).unwrap_err();
    match &err {
        OciError::DigestMismatch { digest, .. } => assert_eq!(digest, &layer.digest),
        other => panic!("want a digest mismatch, got {other:?}"),
    }
    let left: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.starts_with(".partial")
            || n.ends_with(layer.digest.trim_start_matches("sha256:"))),
        "left behind: {left:?}"
    );
}
