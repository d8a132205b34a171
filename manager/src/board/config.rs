//! `board-configs/<board>.toml`: what a board needs (its agent's Rust target, kernel
//! command-line flags, data directory, labels, reservations) and how its OS image boots
//! (`first_boot`, `boot_dir`). Parsed and checked here; no file is read.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The agent builds boards run (scripts/build-agents.sh), with the ELF class (64-bit?)
/// and machine (`e_machine`) of each, to check the agent given is for the board.
pub const TARGETS: [(&str, bool, u16); 3] = [
    ("aarch64-unknown-linux-musl", true, 183),
    ("armv7-unknown-linux-gnueabihf", false, 40),
    ("x86_64-unknown-linux-musl", true, 62),
];

/// One board's file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// Its name, for people.
    pub board: String,
    /// The Rust target of its agent.
    pub target: String,
    /// Flags its kernel command line needs (space-separated).
    #[serde(default)]
    pub kernel_cmdline: String,
    /// The agent's data directory on the board.
    pub data_dir: String,
    /// Labels every board of this kind joins with.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources kept back for the OS (documented; the agent does not read them yet).
    #[serde(default)]
    pub reserve: Option<Reserve>,
    /// Devices containers may be given.
    #[serde(default)]
    pub devices: Vec<String>,
    /// How its OS runs a first-boot step: `cmdline.txt` (the kernel command line in a
    /// file on the FAT boot partition, as on Raspberry Pi OS). Absent: `board prepare`
    /// cannot prepare its images.
    #[serde(default)]
    pub first_boot: Option<String>,
    /// Where the running OS mounts the FAT boot partition (`/boot/firmware` on Raspberry
    /// Pi OS and Debian since bookworm).
    #[serde(default = "default_boot_dir")]
    pub boot_dir: String,
}

/// Resources kept back for the OS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// Memory, e.g. `256MiB`.
    pub memory: Option<String>,
    /// CPUs, e.g. 0.25.
    pub cpus: Option<f64>,
}

fn default_boot_dir() -> String {
    "/boot/firmware".to_owned()
}

/// Whether `path` is an absolute path the first-boot script can use unquoted: only
/// letters, digits and `/._-`, no `..`.
pub fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 200
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        && !path.split('/').any(|c| c == "..")
}

impl BoardConfig {
    /// Parses and checks a board file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        if !TARGETS.iter().any(|(t, _, _)| *t == config.target) {
            let known: Vec<&str> = TARGETS.iter().map(|(t, _, _)| *t).collect();
            return Err(format!("unknown target {:?}: use one of {}", config.target, known.join(", ")));
        }
        for flag in config.kernel_cmdline.split_whitespace() {
            if !flag.bytes().all(|b| b.is_ascii_graphic()) || flag.starts_with("systemd.run") {
                return Err(format!("kernel_cmdline flag {flag:?} is not allowed: use plain ASCII flags"));
            }
        }
        for (name, path) in [("data_dir", &config.data_dir), ("boot_dir", &config.boot_dir)] {
            if !plain_path(path) {
                return Err(format!("{name} {path:?} must be an absolute path of letters, digits and /._-"));
            }
        }
        if let Some(hook) = &config.first_boot {
            if hook != "cmdline.txt" {
                return Err(format!("first_boot {hook:?} is not supported: use \"cmdline.txt\" or leave it out"));
            }
        }
        for (key, value) in &config.labels {
            shoal_proto::Label::parse(&format!("{key}={value}")).map_err(|e| format!("labels: {e}"))?;
        }
        Ok(config)
    }

    /// The ELF class and machine of this board's agent.
    pub fn elf(&self) -> (bool, u16) {
        TARGETS.iter().find(|(t, _, _)| *t == self.target).map(|(_, c, m)| (*c, *m)).expect("checked at parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_file_of_the_repository_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                BoardConfig::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 6, "only {seen} board files");
    }

    #[test]
    fn bad_board_files_say_what_to_fix() {
        let good = "board = \"x\"\ntarget = \"aarch64-unknown-linux-musl\"\ndata_dir = \"/var/lib/shoal\"\n";
        let c = BoardConfig::parse(good).unwrap();
        assert_eq!(c.boot_dir, "/boot/firmware");
        assert_eq!(c.elf(), (true, 183));
        let e = BoardConfig::parse(&good.replace("aarch64-unknown-linux-musl", "mips-unknown-linux-musl")).unwrap_err();
        assert!(e.contains("unknown target") && e.contains("use one of"), "{e}");
        let e = BoardConfig::parse(&good.replace("/var/lib/shoal", "/var/lib/$(reboot)")).unwrap_err();
        assert!(e.contains("data_dir"), "{e}");
        let e = BoardConfig::parse(&format!("{good}first_boot = \"grub\"\n")).unwrap_err();
        assert!(e.contains("first_boot"), "{e}");
        let e = BoardConfig::parse(&format!("{good}kernel_cmdline = \"systemd.run=/x\"\n")).unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        let e = BoardConfig::parse(&format!("{good}colour = \"red\"\n")).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
