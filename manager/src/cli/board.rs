//! `shoal board prepare`: turns a stock OS image into one that joins the cluster on its
//! first boot, writing a new image (`--out`) or an SD card (`--device`). See
//! [`crate::board`] for what is written where.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use shoal_proto::Label;

use crate::board::config::BoardConfig;
use crate::board::plan::{Plan, Wifi};
use crate::board::{image, BoardError};

/// `shoal board ...`.
#[derive(Debug, Subcommand)]
pub enum BoardCommand {
    /// Make an OS image (or SD card) join the cluster on its first boot.
    Prepare(PrepareArgs),
}

/// `shoal board prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Board name (a file of --board-configs, e.g. rpi4) or the path of a board file.
    #[arg(long)]
    pub board: String,
    /// Directory of the board files.
    #[arg(long, env = "SHOAL_BOARD_CONFIGS", default_value = "board-configs")]
    pub board_configs: PathBuf,
    /// The stock OS image (raw disk image, e.g. Raspberry Pi OS Lite, uncompressed).
    #[arg(long)]
    pub image: PathBuf,
    /// Write the prepared image here.
    #[arg(long, required_unless_present = "device", conflicts_with = "device")]
    pub out: Option<PathBuf>,
    /// Write the prepared image onto this SD card device (everything on it is lost).
    #[arg(long)]
    pub device: Option<PathBuf>,
    /// Join token (`shoal manager join-token worker`).
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Manager address the board joins, HOST[:PORT].
    #[arg(long)]
    pub manager: String,
    /// The board's hostname and node name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Node label KEY=VALUE, besides the board file's (repeatable).
    #[arg(long = "label", value_parser = Label::parse)]
    pub labels: Vec<Label>,
    /// Wi-Fi network to join, SSID:PASSPHRASE.
    #[arg(long)]
    pub wifi: Option<String>,
    /// Wi-Fi regulatory country (two letters).
    #[arg(long, default_value = "GB")]
    pub wifi_country: String,
    /// The agent to install (default: out/agents/<the board's target>/shoal-agent, from
    /// scripts/build-agents.sh).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

fn board_file(args: &PrepareArgs) -> PathBuf {
    let given = Path::new(&args.board);
    if args.board.ends_with(".toml") || given.components().count() > 1 {
        given.to_owned()
    } else {
        args.board_configs.join(format!("{}.toml", args.board))
    }
}

/// Copies the stock image to the output (a new file, or the device).
fn copy_image(image: &Path, out: &Path, device: bool) -> anyhow::Result<()> {
    let mut src = std::fs::File::open(image).with_context(|| format!("opening the image {}", image.display()))?;
    let mut dst = if device {
        std::fs::OpenOptions::new().write(true).open(out)
    } else {
        std::fs::OpenOptions::new().write(true).create_new(true).open(out)
    }
    .with_context(|| {
        if device {
            format!("opening the device {} (is it the SD card, and may you write to it?)", out.display())
        } else {
            format!("creating {} (remove it first if it is an old output)", out.display())
        }
    })?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {} to {}", image.display(), out.display()))?;
    dst.flush()?;
    dst.sync_all().with_context(|| format!("syncing {}", out.display()))?;
    Ok(())
}

/// Refuses a device with a mounted file system: writing under a mounted FAT or ext4
/// corrupts it, and the device may be the laptop's own disk.
fn check_unmounted(device: &Path) -> anyhow::Result<()> {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return Ok(()) };
    let device = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_owned());
    let name = device.to_string_lossy();
    if let Some(line) = mounts.lines().find(|l| l.split_whitespace().next().is_some_and(|d| d.starts_with(&*name))) {
        anyhow::bail!(
            "{name} is mounted ({}): unmount all its partitions first, and check it is the SD card",
            line.split_whitespace().take(2).collect::<Vec<_>>().join(" on ")
        );
    }
    Ok(())
}

/// Runs `shoal board prepare`.
pub fn prepare(args: PrepareArgs) -> anyhow::Result<()> {
    let path = board_file(&args);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading the board file {} (name a file of board-configs/ or pass --board-configs)", path.display())
    })?;
    let board = BoardConfig::parse(&text).map_err(|reason| BoardError::Config { path: path.clone(), reason })?;
    let wifi = args.wifi.as_deref().map(|w| Wifi::parse(w, &args.wifi_country)).transpose()?;
    let target = board.target.clone();
    let elf = board.elf();
    let plan = Plan::new(board, &args.manager, &args.token, args.hostname.as_deref(), &args.labels, wifi)?;
    let agent_path = args.agent.clone().unwrap_or_else(|| Path::new("out/agents").join(&target).join("shoal-agent"));
    let agent = std::fs::read(&agent_path).with_context(|| {
        format!("reading the agent {} (build it with scripts/build-agents.sh or pass --agent)", agent_path.display())
    })?;
    image::check_agent(&agent, &target, elf)?;
    let (out, device) = match (&args.out, &args.device) {
        (Some(out), _) => (out.clone(), false),
        (None, Some(dev)) => (dev.clone(), true),
        (None, None) => unreachable!("clap requires one"),
    };
    if device {
        check_unmounted(&out)?;
    }
    copy_image(&args.image, &out, device)?;
    match image::prepare(&out, &plan, &agent) {
        Ok(done) => {
            if device {
                std::fs::OpenOptions::new().write(true).open(&out).and_then(|f| f.sync_all()).ok();
            }
            println!(
                "{} is prepared for {}: partition {} has the agent and its first-boot step; on its first boot \
                 it installs them and joins {}",
                out.display(),
                plan.board.board,
                done.partition,
                plan.manager
            );
            Ok(())
        }
        Err(e) => {
            // A half-prepared new image is removed (the stock image is untouched); a
            // device keeps what was copied, and preparing it again starts over.
            if !device {
                let _ = std::fs::remove_file(&out);
            }
            Err(e.into())
        }
    }
}

/// Runs a `shoal board` command.
pub fn run(cmd: BoardCommand) -> anyhow::Result<()> {
    match cmd {
        BoardCommand::Prepare(args) => prepare(args),
    }
}
