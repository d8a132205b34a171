//! What `board prepare` puts on a board's boot partition, decided from the board's
//! config and the command line's values, as pure functions: the checked inputs, the
//! files (besides the agent itself) and the new kernel command line.
//!
//! Everything lands in `shoal/` on the FAT partition. On the first boot systemd runs
//! `shoal/firstboot.sh` (named by `systemd.run=` on `cmdline.txt`), which installs the
//! agent, its join arguments and `shoal-agent.service` onto the root file system, takes
//! the secrets off the FAT partition (anyone holding the card can read it) and its own
//! flags off the command line, and reboots. The unit then joins once with the token and
//! afterwards only runs the agent, restarting it whenever it stops.
//!
//! Values reach the board as data files (one argument a line), never pasted into shell
//! code, and each is checked here first: no newlines or control characters, bounded.

use shoal_proto::Label;

use super::config::BoardConfig;
use super::BoardError;

/// The directory on the boot partition.
pub const DIR: &str = "shoal";
/// The agent's name there and on the root file system (`/usr/local/bin`).
pub const AGENT: &str = "shoal-agent";
/// Longest cmdline.txt read (the kernel's own limit on ARM is 2 KiB or 4 KiB).
pub const MAX_CMDLINE: usize = 4096;

/// A Wi-Fi network to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wifi {
    /// Network name.
    pub ssid: String,
    /// WPA passphrase.
    pub psk: String,
    /// Two-letter regulatory country (Raspberry Pi OS keeps Wi-Fi off without one).
    pub country: String,
}

impl Wifi {
    /// Parses `--wifi SSID:PSK` (the SSID may not contain `:`) with `--wifi-country`.
    pub fn parse(s: &str, country: &str) -> Result<Self, BoardError> {
        let (ssid, psk) =
            s.split_once(':').ok_or_else(|| BoardError::Invalid("--wifi takes SSID:PASSPHRASE".into()))?;
        let plain = |v: &str| v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !v.contains(['"', '\\']);
        if ssid.is_empty() || ssid.len() > 32 || !plain(ssid) {
            return Err(BoardError::Invalid(format!(
                "Wi-Fi network name {ssid:?} must be 1 to 32 printable ASCII characters without \" or \\"
            )));
        }
        let hex = psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex && (!(8..=63).contains(&psk.len()) || !plain(psk)) {
            return Err(BoardError::Invalid(
                "Wi-Fi passphrase must be 8 to 63 printable ASCII characters without \" or \\ (or 64 hex digits)"
                    .into(),
            ));
        }
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(BoardError::Invalid(format!(
                "Wi-Fi country {country:?} must be two capital letters, e.g. --wifi-country GB"
            )));
        }
        Ok(Self { ssid: ssid.to_owned(), psk: psk.to_owned(), country: country.to_owned() })
    }
}

/// Everything the board is prepared with, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The board's config.
    pub board: BoardConfig,
    /// Manager address, HOST[:PORT].
    pub manager: String,
    /// Join token.
    pub token: String,
    /// Node and OS hostname.
    pub hostname: Option<String>,
    /// The board config's labels, then the command line's.
    pub labels: Vec<Label>,
    /// Wi-Fi.
    pub wifi: Option<Wifi>,
}

fn one_line(what: &str, v: &str, max: usize) -> Result<(), BoardError> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BoardError::Invalid(format!(
            "{what} must be 1 to {max} printable ASCII characters without spaces (check what was pasted)"
        )));
    }
    Ok(())
}

impl Plan {
    /// Checks the values and puts the board's labels before the command line's.
    pub fn new(
        board: BoardConfig,
        manager: &str,
        token: &str,
        hostname: Option<&str>,
        labels: &[Label],
        wifi: Option<Wifi>,
    ) -> Result<Self, BoardError> {
        if board.first_boot.is_none() {
            return Err(BoardError::Invalid(format!(
                "board {:?} has no first-boot hook (first_boot in its config), so its image cannot be prepared: \
                 install the agent by hand (docs/shoal-agent.service)",
                board.board
            )));
        }
        one_line("the manager address", manager, 255)?;
        one_line("the join token", token, 512)?;
        // Checked here, not at first boot on a board far away.
        token.parse::<shoal_proto::JoinToken>().map_err(|e| BoardError::Invalid(e.to_string()))?;
        if let Some(h) = hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !h.starts_with('-')
                && !h.ends_with('-');
            if !ok {
                return Err(BoardError::Invalid(format!(
                    "hostname {h:?} must be 1 to 63 letters, digits or inner hyphens"
                )));
            }
        }
        let mut all = Vec::new();
        for (k, v) in &board.labels {
            all.push(Label::parse(&format!("{k}={v}")).map_err(BoardError::Invalid)?);
        }
        for l in labels {
            if l.key.contains(['\n', '\r']) || l.value.contains(['\n', '\r']) {
                return Err(BoardError::Invalid("a label may not contain a line break".into()));
            }
            all.push(l.clone());
        }
        Ok(Self {
            board,
            manager: manager.to_owned(),
            token: token.to_owned(),
            hostname: hostname.map(str::to_owned),
            labels: all,
            wifi,
        })
    }

    /// `shoal-agent join`'s arguments, one a line.
    pub fn join_args(&self) -> String {
        let mut args = vec!["--token".to_owned(), self.token.clone()];
        if let Some(h) = &self.hostname {
            args.extend(["--hostname".to_owned(), h.clone()]);
        }
        for l in &self.labels {
            args.extend(["--label".to_owned(), format!("{}={}", l.key, l.value)]);
        }
        args.push(self.manager.clone());
        args.iter().map(|a| format!("{a}\n")).collect()
    }

    /// The path of the first-boot script as the running board sees it.
    pub fn firstboot_path(&self) -> String {
        format!("{}/{DIR}/firstboot.sh", self.board.boot_dir)
    }

    /// The files to write into `shoal/` (name, contents), besides the agent.
    pub fn files(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut files = vec![
            ("join.args", self.join_args().into_bytes()),
            ("firstboot.sh", firstboot_script(&self.board).into_bytes()),
            ("start.sh", start_script(&self.board.data_dir).into_bytes()),
            ("shoal-agent.service", UNIT.as_bytes().to_vec()),
        ];
        if let Some(h) = &self.hostname {
            files.push(("hostname", format!("{h}\n").into_bytes()));
        }
        if let Some(w) = &self.wifi {
            files.push(("wifi.nmconnection", nm_connection(w).into_bytes()));
            files.push(("wpa_supplicant.conf", wpa_supplicant(w).into_bytes()));
        }
        files
    }

    /// The new `cmdline.txt`: the old one without a previous preparation's first-boot
    /// flags, the board's kernel flags it lacks, then this preparation's first-boot flags.
    pub fn cmdline(&self, old: &str) -> Result<String, BoardError> {
        if old.len() > MAX_CMDLINE || old.bytes().any(|b| b != b'\n' && b != b'\r' && !(b' '..=b'~').contains(&b)) {
            return Err(BoardError::Invalid(format!(
                "cmdline.txt on the boot partition is not one line of plain text under {MAX_CMDLINE} bytes: \
                 is this a Raspberry Pi OS image?"
            )));
        }
        let first_boot = [
            format!("systemd.run={}", self.firstboot_path()),
            "systemd.run_success_action=reboot".to_owned(),
            "systemd.unit=kernel-command-line.target".to_owned(),
        ];
        let mut flags: Vec<String> = old
            .split_whitespace()
            .filter(|f| !f.starts_with("systemd.run=") && !f.starts_with("systemd.run_success_action="))
            .filter(|f| *f != "systemd.unit=kernel-command-line.target")
            .map(str::to_owned)
            .collect();
        for f in self.board.kernel_cmdline.split_whitespace() {
            if !flags.iter().any(|g| g == f) {
                flags.push(f.to_owned());
            }
        }
        flags.extend(first_boot);
        Ok(format!("{}\n", flags.join(" ")))
    }
}

/// The unit that keeps the agent running after the first boot.
pub const UNIT: &str = "\
[Unit]
Description=shoal agent
After=network-online.target
Wants=network-online.target

[Service]
# Joins once with the token written by `shoal board prepare`, then runs the agent.
ExecStart=/usr/local/lib/shoal/start.sh
Restart=always
RestartSec=2
# Containers' shims outlive the agent: stopping the agent must not stop them.
KillMode=process

[Install]
WantedBy=multi-user.target
";

fn start_script(data_dir: &str) -> String {
    format!(
        "#!/bin/sh
# shoal-agent.service's command (written by `shoal board prepare`): the first time,
# joins with the arguments in /etc/shoal/join.args (retried by systemd until the
# network and the manager are there); once joined, deletes them (the token is spent)
# and runs the agent.
set -eu
export SHOAL_DATA_DIR={data_dir}
if [ -e \"$SHOAL_DATA_DIR/agent/identity.json\" ]; then
  rm -f /etc/shoal/join.args
  exec /usr/local/bin/{AGENT} run
fi
set --
while IFS= read -r arg; do set -- \"$@\" \"$arg\"; done </etc/shoal/join.args
exec /usr/local/bin/{AGENT} join \"$@\"
"
    )
}

fn firstboot_script(board: &BoardConfig) -> String {
    let boot = &board.boot_dir;
    format!(
        "#!/bin/sh
# shoal's first-boot step (written by `shoal board prepare`), run once by systemd from
# `systemd.run=` on cmdline.txt: installs the agent from this partition, enables its
# unit, takes the secrets off this partition and its own flags off cmdline.txt. systemd
# reboots when it succeeds; if it fails, the flags stay and the next boot tries again.
set -eu
src={boot}/{DIR}
mkdir -p /usr/local/bin /usr/local/lib/shoal /etc/shoal /etc/systemd/system/multi-user.target.wants
cp \"$src/{AGENT}\" /usr/local/bin/{AGENT}.new
chmod 0755 /usr/local/bin/{AGENT}.new
mv /usr/local/bin/{AGENT}.new /usr/local/bin/{AGENT}
cp \"$src/start.sh\" /usr/local/lib/shoal/start.sh
chmod 0755 /usr/local/lib/shoal/start.sh
cp \"$src/shoal-agent.service\" /etc/systemd/system/shoal-agent.service
ln -sf /etc/systemd/system/shoal-agent.service /etc/systemd/system/multi-user.target.wants/shoal-agent.service
if [ -e \"$src/join.args\" ]; then
  (umask 077 && cp \"$src/join.args\" /etc/shoal/join.args)
fi
if [ -e \"$src/hostname\" ]; then
  new=$(cat \"$src/hostname\")
  old=$(cat /etc/hostname 2>/dev/null || true)
  echo \"$new\" >/etc/hostname
  if [ -n \"$old\" ] && [ -e /etc/hosts ]; then sed -i \"s/\\b$old\\b/$new/g\" /etc/hosts; fi
fi
if [ -e \"$src/wifi.nmconnection\" ]; then
  if [ -d /etc/NetworkManager ]; then
    mkdir -p /etc/NetworkManager/system-connections
    (umask 077 && cp \"$src/wifi.nmconnection\" /etc/NetworkManager/system-connections/shoal-wifi.nmconnection)
  else
    mkdir -p /etc/wpa_supplicant
    (umask 077 && cp \"$src/wpa_supplicant.conf\" /etc/wpa_supplicant/wpa_supplicant.conf)
  fi
  rm -f /var/lib/systemd/rfkill/*:wlan
fi
rm -f \"$src/join.args\" \"$src/wifi.nmconnection\" \"$src/wpa_supplicant.conf\" \"$src/{AGENT}\"
sed -i -e 's| systemd.run=[^ ]*||g' -e 's| systemd.run_success_action=[^ ]*||g' \\
  -e 's| systemd.unit=kernel-command-line.target||g' {boot}/cmdline.txt
sync
exit 0
"
    )
}

fn nm_connection(w: &Wifi) -> String {
    format!(
        "[connection]\nid=shoal-wifi\ntype=wifi\nautoconnect=true\n\n[wifi]\nmode=infrastructure\nssid={}\n\n\
         [wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n",
        w.ssid, w.psk
    )
}

fn wpa_supplicant(w: &Wifi) -> String {
    let psk = if w.psk.len() == 64 { w.psk.clone() } else { format!("\"{}\"", w.psk) };
    format!(
        "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev\nupdate_config=1\ncountry={}\n\n\
         network={{\n\tssid=\"{}\"\n\tpsk={psk}\n}}\n",
        w.country, w.ssid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rpi4() -> BoardConfig {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../board-configs/rpi4.toml")).unwrap();
        BoardConfig::parse(&text).unwrap()
    }

    pub(crate) fn token() -> String {
        shoal_proto::JoinToken::new([7; 32], [1; 25]).to_string()
    }

    fn plan() -> Plan {
        let labels = [Label::parse("site=barn").unwrap()];
        Plan::new(rpi4(), "10.0.0.1:4242", &token(), Some("pi-7"), &labels, None).unwrap()
    }

    #[test]
    fn join_arguments_carry_the_board_and_command_line_labels() {
        assert_eq!(
            plan().join_args(),
            format!("--token\n{}\n--hostname\npi-7\n--label\nboard=rpi4\n--label\nsite=barn\n10.0.0.1:4242\n", token())
        );
    }

    #[test]
    fn the_command_line_gets_the_cgroup_flags_once_and_the_first_boot_step() {
        let p = plan();
        let old =
            "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait\n";
        let new = p.cmdline(old).unwrap();
        assert_eq!(
            new,
            "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 fsck.repair=yes rootwait \
             cgroup_enable=memory cgroup_memory=1 systemd.run=/boot/firmware/shoal/firstboot.sh \
             systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
        );
        // Preparing twice (or over Raspberry Pi Imager's firstrun) leaves one of each.
        assert_eq!(p.cmdline(&new).unwrap(), new);
        let imager = old.trim_end().to_owned() + " systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot";
        assert_eq!(p.cmdline(&imager).unwrap(), new);
        assert!(p.cmdline("root=/dev/sda\0\n").is_err());
        assert!(p.cmdline(&"x".repeat(MAX_CMDLINE + 1)).is_err());
    }

    #[test]
    fn hostile_values_are_refused_before_anything_is_written() {
        let b = rpi4;
        let t = &token();
        assert!(Plan::new(b(), "m:4242", "tok\nen", None, &[], None).is_err());
        assert!(Plan::new(b(), "m:4242", "", None, &[], None).is_err());
        let e = Plan::new(b(), "m:4242", "SWMTKN-1-abc", None, &[], None).unwrap_err();
        assert!(e.to_string().contains("shoal manager join-token worker"), "{e}");
        assert!(Plan::new(b(), "m 4242", t, None, &[], None).is_err());
        let e = Plan::new(b(), "m", t, Some("pi;reboot"), &[], None).unwrap_err();
        assert!(e.to_string().contains("hostname"), "{e}");
        assert!(Plan::new(b(), "m", t, Some("-pi"), &[], None).is_err());
        let bad_label = Label::parse("a=b\nc").unwrap();
        assert!(Plan::new(b(), "m", t, None, &[bad_label], None).is_err());
        let mut x86 = b();
        x86.first_boot = None;
        let e = Plan::new(x86, "m", t, None, &[], None).unwrap_err();
        assert!(e.to_string().contains("first-boot hook"), "{e}");
        assert!(Wifi::parse("home", "GB").is_err());
        assert!(Wifi::parse("home:short", "GB").is_err());
        assert!(Wifi::parse("ho\"me:long enough", "GB").is_err());
        assert!(Wifi::parse("home:long enough", "gb").is_err());
        let w = Wifi::parse("my net:pass:word 1", "GB").unwrap();
        assert_eq!((w.ssid.as_str(), w.psk.as_str()), ("my net", "pass:word 1"));
    }

    #[test]
    fn wifi_files_hold_the_network() {
        let w = Wifi::parse("barn:correct horse", "GB").unwrap();
        let p = Plan::new(rpi4(), "m", &token(), None, &[], Some(w)).unwrap();
        let files = p.files();
        let nm = &files.iter().find(|f| f.0 == "wifi.nmconnection").unwrap().1;
        assert!(String::from_utf8_lossy(nm).contains("ssid=barn\n"));
        let wpa = String::from_utf8(files.iter().find(|f| f.0 == "wpa_supplicant.conf").unwrap().1.clone()).unwrap();
        assert!(wpa.contains("country=GB") && wpa.contains("psk=\"correct horse\""), "{wpa}");
        // The scripts name the board's boot and data directories.
        let fb = String::from_utf8(files.iter().find(|f| f.0 == "firstboot.sh").unwrap().1.clone()).unwrap();
        assert!(fb.contains("src=/boot/firmware/shoal\n"));
        let start = String::from_utf8(files.iter().find(|f| f.0 == "start.sh").unwrap().1.clone()).unwrap();
        assert!(start.contains("SHOAL_DATA_DIR=/var/lib/shoal\n"));
    }
}
