/// Why a VM name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("vm name must not be empty")]
    Empty,
    #[error("vm name {name:?} is {len} characters; the limit is 63 (a DNS label)")]
    TooLong { name: String, len: usize },
    #[error("vm name {name:?} contains {ch:?}; use lowercase letters, digits and '-' only")]
    BadChar { name: String, ch: char },
    #[error("vm name {name:?} must not start or end with '-'")]
    EdgeHyphen { name: String },
}

/// Checks that `name` is a DNS label: 1..=63 characters of lowercase ASCII
/// letters, digits and '-', not starting or ending with '-'.
///
/// The name becomes the guest hostname, the `<name>.vm` record, a kernel
/// command-line token and a path fragment, so it is never normalised: what
/// the user typed is what they get back, or a clear refusal.
pub fn validate_vm_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            ch,
        });
    }
    let len = name.len();
    if len > 63 {
        return Err(NameError::TooLong {
            name: name.to_string(),
            len,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "box", "my-vm-2", "0", "123", &"a".repeat(63), "a-b"] {
            assert_eq!(validate_vm_name(ok), Ok(()), "{ok:?} should pass");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "a".repeat(64);
        let cases: &[&str] = &[
            "",
            "Bad Name",
            "box/../evil",
            "MyVM",
            "a.b",
            "a:b",
            "a=b",
            "a\nb",
            "a\tb",
            "a b",
            "a'b",
            "a\"b",
            "a\u{7}b",
            "é",
            "ａ",
            "-box",
            "box-",
            "-",
            "a_b",
            &long,
        ];
        for bad in cases {
            assert!(validate_vm_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn messages_name_the_problem() {
        let e = validate_vm_name("Bad Name").unwrap_err().to_string();
        assert!(e.contains("'B'") && e.contains("lowercase"), "{e}");
        let e = validate_vm_name("box/../evil").unwrap_err().to_string();
        assert!(e.contains("'/'"), "{e}");
        let e = validate_vm_name(&"a".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("64") && e.contains("63"), "{e}");
    }
}
