//! The one table style every list command uses: left-aligned columns
//! separated by two spaces, upper-case headers, `-` for empty cells; and
//! its key/value sibling for the `show` views (`vm show`, `daemon status`).
//! Cells may carry ANSI colour (doctor's PASS/WARN/FAIL): widths count only
//! what is visible.

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| visible_len(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_len(cell_text(cell)));
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let w = widths.get(i).copied().unwrap_or(0);
                out.push_str(&" ".repeat(w.saturating_sub(visible_len(c)) + 2));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(|c| cell_text(c)).collect(), &mut out);
    }
    out
}

/// A `show` view: one `key  value` line per row, keys left-aligned to the
/// widest plus two spaces, `-` for an empty value. A row with an empty key
/// continues the one above (its value lines up under the values).
pub fn kv(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<w$}  {}\n", cell_text(v)));
    }
    out
}

fn cell_text(c: &str) -> &str {
    if c.is_empty() {
        "-"
    } else {
        c
    }
}

/// Characters a terminal shows: ANSI escape sequences (`ESC [ ... letter`)
/// take no room.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_empty_cells_dash() {
        let t = render(
            &["NAME", "STATE", "IP"],
            &[
                vec!["box".into(), "running".into(), "172.30.0.2".into()],
                vec!["a-longer-name".into(), "".into(), "172.30.0.3".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME           STATE    IP\n\
             box            running  172.30.0.2\n\
             a-longer-name  -        172.30.0.3\n"
        );
    }

    #[test]
    fn colour_takes_no_width() {
        let t = render(
            &["STATUS", "CHECK"],
            &[
                vec!["\x1b[32mPASS\x1b[0m".into(), "kvm".into()],
                vec!["FAIL".into(), "".into()],
            ],
        );
        assert_eq!(t, "STATUS  CHECK\n\x1b[32mPASS\x1b[0m    kvm\nFAIL    -\n");
        assert_eq!(visible_len("é\x1b[2mx\x1b[0m"), 2);
    }

    #[test]
    fn kv_aligns_values_and_dashes_empty_ones() {
        let t = kv(&[
            ("name", "box".into()),
            ("root cow", "".into()),
            ("", "continued".into()),
        ]);
        assert_eq!(
            t,
            "name      box\n\
             root cow  -\n\
             \x20         continued\n"
        );
    }
}
