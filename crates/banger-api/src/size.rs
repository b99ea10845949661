/// Parses a size such as `512M`, `4G`, `4GiB`, `512MiB`, `4KiB` or a bare
/// number (MiB) into bytes. Units are binary (K = 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || {
        format!("invalid size {s:?}: use a number with an optional unit, e.g. 512M, 4G, 4GiB (a bare number is MiB)")
    };
    if t.is_empty() {
        return Err(bad());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B').filter(|u| !u.is_empty()))
        .unwrap_or(&unit);
    let mult: u64 = match unit {
        "" | "M" => 1 << 20,
        "K" => 1 << 10,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Like [`parse_size`], in whole MiB (rounded up).
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    Ok(parse_size(s)?.div_ceil(1 << 20))
}

/// Formats bytes with a binary unit, e.g. `1.5 GiB`, `512 MiB`, `0 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v.fract() == 0.0 {
        format!("{} {}", v as u64, UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let mib = 1u64 << 20;
        let cases: &[(&str, u64)] = &[
            ("512M", 512 * mib),
            ("512MiB", 512 * mib),
            ("512MB", 512 * mib),
            ("4G", 4096 * mib),
            ("4GiB", 4096 * mib),
            ("4g", 4096 * mib),
            ("4KiB", 4096),
            ("4K", 4096),
            ("1T", 1 << 40),
            ("1024", 1024 * mib),
            ("0", 0),
            (" 2G ", 2048 * mib),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "G",
            "4X",
            "-1G",
            "1.5G",
            "4GiBs",
            "abc",
            "99999999999999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should fail");
        }
        assert!(parse_size("4X").unwrap_err().contains("512M"));
    }

    #[test]
    fn format_and_round_trip() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        for s in ["512 MiB", "4 GiB", "1 TiB"] {
            let b = parse_size(&s.replace(' ', "")).unwrap();
            assert_eq!(format_size(b), s);
        }
        assert_eq!(parse_size_mib("1K"), Ok(1));
    }
}
