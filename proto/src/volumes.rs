//! Named volumes on the boards: what `shoal volume ls|inspect|rm` asks the manager, what
//! the manager asks each board, and what comes back.
//!
//! A volume lives on one board (as in Swarm): the board makes it on first use by a task
//! (see `--mount type=volume`) and keeps it until it is removed. The manager keeps no
//! record of volumes; it asks the boards that are connected.

use serde::{Deserialize, Serialize};

use crate::options::{PathText, VolumeName, MAX_VOLUME_OPTS};
use crate::{BoundedVec, Hostname, NodeId, Text};

/// Most volumes one board reports.
pub const MAX_VOLUMES: usize = 256;
/// Most containers named as users of one volume.
pub const MAX_USERS: usize = 32;
/// Most volumes in one answer to the CLI (all boards together).
pub const MAX_VOLUME_VIEWS: usize = 4096;

/// One volume as its board sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its name.
    pub name: VolumeName,
    /// Bytes its files take (what `du` counts, symlinks not followed).
    pub size_bytes: u64,
    /// The containers on the board that mount it, running or not.
    pub used_by: BoundedVec<Text<64>, MAX_USERS>,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The `volume-opt`s it was made with.
    pub options: BoundedVec<Text<256>, MAX_VOLUME_OPTS>,
    /// Where its data is on the board.
    pub mountpoint: PathText,
}

/// What the manager asks a board (and the CLI the manager, through
/// [`VolumeControl`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeRequest {
    /// Every volume of the board.
    List,
    /// Remove one; refused while a container uses it.
    Remove {
        /// Its name.
        name: VolumeName,
    },
}

/// `shoal volume …` to the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeControl {
    /// `volume ls` and `volume inspect` (which filters by name itself).
    List,
    /// `volume rm NAME [--node NODE]`: on every connected board that has it, or on one.
    Remove {
        /// Its name.
        name: VolumeName,
        /// A node's ID, ID prefix or hostname; `None`: every board that has it.
        node: Option<Text<64>>,
    },
}

/// A volume and the board it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    /// The board.
    pub node: NodeId,
    /// Its hostname.
    pub hostname: Hostname,
    /// The volume.
    pub volume: VolumeInfo,
}

/// The manager's answer to [`VolumeControl`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeReply {
    /// The volumes of the connected boards, and the boards that did not answer.
    Volumes {
        /// Volumes, by node then name.
        volumes: BoundedVec<VolumeView, MAX_VOLUME_VIEWS>,
        /// Hostnames of the boards that could not be asked.
        unreachable: BoundedVec<Hostname, 256>,
    },
    /// The boards the volume was removed from.
    Removed(BoundedVec<Hostname, 256>),
}
