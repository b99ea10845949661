//! Release versions (`vMAJOR.MINOR.PATCH[-suffix]`), their order, and what a
//! `banger` binary says about itself.

use std::cmp::Ordering;

use crate::UpdateError;

/// A parsed release version: `vMAJOR.MINOR.PATCH` with an optional
/// `-suffix` of `A-Z a-z 0-9 . -` (a pre-release: `v1.2.3-rc.1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// The pre-release suffix, without its `-`.
    pub pre: Option<String>,
}

/// Longest version string accepted.
const MAX_VERSION_LEN: usize = 64;

impl Version {
    /// Parses a release version as the manifest writes it: the leading `v`
    /// is required, numbers are plain decimals without leading zeros, and a
    /// suffix is made of non-empty dot-separated parts.
    pub fn parse(s: &str) -> Result<Version, UpdateError> {
        let bad = |problem: &str| UpdateError::BadVersion {
            version: s.to_string(),
            problem: problem.to_string(),
        };
        if s.len() > MAX_VERSION_LEN {
            return Err(bad("longer than 64 characters"));
        }
        let rest = s
            .strip_prefix('v')
            .ok_or_else(|| bad("must look like vMAJOR.MINOR.PATCH[-suffix]"))?;
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = [0u64; 3];
        let mut parts = core.split('.');
        for n in &mut numbers {
            let part = parts
                .next()
                .ok_or_else(|| bad("must look like vMAJOR.MINOR.PATCH[-suffix]"))?;
            *n = parse_number(part).ok_or_else(|| {
                bad("MAJOR, MINOR and PATCH must be decimal numbers without leading zeros")
            })?;
        }
        if parts.next().is_some() {
            return Err(bad("must look like vMAJOR.MINOR.PATCH[-suffix]"));
        }
        if let Some(pre) = pre {
            let ok = pre.split('.').all(|id| {
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return Err(bad(
                    "the suffix after '-' must be non-empty dot-separated parts of A-Z, a-z, 0-9 and '-'",
                ));
            }
        }
        Ok(Version {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre: pre.map(str::to_string),
        })
    }
}

fn parse_number(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

impl Ord for Version {
    /// Numeric MAJOR, MINOR, PATCH; then a pre-release sorts before the
    /// same version without one; two suffixes compare part by part (numbers
    /// numerically and before words, words in ASCII order, fewer parts
    /// first), as semver does.
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => compare_pre(a, b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let numeric = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
                let ord = match (numeric(x), numeric(y)) {
                    (true, true) => {
                        // Any length: compare without leading zeros.
                        let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
                    }
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// Orders two versions (see [`Version`]'s `Ord`): `v0.2.0` > `v0.1.9`,
/// `v1.0.0-rc.1` < `v1.0.0`.
///
/// Lenient where [`Version::parse`] is strict, since one side is usually
/// this build's own version: the leading `v` is optional (`0.1.0` is
/// `v0.1.0`). A string that is no version at all sorts before every
/// version, and two such strings compare as plain strings.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parse = |s: &str| {
        let s = s.trim();
        if s.starts_with('v') {
            Version::parse(s).ok()
        } else {
            Version::parse(&format!("v{s}")).ok()
        }
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

/// What a `banger` binary reports about its build: the same record
/// `install.toml` keeps, so the updater's result is written there as is.
pub use banger_install::install_meta::BuildInfo;

/// Parses the output of `banger version`: `version: X`,
/// `commit: Y` and `built_at: Z` lines in any order, with any whitespace
/// around keys and values; other lines are ignored. A missing, empty or
/// repeated field is an error.
pub fn parse_version_output(text: &str) -> Result<BuildInfo, UpdateError> {
    let mut fields: [(&str, Option<&str>); 3] =
        [("version", None), ("commit", None), ("built_at", None)];
    for (i, line) in text.lines().enumerate() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let Some((name, slot)) = fields.iter_mut().find(|(name, _)| *name == key) else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(UpdateError::VersionOutput(format!(
                "line {}: {name} is empty",
                i + 1
            )));
        }
        if slot.replace(value).is_some() {
            return Err(UpdateError::VersionOutput(format!(
                "line {}: {name} given twice",
                i + 1
            )));
        }
    }
    let take = |i: usize| {
        let (name, value) = fields[i];
        value
            .map(str::to_string)
            .ok_or_else(|| UpdateError::VersionOutput(format!("no {name} line")))
    };
    Ok(BuildInfo {
        version: take(0)?,
        commit: take(1)?,
        built_at: take(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_good_versions() {
        let v = Version::parse("v1.2.3").unwrap();
        assert_eq!((v.major, v.minor, v.patch, v.pre), (1, 2, 3, None));
        let v = Version::parse("v0.10.0-rc.1").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (0, 10, 0));
        assert_eq!(v.pre.as_deref(), Some("rc.1"));
        for ok in ["v0.0.0", "v1.2.3-alpha", "v1.2.3-rc-2.x.7", "v1.2.3-0.A-b"] {
            Version::parse(ok).unwrap();
        }
    }

    #[test]
    fn parse_bad_versions() {
        for bad in [
            "",
            "v",
            "1.2.3",
            "V1.2.3",
            "v1.2",
            "v1.2.3.4",
            "v0.smoke.0",
            "v01.2.3",
            "v1.2.3-",
            "v1.2.3-rc..1",
            "v1.2.3-rc.",
            "v1.2.3-rc_1",
            "v1.2.3+build",
            "v1.2.3 ",
            "v-1.2.3",
            "v99999999999999999999.0.0",
            &format!("v1.2.3-{}", "a".repeat(60)),
        ] {
            let e = Version::parse(bad).unwrap_err();
            assert!(matches!(e, UpdateError::BadVersion { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        use Ordering::*;
        for (a, b, want) in [
            ("v0.2.0", "v0.1.9", Greater),
            ("v0.10.0", "v0.9.0", Greater),
            ("v1.0.0", "v0.99.99", Greater),
            ("v1.2.3", "v1.2.3", Equal),
            ("v1.2.3-rc.1", "v1.2.3", Less),
            ("v1.2.3-rc.1", "v1.2.2", Greater),
            ("v1.2.3-rc.2", "v1.2.3-rc.10", Less),
            ("v1.2.3-alpha", "v1.2.3-beta", Less),
            ("v1.2.3-1", "v1.2.3-alpha", Less),
            ("v1.2.3-rc", "v1.2.3-rc.1", Less),
            // This build's own version has no `v`.
            ("0.1.0", "v0.2.0", Less),
            ("0.2.0", "v0.2.0", Equal),
            // Not versions at all sort first.
            ("unknown", "v0.0.0", Less),
            ("v0.0.0", "garbage", Greater),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn version_output_parses_in_any_order() {
        let text = "banger v0.2.0 (commit abc, built now)\n  built_at :  2026-11-01T00:00:00Z \ncommit: 0123abcd\nversion:v0.2.0\nsomething: else\n";
        let info = parse_version_output(text).unwrap();
        assert_eq!(
            info,
            BuildInfo {
                version: "v0.2.0".into(),
                commit: "0123abcd".into(),
                built_at: "2026-11-01T00:00:00Z".into(),
            }
        );
        let crlf = "version: v1.0.0\r\ncommit: x\r\nbuilt_at: y\r\n";
        assert_eq!(parse_version_output(crlf).unwrap().built_at, "y");
    }

    #[test]
    fn version_output_needs_every_field_once() {
        for (text, needle) in [
            ("commit: a\nbuilt_at: b\n", "no version line"),
            ("version: v1.0.0\nbuilt_at: b\n", "no commit line"),
            ("version: v1.0.0\ncommit: a\n", "no built_at line"),
            ("", "no version line"),
            (
                "version: v1.0.0\ncommit:   \nbuilt_at: b\n",
                "line 2: commit is empty",
            ),
            (
                "version: v1.0.0\ncommit: a\nbuilt_at: b\nversion: v2.0.0\n",
                "line 4: version given twice",
            ),
        ] {
            let e = parse_version_output(text).unwrap_err();
            assert!(matches!(e, UpdateError::VersionOutput(_)), "{e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }
}
