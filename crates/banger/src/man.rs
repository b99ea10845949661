//! `banger man`: roff man pages generated from the clap definitions, one per
//! command and subcommand (clap_mangen), so they never drift from `--help`.
//!
//! clap_mangen puts `after_help` in an "EXTRA" section as filled text, which
//! runs the example lines together; pages here carry it as EXAMPLES (and
//! NOTES for any prose before "Examples:") in no-fill mode instead.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap_mangen::Man;

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write every page into DIR (banger.1, banger-vm.1,
    /// banger-vm-create.1, ...) and list them.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    out: Option<PathBuf>,
    /// Print the page of this command instead of banger's own, e.g. `vm create`.
    #[arg(value_name = "COMMAND", conflicts_with = "out")]
    command: Vec<String>,
}

/// One page: its file name and its roff text.
pub struct Page {
    pub file: String,
    pub roff: Vec<u8>,
}

/// Every page, `banger.1` first, then each command depth-first; a file name
/// is the command path joined by '-' plus `.1` (`banger-vm-create.1`).
pub fn pages(cmd: clap::Command) -> anyhow::Result<Vec<Page>> {
    fn walk(cmd: clap::Command, out: &mut Vec<Page>) -> anyhow::Result<()> {
        let subs: Vec<clap::Command> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
            .collect();
        out.push(render(&cmd)?);
        for s in subs {
            walk(s, out)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out)?;
    Ok(out)
}

/// What the roff crate writes at the start of each chunk it renders.
const ROFF_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn render(cmd: &clap::Command) -> anyhow::Result<Page> {
    let extra = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|t| after_help_roff(&t.to_string()))
        .unwrap_or_default();
    let mut bare = cmd
        .clone()
        .after_help(None::<&str>)
        .after_long_help(None::<&str>);
    // clap_mangen writes "v" before the version, and banger's has one.
    if let Some(v) = cmd.get_long_version().or_else(|| cmd.get_version()) {
        let v = v.strip_prefix('v').unwrap_or(v).to_string();
        bare = bare.version(v.clone()).long_version(v);
    }
    let man = Man::new(bare)
        .source(format!("banger {}", banger_buildinfo::VERSION))
        .manual("banger manual");
    let mut w = Vec::new();
    man.render(&mut w)?;
    let mut roff = String::from_utf8(w).context("clap_mangen wrote non-UTF-8")?;
    // NOTES and EXAMPLES go before VERSION (and the string definitions roff
    // repeats in front of it), where man pages keep them.
    match roff.find("\n.SH VERSION\n") {
        Some(at) => {
            let head = &roff[..at + 1];
            let at = head.strip_suffix(ROFF_PREAMBLE).unwrap_or(head).len();
            roff.insert_str(at, &extra);
        }
        None => roff.push_str(&extra),
    }
    Ok(Page {
        file: man.get_filename(),
        roff: roff.into_bytes(),
    })
}

/// `after_help` as roff: prose before an "Examples:" line becomes NOTES, the
/// lines after it EXAMPLES, both kept line for line (`.nf`).
fn after_help_roff(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let (notes, examples) = match lines.iter().position(|l| l.trim() == "Examples:") {
        Some(i) => (&lines[..i], &lines[i + 1..]),
        None => (&lines[..], &lines[..0]),
    };
    let mut out = String::new();
    for (title, body) in [("NOTES", notes), ("EXAMPLES", examples)] {
        let body: Vec<&str> = trim_blank(body);
        if body.is_empty() {
            continue;
        }
        out.push_str(&format!(".SH {title}\n.nf\n"));
        for l in body {
            out.push_str(&escape_line(l));
            out.push('\n');
        }
        out.push_str(".fi\n");
    }
    out
}

fn trim_blank<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    match (start, end) {
        (Some(s), Some(e)) => lines[s..=e].to_vec(),
        _ => Vec::new(),
    }
}

/// One text line for roff: backslashes and hyphens escaped (so flags stay
/// ASCII '-' when copied from the rendered page), and a leading '.' or '\''
/// kept from being read as a request.
fn escape_line(l: &str) -> String {
    let mut s = String::with_capacity(l.len() + 8);
    if l.starts_with('.') || l.starts_with('\'') {
        s.push_str("\\&");
    }
    for c in l.chars() {
        match c {
            '\\' => s.push_str("\\e"),
            '-' => s.push_str("\\-"),
            c => s.push(c),
        }
    }
    s
}

/// `banger man`: write every page to `--out`, or print one page.
pub fn run(cmd: clap::Command, args: &ManArgs) -> anyhow::Result<u8> {
    let pages = pages(cmd)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for p in &pages {
            let path = dir.join(&p.file);
            std::fs::write(&path, &p.roff).with_context(|| format!("write {}", path.display()))?;
            println!("{}", path.display());
        }
        return Ok(0);
    }
    let want = std::iter::once("banger")
        .chain(args.command.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("-")
        + ".1";
    let Some(page) = pages.iter().find(|p| p.file == want) else {
        anyhow::bail!(
            "no man page for `banger {}`; `banger man --out DIR` writes them all",
            args.command.join(" ")
        );
    };
    std::io::stdout().write_all(&page.roff)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_help_splits_notes_from_examples_line_for_line() {
        let r = after_help_roff(
            "A bare name is a catalog image.\n\nExamples:\n  banger image pull deb --name x\n  .hidden \\n",
        );
        assert_eq!(
            r,
            ".SH NOTES\n.nf\nA bare name is a catalog image.\n.fi\n\
             .SH EXAMPLES\n.nf\n  banger image pull deb \\-\\-name x\n  .hidden \\en\n.fi\n"
        );
        assert_eq!(
            after_help_roff("Examples:\n  banger doctor"),
            ".SH EXAMPLES\n.nf\n  banger doctor\n.fi\n"
        );
        assert_eq!(escape_line(".TH x"), "\\&.TH x");
    }

    #[test]
    fn pages_are_named_by_command_path() {
        let cmd = clap::Command::new("banger")
            .version("v1")
            .about("Top")
            .subcommand(
                clap::Command::new("vm")
                    .about("VMs")
                    .subcommand(clap::Command::new("create").about("Create one"))
                    .subcommand(clap::Command::new("secret").hide(true)),
            );
        let pages = pages(cmd).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(names, ["banger.1", "banger-vm.1", "banger-vm-create.1"]);
        let create = String::from_utf8(pages[2].roff.clone()).unwrap();
        assert!(create.contains("\n.TH banger-vm-create 1 "), "{create}");
        assert!(create.contains("Create one"), "{create}");
        let top = String::from_utf8(pages[0].roff.clone()).unwrap();
        assert!(top.contains("\n.SH VERSION\nv1\n"), "{top}");
        assert!(create.contains("Create one"), "{create}");
    }
}
