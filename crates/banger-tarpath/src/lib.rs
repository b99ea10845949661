//! Splitting archive entry names, the same way for every unpacker banger
//! has: the guest agent extracting a workspace, and the OCI layer
//! flattener on the host. Both then walk the components one directory at a
//! time without following symlinks; this crate only decides which names
//! are acceptable at all.

/// Splits an archive entry name into its components. It must be relative,
/// without NUL and without `..`, `.` or empty components; a leading `./`
/// (repeated or not) and a trailing `/` are allowed. No components: the
/// archive's root (`.` or `./`). The error says what is wrong, in words.
pub fn split(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.starts_with(b"/") {
        return Err("absolute name");
    }
    if raw.contains(&0) {
        return Err("NUL byte in the name");
    }
    let mut rest = raw;
    while let Some(tail) = rest.strip_prefix(b"./") {
        rest = tail;
    }
    if rest == b"." {
        rest = b"";
    }
    let rest = rest.strip_suffix(b"/").unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    for part in &parts {
        match *part {
            b"" => return Err("empty component (//)"),
            b"." => return Err("a . component"),
            b".." => return Err("a .. component"),
            _ => {}
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_cases_from_before_the_split() {
        fn ok(p: &[u8]) -> Vec<&[u8]> {
            split(p).unwrap()
        }
        assert_eq!(ok(b"a/b/c"), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(ok(b"./a/b/"), vec![&b"a"[..], b"b"]);
        assert_eq!(ok(b"a"), vec![&b"a"[..]]);
        assert_eq!(ok(b"..."), vec![&b"..."[..]]);
        assert_eq!(ok(b".hidden/x"), vec![&b".hidden"[..], b"x"]);
        assert!(ok(b"./").is_empty());
        assert!(ok(b".").is_empty());
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../escape",
            b"a/../../b",
            b"a/..",
            b"a//b",
            b"a/./b",
            b".//etc",
            b"a\0b",
            b"//",
        ] {
            assert!(split(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn names_must_stay_inside() {
        fn ok(p: &[u8]) -> Vec<&[u8]> {
            split(p).unwrap()
        }
        assert_eq!(ok(b"a/b"), [&b"a"[..], b"b"]);
        assert_eq!(ok(b"./a/b/"), [&b"a"[..], b"b"]);
        assert_eq!(ok(b"././a"), [&b"a"[..]]);
        assert!(ok(b".").is_empty());
        assert!(ok(b"./").is_empty());
        assert_eq!(ok(b"..a/b.."), [&b"..a"[..], b"b.."]);
        for (bad, why) in [
            (&b""[..], "empty name"),
            (b"/etc/passwd", "absolute name"),
            (b"a\0b", "NUL byte in the name"),
            (b"a//b", "empty component (//)"),
            (b"a/./b", "a . component"),
            (b"..", "a .. component"),
            (b"a/../../b", "a .. component"),
            (b"./..", "a .. component"),
        ] {
            assert_eq!(split(bad), Err(why), "{bad:?}");
        }
    }
}
