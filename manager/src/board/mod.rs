//! `shoal board prepare`: turning a stock OS image (or an SD card) into one that joins
//! the cluster on its first boot, from the laptop, without root, loop devices or
//! mounting anything.
//!
//! [`config`] reads `board-configs/<board>.toml`; [`disk`] finds the FAT boot partition
//! in an MBR or GPT partition table; [`plan`] decides what goes onto it (the agent, its
//! join arguments, a first-boot script, a systemd unit, the kernel command line), as
//! pure functions of their inputs; [`image`] is the only part that touches the image
//! file, through the `fatfs` crate over a window of it.
//!
//! Not here: anything on the root file system. The first-boot script, run by systemd
//! on the board (`systemd.run=` on `cmdline.txt`, as Raspberry Pi Imager does), installs
//! what was put on the boot partition.

pub mod config;
pub mod disk;
pub mod image;
pub mod plan;

use std::path::PathBuf;

/// Why a board image could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The board's configuration file.
    #[error("board config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The image's partition table.
    #[error("{path}: {reason}")]
    Disk {
        /// The image or device.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A value given on the command line.
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing a file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl BoardError {
    /// A closure for `map_err` that wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
