//! Terminal styling that respects NO_COLOR and non-TTY output.

use std::io::IsTerminal;

fn enabled(stderr: bool) -> bool {
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    }
}

fn paint(code: &str, s: &str, stderr: bool) -> String {
    if enabled(stderr) {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

pub fn dim(s: &str) -> String {
    paint("2", s, true)
}

pub fn red(s: &str, stderr: bool) -> String {
    paint("31", s, stderr)
}

pub fn yellow(s: &str, stderr: bool) -> String {
    paint("33", s, stderr)
}

pub fn green(s: &str, stderr: bool) -> String {
    paint("32", s, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_or_non_tty_is_plain() {
        // Test processes have no TTY on stdout/stderr under cargo test capture.
        assert_eq!(dim("x"), "x");
        assert_eq!(red("x", false), "x");
    }
}
