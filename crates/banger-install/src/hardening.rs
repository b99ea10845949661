//! Checks a unit file on disk against the directives a system install
//! promises (doctor uses this).
//!
//! Keys in a `required` list name a `[Service]` setting (`"ProtectSystem"`)
//! or, qualified by section, any other (`"Unit.Wants"`,
//! `"Install.WantedBy"`). Values are compared the way systemd reads them:
//!
//! - a repeated scalar key: the last assignment wins; an empty one resets;
//! - booleans compare by meaning (`yes` = `true` = `on` = `1`), modes by
//!   octal value (`0711` = `711`);
//! - list keys (`Wants`, `After`, `Environment`, `RuntimeDirectory`, ...)
//!   accumulate over repeated lines and an empty assignment clears them; a
//!   required value must be among the words;
//! - `CapabilityBoundingSet` and `ReadWritePaths` must be *exactly* the
//!   required set (all required entries for the key together): an extra
//!   capability or writable path is a hardening failure too.
//!
//! Feed it [`read_unit_with_dropins`] to see what systemd would see after
//! an admin's drop-ins.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use banger_paths::system;

use crate::rooted;
use crate::units::HELPER_CAPABILITIES;

/// What both units must say (see [`crate::units`] for why).
const COMMON: [(&str, &str); 10] = [
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("KillMode", "process"),
    ("SendSIGKILL", "no"),
    ("RuntimeDirectoryPreserve", "yes"),
    ("Restart", "on-failure"),
    ("PrivateTmp", "yes"),
    ("Install.WantedBy", "multi-user.target"),
];

const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [(&'static str, &'static str); A],
    b: [(&'static str, &'static str); B],
) -> [(&'static str, &'static str); N] {
    assert!(A + B == N);
    let mut out = [("", ""); N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < B {
        out[A + j] = b[j];
        j += 1;
    }
    out
}

const HELPER_ONLY: [(&str, &str); 6] = [
    ("ProtectHome", "yes"),
    ("RuntimeDirectory", crate::units::HELPER_RUNTIME_NAME),
    ("RuntimeDirectoryMode", "0711"),
    ("ReadWritePaths", system::STATE_DIR),
    ("ReadWritePaths", system::RUNTIME_DIR),
    ("CapabilityBoundingSet", HELPER_CAPABILITIES),
];

const DAEMON_ONLY: [(&str, &str); 9] = [
    ("ProtectHome", "read-only"),
    ("RuntimeDirectory", crate::units::DAEMON_DIR_NAME),
    ("RuntimeDirectoryMode", "0700"),
    ("StateDirectory", crate::units::DAEMON_DIR_NAME),
    ("CacheDirectory", crate::units::DAEMON_DIR_NAME),
    ("UMask", "0077"),
    ("Unit.Wants", system::HELPER_UNIT),
    ("Unit.After", system::HELPER_UNIT),
    ("Unit.After", "network-online.target"),
];

/// Directives `banger-helper.service` must have.
pub const HELPER_REQUIRED: &[(&str, &str)] = &concat::<10, 6, 16>(COMMON, HELPER_ONLY);

/// Directives `bangerd.service` must have. The caller adds
/// `("User", owner_user)` (and `("Group", gid)`), which depend on the owner.
/// Doctor should also refuse `Unit.Requires`/`Unit.BindsTo` on the helper
/// ([`directive_values`]): a helper restart must not restart the daemon.
pub const DAEMON_REQUIRED: &[(&str, &str)] = &concat::<10, 9, 19>(COMMON, DAEMON_ONLY);

/// Keys whose repeated assignments add up (an empty assignment clears).
const LIST_KEYS: &[&str] = &[
    "Wants",
    "Requires",
    "Requisite",
    "BindsTo",
    "PartOf",
    "After",
    "Before",
    "Conflicts",
    "WantedBy",
    "RequiredBy",
    "Also",
    "Environment",
    "RuntimeDirectory",
    "StateDirectory",
    "CacheDirectory",
    "LogsDirectory",
    "ConfigurationDirectory",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
];

/// List keys that must equal the required set, not just contain it.
const EXACT_KEYS: &[&str] = &["CapabilityBoundingSet", "ReadWritePaths"];

#[derive(Debug)]
struct Assignment {
    section: String,
    key: String,
    value: String,
}

/// Splits a unit file into assignments: section headers, `key=value`
/// lines, `#`/`;` comments, trailing-backslash continuations (joined with
/// a space, comment lines inside them skipped, as systemd does).
fn parse(text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut joined = match pending.take() {
            Some(mut p) => {
                p.push(' ');
                p.push_str(line);
                p
            }
            None => line.to_string(),
        };
        if joined.ends_with('\\') {
            joined.pop();
            pending = Some(joined);
            continue;
        }
        let line = joined.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push(Assignment {
                section: section.clone(),
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            });
        }
    }
    if let Some(p) = pending {
        if let Some((k, v)) = p.trim().split_once('=') {
            out.push(Assignment {
                section,
                key: k.trim().to_string(),
                value: v.trim().to_string(),
            });
        }
    }
    out
}

/// `"Unit.Wants"` → (`Unit`, `Wants`); `"NoNewPrivileges"` → (`Service`, ...).
fn split_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or(("Service", key))
}

fn display_key(section: &str, key: &str) -> String {
    if section == "Service" {
        key.to_string()
    } else {
        format!("[{section}] {key}")
    }
}

/// Every value assigned to `key` (qualified as in [`missing_directives`]),
/// in file order, continuations joined; empty assignments included.
pub fn directive_values(unit_text: &str, key: &str) -> Vec<String> {
    let (section, key) = split_key(key);
    parse(unit_text)
        .into_iter()
        .filter(|a| a.section == section && a.key == key)
        .map(|a| a.value)
        .collect()
}

fn unquote(word: &str) -> &str {
    let w = word.trim_matches('"').trim_matches('\'');
    // ReadWritePaths=-/path: "ignore if missing", still writable.
    w.strip_prefix('-').unwrap_or(w)
}

/// The words a list key adds up to (an empty assignment clears).
fn list_words(values: &[String]) -> Option<Vec<String>> {
    let mut words: Option<Vec<String>> = None;
    for v in values {
        if v.is_empty() {
            words = None;
            continue;
        }
        let w = words.get_or_insert_with(Vec::new);
        for word in v.split_whitespace() {
            let word = unquote(word).to_string();
            if !w.contains(&word) {
                w.push(word);
            }
        }
    }
    words
}

fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" | "y" | "t" => Some(true),
        "no" | "false" | "off" | "0" | "n" | "f" => Some(false),
        _ => None,
    }
}

fn scalar_matches(key: &str, want: &str, got: &str) -> bool {
    if key.ends_with("Mode") || key == "UMask" {
        if let (Ok(a), Ok(b)) = (u32::from_str_radix(want, 8), u32::from_str_radix(got, 8)) {
            return a == b;
        }
    }
    if let (Some(a), Some(b)) = (boolean(want), boolean(got)) {
        return a == b;
    }
    want == got
}

/// The required directives `unit_text` lacks, one line each:
/// `ProtectSystem=strict (found ProtectSystem=full)` or
/// `NoNewPrivileges=yes (not set)`. Empty when everything is there.
pub fn missing_directives(unit_text: &str, required: &[(&str, &str)]) -> Vec<String> {
    let parsed = parse(unit_text);
    let values = |section: &str, key: &str| -> Vec<String> {
        parsed
            .iter()
            .filter(|a| a.section == section && a.key == key)
            .map(|a| a.value.clone())
            .collect()
    };
    // List keys: all required words for a key checked together, in the
    // order the key first appears in `required`.
    let mut list_order: Vec<(&str, &str)> = Vec::new();
    let mut list_want: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let mut missing = Vec::new();
    for &(qualified, want) in required {
        let (section, key) = split_key(qualified);
        if LIST_KEYS.contains(&key) {
            let entry = list_want.entry((section, key)).or_default();
            if entry.is_empty() {
                list_order.push((section, key));
            }
            entry.extend(want.split_whitespace());
            continue;
        }
        let found = values(section, key);
        let last = found.last().filter(|v| !v.is_empty());
        match last {
            Some(got) if scalar_matches(key, want, got) => {}
            Some(got) => missing.push(format!(
                "{k}={want} (found {k}={got})",
                k = display_key(section, key)
            )),
            None => missing.push(format!("{}={want} (not set)", display_key(section, key))),
        }
    }
    for (section, key) in list_order {
        let want = &list_want[&(section, key)];
        let got = list_words(&values(section, key));
        let ok = match &got {
            None => false,
            Some(got) if EXACT_KEYS.contains(&key) => {
                got.len() == want.len() && want.iter().all(|w| got.iter().any(|g| g == w))
            }
            Some(got) => want.iter().all(|w| got.iter().any(|g| g == w)),
        };
        if !ok {
            let k = display_key(section, key);
            let want = want.join(" ");
            missing.push(match got {
                None => format!("{k}={want} (not set)"),
                Some(got) => format!("{k}={want} (found {k}={})", got.join(" ")),
            });
        }
    }
    missing
}

/// The unit file at [`system::UNIT_DIR`]`/<unit>` under `root`, followed by
/// the drop-ins systemd would apply to it (`<unit>.d/`, `<prefix>-.service.d/`
/// and `service.d/` in `/etc`, `/run`, `/usr/local/lib` and `/usr/lib`
/// `systemd/system`; a file name in a higher directory masks the same name
/// below; applied in file-name order). Later assignments override earlier
/// ones, so [`missing_directives`] on the result checks what systemd runs.
pub fn read_unit_with_dropins(root: &Path, unit: &str) -> io::Result<String> {
    let main = rooted(root, system::UNIT_DIR).join(unit);
    let mut text = std::fs::read_to_string(&main)?;
    let unit_type = unit.rsplit_once('.').map_or("service", |(_, t)| t);
    let stem = unit.rsplit_once('.').map_or(unit, |(s, _)| s);
    let mut names = vec![unit.to_string()];
    let mut prefix = String::new();
    for part in stem
        .split('-')
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .skip(1)
        .rev()
    {
        prefix.push_str(part);
        prefix.push('-');
        names.push(format!("{prefix}.{unit_type}"));
    }
    names.push(unit_type.to_string());
    let dirs = [
        system::UNIT_DIR,
        "/run/systemd/system",
        "/usr/local/lib/systemd/system",
        "/usr/lib/systemd/system",
    ];
    let mut dropins: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
    for dir in dirs {
        for name in &names {
            let d = rooted(root, dir).join(format!("{name}.d"));
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.ends_with(".conf") {
                    dropins.entry(file).or_insert_with(|| e.path());
                }
            }
        }
    }
    for path in dropins.values() {
        text.push_str(&format!("\n# drop-in {}\n", path.display()));
        text.push_str(&std::fs::read_to_string(path)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_complete() {
        assert_eq!(HELPER_REQUIRED.len(), 16);
        assert_eq!(DAEMON_REQUIRED.len(), 19);
        assert!(HELPER_REQUIRED
            .iter()
            .all(|(k, v)| !k.is_empty() && !v.is_empty()));
        assert!(DAEMON_REQUIRED
            .iter()
            .all(|(k, v)| !k.is_empty() && !v.is_empty()));
    }

    #[test]
    fn parses_comments_sections_repeats_and_continuations() {
        let unit = "# NoNewPrivileges=yes\n\
                    [Unit]\n\
                    NoNewPrivileges=yes\n\
                    [Service]\n\
                    ; ProtectSystem=strict\n\
                    ProtectSystem = strict\n\
                    ProtectSystem=full\n\
                    ExecStart=/bin/x \\\n  --a \\\n# comment inside\n  --b\n\
                    PrivateTmp=true\n";
        assert_eq!(
            missing_directives(
                unit,
                &[
                    ("NoNewPrivileges", "yes"),
                    ("ProtectSystem", "strict"),
                    ("PrivateTmp", "yes"),
                ]
            ),
            [
                "NoNewPrivileges=yes (not set)",
                "ProtectSystem=strict (found ProtectSystem=full)",
            ]
        );
        let exec = directive_values(unit, "ExecStart");
        assert_eq!(exec.len(), 1);
        assert_eq!(
            exec[0].split_whitespace().collect::<Vec<_>>(),
            ["/bin/x", "--a", "--b"]
        );
        assert_eq!(directive_values(unit, "Unit.NoNewPrivileges"), ["yes"]);
    }

    #[test]
    fn empty_assignment_resets() {
        let unit =
            "[Service]\nKillMode=process\nKillMode=\nRuntimeDirectory=a\nRuntimeDirectory=\n";
        assert_eq!(
            missing_directives(unit, &[("KillMode", "process"), ("RuntimeDirectory", "a")]),
            ["KillMode=process (not set)", "RuntimeDirectory=a (not set)"]
        );
    }

    #[test]
    fn modes_compare_as_octal() {
        let unit = "[Service]\nRuntimeDirectoryMode=711\nUMask=077\n";
        assert!(
            missing_directives(unit, &[("RuntimeDirectoryMode", "0711"), ("UMask", "0077")])
                .is_empty()
        );
        let unit = "[Service]\nRuntimeDirectoryMode=0755\n";
        assert_eq!(
            missing_directives(unit, &[("RuntimeDirectoryMode", "0711")]),
            ["RuntimeDirectoryMode=0711 (found RuntimeDirectoryMode=0755)"]
        );
    }

    #[test]
    fn lists_accumulate_across_lines_and_sections_are_qualified() {
        let unit = "[Unit]\nWants=a.service\nWants=banger-helper.service\n\
                    After=network-online.target banger-helper.service\n\
                    [Install]\nWantedBy=multi-user.target\n";
        let req = [
            ("Unit.Wants", "banger-helper.service"),
            ("Unit.After", "banger-helper.service"),
            ("Unit.After", "network-online.target"),
            ("Install.WantedBy", "multi-user.target"),
        ];
        assert!(missing_directives(unit, &req).is_empty());
        assert_eq!(
            missing_directives("[Unit]\nWants=x\n", &req[..1]),
            ["[Unit] Wants=banger-helper.service (found [Unit] Wants=x)"]
        );
        // A [Service] Wants= does not count for [Unit].
        assert_eq!(
            missing_directives("[Service]\nWants=banger-helper.service\n", &req[..1]),
            ["[Unit] Wants=banger-helper.service (not set)"]
        );
    }

    #[test]
    fn exact_sets_refuse_extras_and_accept_split_lines() {
        let req = [
            ("CapabilityBoundingSet", "CAP_CHOWN CAP_KILL"),
            ("ReadWritePaths", "/var/lib/banger"),
            ("ReadWritePaths", "/run/banger"),
        ];
        let ok = "[Service]\nCapabilityBoundingSet=CAP_KILL\nCapabilityBoundingSet=CAP_CHOWN\n\
                  ReadWritePaths=/run/banger -/var/lib/banger\n";
        assert!(missing_directives(ok, &req).is_empty());
        let wide = "[Service]\nCapabilityBoundingSet=CAP_CHOWN CAP_KILL CAP_SYS_PTRACE\n\
                    ReadWritePaths=/var/lib/banger /run/banger /home\n";
        assert_eq!(
            missing_directives(wide, &req),
            [
                "CapabilityBoundingSet=CAP_CHOWN CAP_KILL (found CapabilityBoundingSet=CAP_CHOWN CAP_KILL CAP_SYS_PTRACE)",
                "ReadWritePaths=/var/lib/banger /run/banger (found ReadWritePaths=/var/lib/banger /run/banger /home)",
            ]
        );
        let reset = "[Service]\nCapabilityBoundingSet=CAP_CHOWN CAP_KILL\nCapabilityBoundingSet=\n";
        assert_eq!(
            missing_directives(reset, &req[..1]),
            ["CapabilityBoundingSet=CAP_CHOWN CAP_KILL (not set)"]
        );
    }

    #[test]
    fn dropins_override_the_unit() {
        let root = tempfile::tempdir().unwrap();
        let units = rooted(root.path(), system::UNIT_DIR);
        std::fs::create_dir_all(units.join("banger-helper.service.d")).unwrap();
        std::fs::create_dir_all(units.join("banger-.service.d")).unwrap();
        let usr = rooted(root.path(), "/usr/lib/systemd/system/service.d");
        std::fs::create_dir_all(&usr).unwrap();
        std::fs::write(
            units.join("banger-helper.service"),
            "[Service]\nKillMode=process\nNoNewPrivileges=yes\nPrivateTmp=yes\n",
        )
        .unwrap();
        std::fs::write(
            units.join("banger-helper.service.d/10-kill.conf"),
            "[Service]\nKillMode=mixed\n",
        )
        .unwrap();
        std::fs::write(
            units.join("banger-.service.d/20-nnp.conf"),
            "[Service]\nNoNewPrivileges=no\n",
        )
        .unwrap();
        std::fs::write(usr.join("30-tmp.conf"), "[Service]\nPrivateTmp=no\n").unwrap();
        // Same name higher up masks the /usr one.
        std::fs::write(
            units.join("banger-helper.service.d/30-tmp.conf"),
            "[Service]\n",
        )
        .unwrap();
        let text = read_unit_with_dropins(root.path(), "banger-helper.service").unwrap();
        assert_eq!(
            missing_directives(
                &text,
                &[
                    ("KillMode", "process"),
                    ("NoNewPrivileges", "yes"),
                    ("PrivateTmp", "yes")
                ]
            ),
            [
                "KillMode=process (found KillMode=mixed)",
                "NoNewPrivileges=yes (found NoNewPrivileges=no)",
            ]
        );
        let e = read_unit_with_dropins(root.path(), "bangerd.service").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
