//! The one table style every list command uses: left-aligned columns
//! separated by two spaces, upper-case headers, `-` for empty cells.

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell_text(cell).len());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
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

fn cell_text(c: &str) -> &str {
    if c.is_empty() {
        "-"
    } else {
        c
    }
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
}
