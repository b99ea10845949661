//! `SHA256SUMS` files, as `sha256sum` (GNU, text or binary mode) and
//! `sha256 -r`/`shasum --tag` (BSD tag form) write them.

use std::collections::BTreeMap;

use crate::UpdateError;

/// Parses a `SHA256SUMS` file into file name → lowercase hex digest.
///
/// Accepted lines: `<64 hex>  <name>` and `<64 hex> *<name>` (GNU) and
/// `SHA256 (<name>) = <64 hex>` (BSD); blank lines and lines starting with
/// `#` are skipped. Any other line is an error naming its number: nothing is
/// skipped silently. Names must be plain file names (no `/`, not `.` or
/// `..`, no NUL) and appear once.
pub fn parse_sha256sums(text: &str) -> Result<BTreeMap<String, String>, UpdateError> {
    let mut sums = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let bad = |problem: String| UpdateError::Sums { line, problem };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Only a trailing '\r' is tolerated inside the line itself: names
        // may contain spaces, so the rest is taken literally.
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (digest, name) = split_line(raw).ok_or_else(|| {
            bad(format!(
                "{:?} is not '<sha256>  <name>', '<sha256> *<name>' or 'SHA256 (<name>) = <sha256>'",
                truncate(raw)
            ))
        })?;
        if !is_hex64(digest) {
            return Err(bad(format!(
                "{:?} is not a sha256 (64 hex digits)",
                truncate(digest)
            )));
        }
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(bad(format!(
                "{:?} is not a plain file name",
                truncate(name)
            )));
        }
        if sums
            .insert(name.to_string(), digest.to_ascii_lowercase())
            .is_some()
        {
            return Err(bad(format!("{name:?} is listed twice")));
        }
    }
    Ok(sums)
}

/// `(digest, name)` for the GNU or BSD form, without checking either.
fn split_line(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, digest) = rest.rsplit_once(") = ")?;
        return Some((digest, name));
    }
    let (digest, rest) = line.split_at_checked(64)?;
    let name = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))?;
    Some((digest, name))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Quoting a whole hostile line in an error is not useful.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "60303AE22B998861BCE3B28F33EEC1BE758A213C86C93C076DBE9F558C11C752";

    #[test]
    fn gnu_and_bsd_forms() {
        let text = format!(
            "# banger v0.2.0\n\n{A}  banger-v0.2.0-x86_64-linux.tar.gz\n{B} *banger.bin\r\n  \nSHA256 (name with spaces.txt) = {A}\n"
        );
        let sums = parse_sha256sums(&text).unwrap();
        assert_eq!(sums.len(), 3);
        assert_eq!(sums["banger-v0.2.0-x86_64-linux.tar.gz"], A);
        assert_eq!(sums["banger.bin"], B.to_ascii_lowercase());
        assert_eq!(sums["name with spaces.txt"], A);
        assert!(parse_sha256sums("").unwrap().is_empty());
        assert!(parse_sha256sums("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_are_errors_with_their_number() {
        for (text, line, needle) in [
            (format!("{A}  ok\ngarbage\n"), 2, "is not '<sha256>"),
            (format!("{A} one-space\n"), 1, "is not '<sha256>"),
            (format!("{A}\tok\n"), 1, "is not '<sha256>"),
            (format!("\n\n{}  short\n", &A[..63]), 3, "is not '<sha256>"),
            (format!("{}  x\n", A.replace('9', "g")), 1, "64 hex digits"),
            (format!("{A}0  x\n"), 1, "is not '<sha256>"),
            (format!("SHA256 (x) = {}\n", &A[..60]), 1, "64 hex digits"),
            (format!("SHA1 (x) = {A}\n"), 1, "is not '<sha256>"),
            (format!("{A}  dir/x\n"), 1, "not a plain file name"),
            (format!("{A}  ..\n"), 1, "not a plain file name"),
            (format!("{A}  .\n"), 1, "not a plain file name"),
            (format!("{A}  \n"), 1, "not a plain file name"),
            (format!("SHA256 (../x) = {A}\n"), 1, "not a plain file name"),
            (format!("{A}  x\n{B} *x\n"), 2, "listed twice"),
        ] {
            let e = parse_sha256sums(&text).unwrap_err();
            assert!(
                matches!(e, UpdateError::Sums { line: l, .. } if l == line),
                "{text:?}: {e}"
            );
            assert!(e.to_string().contains(&format!("line {line}:")), "{e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn hostile_lines_are_quoted_short() {
        let e = parse_sha256sums(&"z".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }
}
