//! How to install Firecracker on this host, from `/etc/os-release`.
//!
//! Only distros where we know a command that works get one; everyone else
//! gets the releases page, because a wrong guess sends users on a chase.

/// Firecracker's release downloads.
pub const RELEASES_URL: &str = "https://github.com/firecracker-microvm/firecracker/releases";

/// `ID` and the `ID_LIKE` list of an os-release file, lowercased, unquoted.
pub fn os_ids(os_release: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in os_release.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match key.trim() {
            "ID" => ids.insert(0, value.to_lowercase()),
            "ID_LIKE" => ids.extend(value.split_whitespace().map(str::to_lowercase)),
            _ => {}
        }
    }
    ids
}

/// A one-line install suggestion for the host described by `os_release`
/// (the file's text; empty when missing). `version` is the release to
/// suggest (the one banger is tested against).
pub fn firecracker_install_hint(os_release: &str, version: &str) -> String {
    for id in os_ids(os_release) {
        match id.as_str() {
            // Neither Debian nor Ubuntu package Firecracker: the release
            // tarball carries static binaries.
            "debian" | "ubuntu" => {
                return format!(
                    "install the release binaries: curl -fsSL {RELEASES_URL}/download/v{version}/firecracker-v{version}-$(uname -m).tgz | tar -xz -C /tmp && \
                     sudo install -o root -g root -m 0755 /tmp/release-v{version}-$(uname -m)/firecracker-v{version}-$(uname -m) /usr/bin/firecracker && \
                     sudo install -o root -g root -m 0755 /tmp/release-v{version}-$(uname -m)/jailer-v{version}-$(uname -m) /usr/bin/jailer"
                )
            }
            "arch" | "manjaro" => return "install it with: sudo pacman -S firecracker".into(),
            "nixos" => {
                return "add pkgs.firecracker to environment.systemPackages (or: nix-env -iA nixos.firecracker)".into()
            }
            _ => {}
        }
    }
    format!("download a release from {RELEASES_URL}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_id_then_id_like() {
        let ids = os_ids("NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n");
        assert_eq!(ids, ["ubuntu", "debian"]);
        assert_eq!(
            os_ids("ID_LIKE=\"rhel fedora\"\nID=\"rocky\""),
            ["rocky", "rhel", "fedora"]
        );
        assert!(os_ids("").is_empty());
    }

    #[test]
    fn hints_by_distro() {
        let cases: &[(&str, &str)] = &[
            ("ID=debian\n", "firecracker-v1.14.1-$(uname -m).tgz"),
            ("ID=ubuntu\nID_LIKE=debian\n", "/usr/bin/firecracker"),
            // A Debian derivative known only through ID_LIKE.
            ("ID=pop\nID_LIKE=\"ubuntu debian\"\n", "tar -xz"),
            ("ID=arch\n", "pacman -S firecracker"),
            ("ID=manjaro\nID_LIKE=arch\n", "pacman -S firecracker"),
            ("ID=nixos\n", "nixos.firecracker"),
            ("ID=fedora\n", "download a release from https://github.com"),
            ("", "download a release from"),
        ];
        for (os, want) in cases {
            let hint = firecracker_install_hint(os, "1.14.1");
            assert!(hint.contains(want), "{os:?}: {hint}");
        }
        // Only debian-likes get a command that downloads and installs.
        assert!(!firecracker_install_hint("ID=fedora\n", "1.14.1").contains("curl"));
    }
}
