//! The release manifest: which releases exist, which is the latest stable
//! one, and where each one's tarball, `SHA256SUMS` and signature live.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::version::Version;
use crate::{UpdateError, MANIFEST_SCHEMA_VERSION};

/// A parsed and checked release manifest. Built only by
/// [`Manifest::parse`] (it is deliberately not `Deserialize`), so
/// [`Manifest::latest`] always names a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    schema_version: u32,
    latest_stable: String,
    releases: Vec<Release>,
}

/// One release. The URLs are as the manifest wrote them; resolve them
/// against the manifest's URL with [`Manifest::resolve_url`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// `vMAJOR.MINOR.PATCH[-suffix]`.
    pub version: String,
    pub tarball_url: String,
    pub sha256sums_url: String,
    pub sha256sums_sig_url: String,
    /// When the release was published, as the manifest says (free text,
    /// for display; RFC 3339 by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
}

/// Longest URL accepted in a manifest.
const MAX_URL_LEN: usize = 2048;

impl Manifest {
    /// Parses and checks a manifest: the schema version first (a newer one
    /// says to update banger manually, even when the rest no longer fits
    /// this schema), then every release's version and URLs, no duplicate
    /// versions, and `latest_stable` naming a listed release.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, UpdateError> {
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<u64>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(UpdateError::ManifestJson)?;
        match probe.schema_version {
            None => return Err(UpdateError::Manifest("no schema_version".into())),
            Some(0) => {
                return Err(UpdateError::Manifest(
                    "schema_version 0 is not valid".into(),
                ))
            }
            Some(found) if found > u64::from(MANIFEST_SCHEMA_VERSION) => {
                return Err(UpdateError::SchemaTooNew {
                    found,
                    supported: MANIFEST_SCHEMA_VERSION,
                })
            }
            Some(_) => {}
        }
        #[derive(Deserialize)]
        struct Raw {
            schema_version: u32,
            latest_stable: String,
            releases: Vec<Release>,
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(UpdateError::ManifestJson)?;
        let manifest = Manifest {
            schema_version: raw.schema_version,
            latest_stable: raw.latest_stable,
            releases: raw.releases,
        };
        let mut seen = HashSet::new();
        for r in &manifest.releases {
            let bad = |problem: String| {
                UpdateError::Manifest(format!("release {:?}: {problem}", r.version))
            };
            Version::parse(&r.version).map_err(|e| bad(e.to_string()))?;
            if !seen.insert(r.version.as_str()) {
                return Err(bad("listed twice".into()));
            }
            for (field, url) in [
                ("tarball_url", &r.tarball_url),
                ("sha256sums_url", &r.sha256sums_url),
                ("sha256sums_sig_url", &r.sha256sums_sig_url),
            ] {
                check_reference(url).map_err(|e| bad(format!("{field}: {e}")))?;
            }
        }
        if !seen.contains(manifest.latest_stable.as_str()) {
            return Err(UpdateError::Manifest(format!(
                "latest_stable {:?} is not a listed release",
                manifest.latest_stable
            )));
        }
        Ok(manifest)
    }

    pub fn schema_version(&self) -> u32 {
        self.schema_version
    }

    pub fn latest_stable(&self) -> &str {
        &self.latest_stable
    }

    /// The releases in the manifest's order.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// The release named `version`; `0.2.0` finds `v0.2.0`.
    pub fn lookup(&self, version: &str) -> Option<&Release> {
        let find = |v: &str| self.releases.iter().find(|r| r.version == v);
        match find(version) {
            Some(r) => Some(r),
            None if !version.starts_with('v') => find(&format!("v{version}")),
            None => None,
        }
    }

    /// The release `latest_stable` names.
    pub fn latest(&self) -> &Release {
        self.lookup(&self.latest_stable)
            .expect("Manifest::parse checked latest_stable names a listed release")
    }

    /// Resolves a URL from the manifest against the manifest's own URL:
    /// absolute `http`, `https` and `file:///` URLs pass through; a relative
    /// reference (`x.tar.gz`, `../v1/x.tar.gz`, `/releases/x.tar.gz`) is
    /// joined to the manifest URL's directory (or its root), with `.` and
    /// `..` segments removed. Anything else (other schemes, `//host/...`,
    /// fragments, whitespace or control characters) is refused.
    pub fn resolve_url(base_manifest_url: &str, rel: &str) -> Result<String, UpdateError> {
        let bad = |problem: &str| UpdateError::BadUrl {
            url: rel.to_string(),
            problem: problem.to_string(),
        };
        match check_reference(rel).map_err(|p| bad(&p))? {
            Reference::Absolute => return Ok(rel.to_string()),
            Reference::Relative => {}
        }
        let bad_base = |problem: &str| UpdateError::BadUrl {
            url: base_manifest_url.to_string(),
            problem: format!("as the base for {rel:?}: {problem}"),
        };
        if check_reference(base_manifest_url).map_err(|p| bad_base(&p))? != Reference::Absolute {
            return Err(bad_base(
                "the manifest url must be an absolute http, https or file url",
            ));
        }
        // Split the base into "scheme://authority" and its path, dropping
        // any query.
        let base = base_manifest_url
            .split_once('?')
            .map_or(base_manifest_url, |(b, _)| b);
        let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
        let path_start = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        let (origin, base_path) = base.split_at(path_start);
        let base_path = if base_path.is_empty() { "/" } else { base_path };

        let (rel_path, query) = match rel.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rel, None),
        };
        let joined = if rel_path.starts_with('/') {
            rel_path.to_string()
        } else {
            let dir = &base_path[..=base_path.rfind('/').unwrap_or(0)];
            format!("{dir}{rel_path}")
        };
        let mut out = format!("{origin}{}", remove_dot_segments(&joined));
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Ok(out)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reference {
    Absolute,
    Relative,
}

/// Classifies a URL as the manifest may write it; `Err` says why not.
fn check_reference(url: &str) -> Result<Reference, String> {
    if url.is_empty() {
        return Err("empty url".into());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} characters"));
    }
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err("contains whitespace, a control character or a backslash".into());
    }
    if url.contains('#') {
        return Err("fragments are not allowed".into());
    }
    // A scheme is what precedes the first ':' when no '/', '?' comes first.
    let scheme_end = url
        .find([':', '/', '?'])
        .filter(|&i| url[i..].starts_with(':'));
    if let Some(end) = scheme_end {
        let scheme = url[..end].to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "file") {
            return Err("scheme must be http, https or file".into());
        }
        let rest = &url[end + 1..];
        let Some(after) = rest.strip_prefix("//") else {
            return Err(format!("{scheme} url must start with {scheme}://"));
        };
        if scheme == "file" {
            if !after.starts_with('/') {
                return Err("file url must be file:///absolute/path (no host)".into());
            }
        } else if after.is_empty() || after.starts_with('/') {
            return Err(format!("{scheme} url has no host"));
        }
        return Ok(Reference::Absolute);
    }
    if url.starts_with("//") {
        return Err("network-path references (//host/...) are not allowed".into());
    }
    Ok(Reference::Relative)
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments dropped,
/// `..` removing the segment before it (never above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // `a/.` and `a/..` name a directory: keep the trailing '/'.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> serde_json::Value {
        serde_json::json!({
            "version": version,
            "tarball_url": format!("banger-{version}-x86_64-linux.tar.gz"),
            "sha256sums_url": "SHA256SUMS",
            "sha256sums_sig_url": "SHA256SUMS.sig",
            "published_at": "2026-11-01T00:00:00Z",
        })
    }

    fn doc(latest: &str, releases: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schema_version": 1, "latest_stable": latest, "releases": releases,
        }))
        .unwrap()
    }

    #[test]
    fn parse_the_documented_example() {
        let text = br#"{ "schema_version": 1, "latest_stable": "v0.2.0",
          "releases": [ { "version": "v0.2.0", "tarball_url": "banger-v0.2.0-x86_64-linux.tar.gz",
                          "sha256sums_url": "SHA256SUMS", "sha256sums_sig_url": "SHA256SUMS.sig", "published_at": "2026-11-01T00:00:00Z" } ] }"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.schema_version(), 1);
        assert_eq!(m.latest_stable(), "v0.2.0");
        let r = m.latest();
        assert_eq!(r.version, "v0.2.0");
        assert_eq!(r.tarball_url, "banger-v0.2.0-x86_64-linux.tar.gz");
        assert_eq!(r.sha256sums_url, "SHA256SUMS");
        assert_eq!(r.sha256sums_sig_url, "SHA256SUMS.sig");
        assert_eq!(r.published_at.as_deref(), Some("2026-11-01T00:00:00Z"));
    }

    #[test]
    fn lookup_and_latest() {
        let mut old = release("v0.1.0");
        old.as_object_mut().unwrap().remove("published_at");
        let m = Manifest::parse(&doc(
            "v0.2.0",
            vec![old, release("v0.2.0"), release("v0.3.0-rc.1")],
        ))
        .unwrap();
        assert_eq!(m.releases().len(), 3);
        assert_eq!(m.latest().version, "v0.2.0");
        assert_eq!(m.lookup("v0.1.0").unwrap().published_at, None);
        assert_eq!(m.lookup("0.3.0-rc.1").unwrap().version, "v0.3.0-rc.1");
        assert!(m.lookup("v0.4.0").is_none());
        assert!(m.lookup("").is_none());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut r = release("v1.0.0");
        r["notes"] = "x".into();
        let mut v: serde_json::Value = serde_json::from_slice(&doc("v1.0.0", vec![r])).unwrap();
        v["channel"] = "stable".into();
        Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn a_newer_schema_says_update_manually() {
        // Checked before anything else, even when the rest does not fit.
        let e = Manifest::parse(br#"{"schema_version": 2, "whatever": []}"#).unwrap_err();
        assert!(
            matches!(
                e,
                UpdateError::SchemaTooNew {
                    found: 2,
                    supported: 1
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("update banger manually"), "{e}");
    }

    #[test]
    fn missing_or_zero_schema_is_an_error() {
        for text in [
            &br#"{"latest_stable": "v1.0.0", "releases": []}"#[..],
            br#"{"schema_version": 0, "latest_stable": "v1.0.0", "releases": []}"#,
        ] {
            let e = Manifest::parse(text).unwrap_err();
            assert!(matches!(e, UpdateError::Manifest(_)), "{e}");
            assert!(e.to_string().contains("schema_version"), "{e}");
        }
        for text in [&b"not json"[..], b"[]", br#"{"schema_version": "1"}"#] {
            let e = Manifest::parse(text).unwrap_err();
            assert!(matches!(e, UpdateError::ManifestJson(_)), "{e}");
        }
    }

    #[test]
    fn missing_fields_are_errors() {
        let mut r = release("v1.0.0");
        r.as_object_mut().unwrap().remove("sha256sums_sig_url");
        let e = Manifest::parse(&doc("v1.0.0", vec![r])).unwrap_err();
        assert!(e.to_string().contains("sha256sums_sig_url"), "{e}");
    }

    #[test]
    fn bad_versions_duplicates_and_latest_are_refused() {
        for (text, needle) in [
            (doc("v0.smoke.0", vec![release("v0.smoke.0")]), "v0.smoke.0"),
            (doc("1.0.0", vec![release("1.0.0")]), "\"1.0.0\""),
            (
                doc("v1.0.0", vec![release("v1.0.0"), release("v1.0.0")]),
                "listed twice",
            ),
            (doc("v2.0.0", vec![release("v1.0.0")]), "latest_stable"),
            (doc("v1.0.0", vec![]), "latest_stable"),
        ] {
            let e = Manifest::parse(&text).unwrap_err();
            assert!(matches!(e, UpdateError::Manifest(_)), "{e}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn bad_urls_in_a_release_are_refused() {
        for url in [
            "",
            "ftp://h/x",
            "javascript:alert(1)",
            "//evil.example/x",
            "file://host/x",
            "https:///x",
            "http:x",
            "a b.tar.gz",
            "x.tar.gz#frag",
            "a\\b",
        ] {
            let mut r = release("v1.0.0");
            r["tarball_url"] = url.into();
            let e = Manifest::parse(&doc("v1.0.0", vec![r])).unwrap_err();
            assert!(e.to_string().contains("tarball_url"), "{url:?}: {e}");
        }
    }

    #[test]
    fn resolve_relative_and_absolute_urls() {
        let r = Manifest::resolve_url;
        let base = "https://releases.banger.dev/manifest.json";
        assert_eq!(
            r(base, "SHA256SUMS").unwrap(),
            "https://releases.banger.dev/SHA256SUMS"
        );
        let base = "https://h:8443/a/b/manifest.json?x=1";
        assert_eq!(
            r(base, "v1/t.tar.gz").unwrap(),
            "https://h:8443/a/b/v1/t.tar.gz"
        );
        assert_eq!(r(base, "./t").unwrap(), "https://h:8443/a/b/t");
        assert_eq!(r(base, "../t").unwrap(), "https://h:8443/a/t");
        assert_eq!(r(base, "../../../../t").unwrap(), "https://h:8443/t");
        assert_eq!(r(base, "/r/t").unwrap(), "https://h:8443/r/t");
        assert_eq!(r(base, "t?sig=1").unwrap(), "https://h:8443/a/b/t?sig=1");
        assert_eq!(r("http://h", "t").unwrap(), "http://h/t");
        assert_eq!(r("http://h/", "t").unwrap(), "http://h/t");
        assert_eq!(r("http://h/dir/", "t").unwrap(), "http://h/dir/t");
        assert_eq!(
            r("file:///srv/rel/manifest.json", "v1/t").unwrap(),
            "file:///srv/rel/v1/t"
        );
        assert_eq!(
            r("file:///srv/rel/m.json", "../t").unwrap(),
            "file:///srv/t"
        );
        // Absolute URLs pass through whatever the base.
        for abs in ["https://cdn.example/t", "HTTP://h/t", "file:///opt/t"] {
            assert_eq!(r(base, abs).unwrap(), abs);
            assert_eq!(r("file:///m.json", abs).unwrap(), abs);
        }
    }

    #[test]
    fn resolve_refuses_other_schemes_and_bad_bases() {
        let base = "https://h/m.json";
        for rel in [
            "ftp://h/t",
            "data:,x",
            "javascript:x",
            "//other/t",
            "",
            "t#f",
            "t x",
        ] {
            let e = Manifest::resolve_url(base, rel).unwrap_err();
            assert!(matches!(e, UpdateError::BadUrl { .. }), "{rel:?}: {e}");
        }
        for base in ["m.json", "ftp://h/m.json", "/srv/m.json", ""] {
            let e = Manifest::resolve_url(base, "t").unwrap_err();
            assert!(matches!(e, UpdateError::BadUrl { .. }), "{base:?}: {e}");
            assert!(e.to_string().contains("base"), "{e}");
        }
    }

    #[test]
    fn dot_segments() {
        assert_eq!(remove_dot_segments("/a/b/../c"), "/a/c");
        assert_eq!(remove_dot_segments("/a/./b"), "/a/b");
        assert_eq!(remove_dot_segments("/../../a"), "/a");
        assert_eq!(remove_dot_segments("/a/.."), "/");
        assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/"), "/");
    }
}
