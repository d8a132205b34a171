//! Secrets and configs: named blobs the operator stores on the manager
//! (`shoal secret create`, `shoal config create`) and services reference
//! (`--secret`, `--config`). The two kinds share every type here and differ in how they
//! are kept and shown: a secret's bytes are encrypted at rest by the manager, never
//! shown back, and live on a board only in memory and in a tmpfs of the container that
//! uses it; a config's may be shown and written plainly.
//!
//! A reference ([`SecretRef`]) names the object and where it appears in the container;
//! the manager fills in the object's current `version` when a service is created or
//! updated, so that `secret update` (a new version) changes the spec of each service
//! using it and rolls it like any update. Boards get the bytes of exactly the objects
//! their tasks reference, as [`SecretSet`] on the session (see [`crate::ManagerMessage::Secrets`]).
//!
//! Data and checks only: no I/O, no crypto.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::messages::MAX_LABELS;
use crate::services::SpecError;
use crate::{BoundedVec, Bytes, Label, Text};

/// Largest secret or config: Docker's 500 KiB. With one per message, a set chunk stays
/// within the agent's 1 MiB frame.
pub const MAX_DATA: usize = 500 * 1024;
/// Most secrets (and, separately, configs) one service references.
pub const MAX_REFS: usize = 32;
/// Most objects in one listing.
pub const MAX_LISTED: usize = 1024;
/// Most services named in a refusal or `inspect`.
pub const MAX_USERS: usize = 64;
/// Most payloads in one [`SecretSet`] message (the manager also cuts by bytes).
pub const MAX_SET_CHUNK: usize = 64;
/// Where secrets appear in a container, as in Docker.
pub const SECRETS_DIR: &str = "/run/secrets";

/// A secret's or config's name.
pub type ObjectName = Text<64>;
/// Where a reference puts the object in the container: a file name under
/// [`SECRETS_DIR`] for a secret, an absolute path for a config.
pub type Target = Text<256>;

/// Which of the two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// `shoal secret`: encrypted at rest, never shown, tmpfs only on boards.
    Secret,
    /// `shoal config`: plain.
    Config,
}

impl Kind {
    /// The word for people and commands: `secret`, `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bytes of a secret or config. `Debug` shows only the length, so a secret never
/// reaches a log through a derived `Debug` of what holds it.
pub type Data = Bytes<MAX_DATA>;

/// What `secret create` / `config create` send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// Secret or config.
    pub kind: Kind,
    /// Its name (unique per kind).
    pub name: ObjectName,
    /// `KEY=VALUE` labels (stacks put `com.docker.stack.namespace` here).
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// The bytes.
    pub data: Data,
}

/// A secret or config as listed and inspected: never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectView {
    /// Secret or config.
    pub kind: Kind,
    /// ID: 25 base-36 characters.
    pub id: crate::NodeId,
    /// Name.
    pub name: ObjectName,
    /// Labels.
    pub labels: BoundedVec<Label, MAX_LABELS>,
    /// Starts at 1; each `update` adds one.
    pub version: u64,
    /// Size of the current bytes.
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Services that reference it (filled by `inspect`).
    pub used_by: BoundedVec<crate::services::ServiceName, MAX_USERS>,
    /// A config's bytes, for `config inspect` (Docker shows `Spec.Data`); always
    /// `None` for a secret.
    pub data: Option<Data>,
}

/// `shoal secret|config ...` requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectRequest {
    /// `create NAME FILE|-`.
    Create(Box<ObjectSpec>),
    /// `ls`.
    List(Kind),
    /// `inspect NAME`.
    Inspect {
        /// Which kind.
        kind: Kind,
        /// Name, ID or unique ID prefix.
        name: Text<64>,
    },
    /// `rm NAME`: refused while a service references it.
    Remove {
        /// Which kind.
        kind: Kind,
        /// Name, ID or unique ID prefix.
        name: Text<64>,
    },
    /// `update NAME -`: new bytes, a new version, and every service using it rolls.
    Update {
        /// Which kind.
        kind: Kind,
        /// Name, ID or unique ID prefix.
        name: Text<64>,
        /// The new bytes.
        data: Data,
    },
}

/// Answers to [`ObjectRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectReply {
    /// Created; its ID.
    Created(crate::NodeId),
    /// Listing.
    Objects(BoundedVec<ObjectView, MAX_LISTED>),
    /// One object.
    Object(Box<ObjectView>),
    /// Removed; its ID.
    Removed(crate::NodeId),
    /// Updated to `version`; these services roll to it.
    Updated {
        /// The new version.
        version: u64,
        /// The services being updated.
        services: BoundedVec<crate::services::ServiceName, MAX_USERS>,
    },
}

/// A service's reference to a secret or config: `--secret db_password`,
/// `--secret source=db,target=pw,uid=0,gid=0,mode=0400`,
/// `--config source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0440`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    /// The object's name.
    pub source: ObjectName,
    /// Where it appears: a file name under `/run/secrets` (secrets), an absolute path
    /// (configs; default `/<source>`, as Docker).
    pub target: Target,
    /// Owner in the container.
    pub uid: u32,
    /// Group in the container.
    pub gid: u32,
    /// Permission bits (Docker's default 0444).
    pub mode: u32,
    /// The object's version the task uses, filled in by the manager (0 until then).
    pub version: u64,
}

impl SecretRef {
    /// Parses `--secret`/`--config`: a bare name, or `source=,target=,uid=,gid=,mode=`
    /// (mode in octal, as Docker takes it).
    pub fn parse(kind: Kind, s: &str) -> Result<Self, SpecError> {
        let bad = |reason: String| SpecError::Invalid(format!("--{kind} {s:?}: {reason}"));
        let mut source: Option<&str> = None;
        let mut target: Option<&str> = None;
        let (mut uid, mut gid, mut mode) = (0u32, 0u32, 0o444u32);
        if !s.contains('=') {
            source = Some(s.trim());
        } else {
            for field in s.split(',') {
                let Some((k, v)) = field.split_once('=') else {
                    return Err(bad(format!("{field:?} is not KEY=VALUE")));
                };
                let v = v.trim();
                let number = |what: &str, radix: u32| {
                    u32::from_str_radix(v, radix).map_err(|_| bad(format!("{what} {v:?} is not a number")))
                };
                match k.trim() {
                    "source" | "src" => source = Some(v),
                    "target" => target = Some(v),
                    "uid" => uid = number("uid", 10)?,
                    "gid" => gid = number("gid", 10)?,
                    "mode" => mode = number("mode", 8)?,
                    other => {
                        return Err(bad(format!("unknown field {other:?}: expected source, target, uid, gid or mode")))
                    }
                }
            }
        }
        let source =
            source.filter(|s| !s.is_empty()).ok_or_else(|| bad("a source is required, e.g. source=NAME".into()))?;
        let default_target = match kind {
            Kind::Secret => source.to_owned(),
            Kind::Config => format!("/{source}"),
        };
        let r = Self {
            source: crate::text(source).map_err(|e| bad(format!("source: {e}")))?,
            target: crate::text(target.unwrap_or(&default_target)).map_err(|e| bad(format!("target: {e}")))?,
            uid,
            gid,
            mode,
            version: 0,
        };
        r.validate(kind)?;
        Ok(r)
    }

    /// Checks what the types cannot: a usable name, a target that stays where it
    /// belongs, permission bits only.
    pub fn validate(&self, kind: Kind) -> Result<(), SpecError> {
        let bad = |reason: String| SpecError::Invalid(format!("{kind} {}: {reason}", self.source));
        check_name(kind, &self.source).map_err(|e| SpecError::Invalid(e.to_string()))?;
        if self.mode > 0o777 {
            return Err(bad(format!("mode {:o} is not permission bits: use 0 to 0777, e.g. mode=0400", self.mode)));
        }
        let t = self.target.as_str();
        let parts_ok = |p: &str| p.split('/').filter(|c| !c.is_empty()).all(|c| c != "." && c != "..");
        match kind {
            Kind::Secret => {
                // A name under /run/secrets (Docker also takes the full path).
                let name = t.strip_prefix("/run/secrets/").unwrap_or(t);
                if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
                    return Err(bad(format!(
                        "target {t:?} must be a file name under /run/secrets, e.g. target=db_password"
                    )));
                }
            }
            Kind::Config => {
                if !t.starts_with('/') || t == "/" || !parts_ok(t) || t.contains('\0') {
                    return Err(bad(format!(
                        "target {t:?} must be an absolute file path without `..`, e.g. target=/etc/app.conf"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A secret's file name under `/run/secrets`.
    pub fn file_name(&self) -> &str {
        self.target.as_str().strip_prefix("/run/secrets/").unwrap_or(self.target.as_str())
    }

    /// The long form, which [`SecretRef::parse`] reads back.
    pub fn long_form(&self) -> String {
        format!(
            "source={},target={},uid={},gid={},mode={:04o}",
            self.source, self.target, self.uid, self.gid, self.mode
        )
    }
}

/// A name that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} name {name:?}: use letters, digits, `-`, `_` and `.` (at most 64, starting with a letter or digit)"
)]
pub struct BadName {
    /// Which kind.
    pub kind: Kind,
    /// What was given.
    pub name: String,
}

/// Docker's rule for secret and config names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64.
pub fn check_name(kind: Kind, name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadName { kind, name: name.to_owned() })
    }
}

/// One object's bytes as a board receives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Secret or config.
    pub kind: Kind,
    /// Its name.
    pub name: ObjectName,
    /// Its version.
    pub version: u64,
    /// Its bytes (redacted in `Debug`).
    pub data: Data,
}

/// One chunk of the objects a board's tasks reference, sent whole (in chunks) each time
/// the set changes: the board replaces what it holds in memory with it, so an object no
/// task of the board uses any more is gone from its memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSet {
    /// More chunks of the same set follow.
    pub more: bool,
    /// The payloads of this chunk.
    pub items: BoundedVec<Payload, MAX_SET_CHUNK>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_dockers() {
        let r = SecretRef::parse(Kind::Secret, "db_password").unwrap();
        assert_eq!((r.source.as_str(), r.target.as_str(), r.mode), ("db_password", "db_password", 0o444));
        let r = SecretRef::parse(Kind::Secret, "source=db,target=pw,uid=70,gid=71,mode=0400").unwrap();
        assert_eq!((r.target.as_str(), r.uid, r.gid, r.mode), ("pw", 70, 71, 0o400));
        assert_eq!(SecretRef::parse(Kind::Secret, &r.long_form()).unwrap(), r);
        let c = SecretRef::parse(Kind::Config, "source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0440").unwrap();
        assert_eq!((c.target.as_str(), c.mode), ("/etc/nginx/nginx.conf", 0o440));
        assert_eq!(SecretRef::parse(Kind::Config, "app").unwrap().target.as_str(), "/app");
    }

    #[test]
    fn bad_references_are_refused_with_what_to_type() {
        for (kind, bad) in [
            (Kind::Secret, "source=db,target=../../etc/shadow"),
            (Kind::Secret, "source=db,target=a/b"),
            (Kind::Secret, "source=db,mode=999"),
            (Kind::Secret, "source=db,mode=0x1"),
            (Kind::Secret, "target=x"),
            (Kind::Secret, "source=db,colour=red"),
            (Kind::Secret, "-db"),
            (Kind::Config, "source=c,target=relative"),
            (Kind::Config, "source=c,target=/etc/../root/x"),
        ] {
            let e = SecretRef::parse(kind, bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid service spec: "), "{bad}: {e}");
        }
    }

    #[test]
    fn names_follow_dockers_rule() {
        assert!(check_name(Kind::Secret, "db_password.v2-x").is_ok());
        for bad in ["", "_x", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_name(Kind::Config, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_payload_never_shows_its_bytes_in_debug() {
        let p = Payload {
            kind: Kind::Secret,
            name: crate::text("db").unwrap(),
            version: 1,
            data: b"hunter2-s3cret".as_slice().try_into().unwrap(),
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_largest_payload_fits_a_frame() {
        let set = SecretSet {
            more: false,
            items: vec![Payload {
                kind: Kind::Secret,
                name: crate::text(&"n".repeat(64)).unwrap(),
                version: u64::MAX,
                data: vec![0xffu8; MAX_DATA].try_into().unwrap(),
            }]
            .try_into()
            .unwrap(),
        };
        let bytes = postcard::to_allocvec(&crate::ManagerMessage::Secrets(set)).unwrap();
        assert!(bytes.len() < crate::MAX_FRAME_LEN / 2 + 8192, "{}", bytes.len());
    }
}
