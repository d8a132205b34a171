//! The decisions of an agent update, without I/O: whether a received binary can run on
//! this board (its ELF header against the running agent's own), and what a watchdog or
//! a starting agent does about an update marker at a given time.
//!
//! The header check catches a build for another target before the board swaps to it; a
//! build that fits but does not work (it exits at once, or never reaches the manager) is
//! caught afterwards by the deadline in the marker: see [`crate::upgrade`].

use serde::{Deserialize, Serialize};

/// Bytes of an ELF header the check reads.
pub const HEADER_LEN: usize = 20;

/// Why a binary can't replace this agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// Not an ELF executable at all.
    #[error("the build is not an ELF executable: send a `shoal-agent` binary built for this board's target")]
    NotElf,
    /// An ELF file, but a library or object rather than a program.
    #[error("the build is an ELF file but not an executable (type {0}): send the `shoal-agent` binary itself")]
    NotExecutable(u16),
    /// A program for another machine, word size or byte order.
    #[error(
        "the build is for {theirs}, this board runs {ours}: send the build for the board's target \
         (out/agents/<target>/shoal-agent)"
    )]
    OtherMachine {
        /// What the build is for.
        theirs: String,
        /// What this board runs.
        ours: String,
    },
}

/// Checks that `new` (the first bytes of the received binary) is an executable for the
/// machine, word size and byte order of `own` (the first bytes of the running agent).
pub fn fits(new: &[u8], own: &[u8]) -> Result<(), FitError> {
    let new = Elf::parse(new).ok_or(FitError::NotElf)?;
    // The running agent is an ELF executable; if it could not be read, nothing can fit.
    let own = Elf::parse(own).ok_or(FitError::NotElf)?;
    if !matches!(new.kind, 2 | 3) {
        return Err(FitError::NotExecutable(new.kind));
    }
    if (new.class, new.data, new.machine) != (own.class, own.data, own.machine) {
        return Err(FitError::OtherMachine { theirs: new.describe(), ours: own.describe() });
    }
    Ok(())
}

/// The fields of an ELF header that say where a program runs.
struct Elf {
    class: u8,
    data: u8,
    kind: u16,
    machine: u16,
}

impl Elf {
    fn parse(h: &[u8]) -> Option<Self> {
        if h.len() < HEADER_LEN || &h[..4] != b"\x7fELF" {
            return None;
        }
        let (class, data) = (h[4], h[5]);
        let half = |at: usize| match data {
            1 => Some(u16::from_le_bytes([h[at], h[at + 1]])),
            2 => Some(u16::from_be_bytes([h[at], h[at + 1]])),
            _ => None,
        };
        Some(Self { class, data, kind: half(16)?, machine: half(18)? })
    }

    fn describe(&self) -> String {
        let machine = match self.machine {
            3 => "x86".to_owned(),
            40 => "arm".to_owned(),
            62 => "x86_64".to_owned(),
            183 => "aarch64".to_owned(),
            243 => "riscv".to_owned(),
            m => format!("ELF machine {m}"),
        };
        let bits = if self.class == 2 { 64 } else { 32 };
        let order = if self.data == 2 { ", big-endian" } else { "" };
        format!("{machine} ({bits}-bit{order})")
    }
}

/// What a board writes beside its agent binary while an update is on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// `sha256:<hex>` of the new binary.
    pub digest: String,
    /// Until when (ms since the Unix epoch) the new agent may take to open a session.
    pub deadline_ms: u64,
}

/// What to do about a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: the update is over (the marker names another build than the one that
    /// runs), or still within its deadline.
    Wait,
    /// The trial is over: clear the marker, the running build stays.
    Clear,
    /// Restore the previous binary and run it.
    RollBack,
}

/// The verdict of an agent starting at `now_ms` whose own binary is `own_digest`.
pub fn on_start(marker: &Marker, own_digest: &str, now_ms: u64) -> Verdict {
    if marker.digest != own_digest {
        // The previous agent runs (the swap never happened, or was undone).
        Verdict::Clear
    } else if now_ms >= marker.deadline_ms {
        // The new build ran out of time before (a reboot, a crash): it does not get more.
        Verdict::RollBack
    } else {
        Verdict::Wait
    }
}

/// The verdict of the watchdog at `now_ms`, given whether the new agent still runs.
pub fn watch(marker: Option<&Marker>, agent_alive: bool, now_ms: u64) -> Verdict {
    match marker {
        // The new agent opened a session and cleared it.
        None => Verdict::Clear,
        Some(_) if !agent_alive => Verdict::RollBack,
        Some(m) if now_ms >= m.deadline_ms => Verdict::RollBack,
        Some(_) => Verdict::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, kind: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0x7f, b'E', b'L', b'F', class, data, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn only_an_executable_for_this_machine_fits() {
        let own = header(2, 1, 3, 62);
        assert_eq!(fits(&header(2, 1, 2, 62), &own), Ok(()));
        assert_eq!(fits(&header(2, 1, 3, 62), &own), Ok(()));
        let e = fits(&header(2, 1, 2, 183), &own).unwrap_err();
        assert_eq!(
            e.to_string().split(':').next().unwrap(),
            "the build is for aarch64 (64-bit), this board runs x86_64 (64-bit)"
        );
        assert!(matches!(fits(&header(1, 1, 2, 62), &own), Err(FitError::OtherMachine { .. })));
        assert_eq!(fits(&header(2, 1, 1, 62), &own), Err(FitError::NotExecutable(1)));
        assert_eq!(fits(b"#!/bin/sh\nexit 0\n\0\0\0\0", &own), Err(FitError::NotElf));
        assert_eq!(fits(b"\x7fELF", &own), Err(FitError::NotElf));
    }

    #[test]
    fn a_marker_is_cleared_by_the_old_build_and_rolled_back_after_its_deadline() {
        let m = Marker { digest: "sha256:new".into(), deadline_ms: 1_000 };
        assert_eq!(on_start(&m, "sha256:old", 5_000), Verdict::Clear);
        assert_eq!(on_start(&m, "sha256:new", 999), Verdict::Wait);
        assert_eq!(on_start(&m, "sha256:new", 1_000), Verdict::RollBack);
        assert_eq!(watch(None, false, 0), Verdict::Clear);
        assert_eq!(watch(Some(&m), false, 0), Verdict::RollBack);
        assert_eq!(watch(Some(&m), true, 999), Verdict::Wait);
        assert_eq!(watch(Some(&m), true, 1_000), Verdict::RollBack);
    }
}
