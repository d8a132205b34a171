//! Test support (feature `testing`): a builder of small but real OCI archives (layers
//! are tars a board can unpack, configs carry their `diff_ids`) and [`cases`], the one
//! table of archives → accepted or refused that the crate's reader, the manager's
//! `shoal image load` and the agent's `shoal-agent image load` all run. Not for
//! production code.

use std::io::Write;

use serde_json::json;

use crate::digest;
use crate::spec::{OCI_INDEX, OCI_MANIFEST};

/// The platforms every table image has: one for each kind of board, so any host finds
/// its own.
pub const PLATFORMS: &[(&str, &str, Option<&str>)] =
    &[("linux", "amd64", None), ("linux", "arm64", None), ("linux", "arm", Some("v7"))];

/// A tar with one regular file, as a layer (fixed times and owners, so it is the same
/// bytes every run).
pub fn layer_tar(file: &str, content: &[u8]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    t.append_data(&mut h, file, content).expect("build a layer tar");
    t.into_inner().expect("finish a layer tar")
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip in memory");
    e.finish().expect("gzip in memory")
}

/// Builds OCI archives.
#[derive(Debug, Clone, Default)]
pub struct ArchiveBuilder {
    /// Blobs by digest, in the order they go into the tar.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// `index.json`.
    pub index: serde_json::Value,
    /// The layer blobs' digests, in the order they were added.
    pub layer_digests: Vec<String>,
}

impl ArchiveBuilder {
    fn blob(&mut self, data: Vec<u8>) -> (String, u64) {
        let d = digest::of(&data);
        let size = data.len() as u64;
        if !self.blobs.iter().any(|(x, _)| *x == d) {
            self.blobs.push((d.clone(), data));
        }
        (d, size)
    }

    /// A multi-platform image whose `org.opencontainers.image.ref.name` is `name` (none
    /// when empty), one one-file layer per platform.
    pub fn multi_arch(name: &str, platforms: &[(&str, &str, Option<&str>)]) -> Self {
        let mut b = Self::empty();
        b.add_image(name, platforms);
        b
    }

    /// An archive with no image yet.
    pub fn empty() -> Self {
        Self { index: json!({ "schemaVersion": 2, "manifests": [] }), ..Self::default() }
    }

    /// Adds another image to `index.json`.
    pub fn add_image(&mut self, name: &str, platforms: &[(&str, &str, Option<&str>)]) -> &mut Self {
        self.add_image_with(name, platforms, |arch, variant| {
            layer_tar("hello.txt", format!("layer for {name} {arch}{variant:?}\n").as_bytes())
        })
    }

    /// Adds an image whose one layer per platform is `layer(architecture, variant)`: a
    /// tar, e.g. [`layer_tar`] of the bytes a test needs to move.
    pub fn add_image_with(
        &mut self,
        name: &str,
        platforms: &[(&str, &str, Option<&str>)],
        layer: impl Fn(&str, Option<&str>) -> Vec<u8>,
    ) -> &mut Self {
        let mut manifests = Vec::new();
        for (os, arch, variant) in platforms {
            let (layer, layer_size) = self.blob(layer(arch, *variant));
            self.layer_digests.push(layer.clone());
            let config = json!({
                "os": os, "architecture": arch, "variant": variant,
                "config": { "Cmd": ["/hello"] },
                "rootfs": { "type": "layers", "diff_ids": [layer] },
            });
            let (config, config_size) = self.blob(serde_json::to_vec(&config).expect("json"));
            let manifest = json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
                "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size }],
            });
            let (m, m_size) = self.blob(serde_json::to_vec(&manifest).expect("json"));
            let mut platform = json!({ "os": os, "architecture": arch });
            if let Some(v) = variant {
                platform["variant"] = json!(v);
            }
            manifests.push(json!({ "mediaType": OCI_MANIFEST, "digest": m, "size": m_size, "platform": platform }));
        }
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let (idx, idx_size) = self.blob(serde_json::to_vec(&index).expect("json"));
        let mut top = json!({ "mediaType": OCI_INDEX, "digest": idx, "size": idx_size });
        if !name.is_empty() {
            top["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
        }
        if let Some(list) = self.index["manifests"].as_array_mut() {
            list.push(top);
        }
        self
    }

    /// The layer blobs' digests.
    pub fn layers(&self) -> Vec<String> {
        self.layer_digests.clone()
    }

    /// The archive: `extra` entries (name, content) written raw after the blobs.
    pub fn tar(&self, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            // Set the name bytes directly so tests can write names tar::Builder refuses.
            if let Some(gnu) = h.as_gnu_mut() {
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            }
            h.set_cksum();
            t.append(&h, data).expect("build an archive");
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        for (d, data) in &self.blobs {
            add(&format!("blobs/sha256/{}", &d[7..]), data);
        }
        for (name, data) in extra {
            add(name, data);
        }
        add("index.json", &serde_json::to_vec(&self.index).expect("json"));
        t.into_inner().expect("finish an archive")
    }
}

/// What loading an archive must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Load these references, in this order.
    Loads(Vec<&'static str>),
    /// Refuse it with a message containing this.
    Refused(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the row is about.
    pub name: &'static str,
    /// The archive file's bytes.
    pub archive: Vec<u8>,
    /// What must happen.
    pub expect: Expect,
}

/// The table every archive reader of shoal runs: the same archive is accepted, or
/// refused for the same reason, by `shoal image load` and `shoal-agent image load`.
pub fn cases() -> Vec<Case> {
    let app = || ArchiveBuilder::multi_arch("demo/app:1.0", PLATFORMS);
    let plain = app().tar(&[]);
    let mut out = vec![
        Case { name: "a plain tar loads", archive: plain.clone(), expect: Expect::Loads(vec!["demo/app:1.0"]) },
        Case { name: "a gzipped tar loads", archive: gzip(&plain), expect: Expect::Loads(vec!["demo/app:1.0"]) },
        Case {
            name: "docker save's extra manifest.json is ignored",
            archive: gzip(&app().tar(&[("manifest.json", b"[]"), ("repositories", b"{}")])),
            expect: Expect::Loads(vec!["demo/app:1.0"]),
        },
        Case {
            name: "a name without a tag means latest",
            archive: ArchiveBuilder::multi_arch("demo/app", PLATFORMS).tar(&[]),
            expect: Expect::Loads(vec!["demo/app:latest"]),
        },
        Case {
            name: "two images in one archive",
            archive: app().add_image("demo/other:2", PLATFORMS).tar(&[]),
            expect: Expect::Loads(vec!["demo/app:1.0", "demo/other:2"]),
        },
        Case {
            name: "a bare tag is refused, not guessed at",
            archive: ArchiveBuilder::multi_arch("1.0", PLATFORMS).tar(&[]),
            expect: Expect::Refused("is named only by the tag \"1.0\": export it with a full name"),
        },
        Case {
            name: "an image with no name is refused",
            archive: ArchiveBuilder::multi_arch("", PLATFORMS).tar(&[]),
            expect: Expect::Refused("has no name (annotation org.opencontainers.image.ref.name)"),
        },
        Case {
            name: "a name with a space is refused",
            archive: ArchiveBuilder::multi_arch("demo/my app:1", PLATFORMS).tar(&[]),
            expect: Expect::Refused(
                "not a usable OCI image archive: image name \"demo/my app:1\" is not a valid reference",
            ),
        },
        Case {
            name: "no oci-layout file",
            archive: {
                let mut t = plain.clone();
                // The first entry is oci-layout: rename it away.
                t[..10].copy_from_slice(b"oci-layouX");
                let mut h = tar::Header::from_byte_slice(&t[..512]).clone();
                h.set_cksum();
                t[..512].copy_from_slice(h.as_bytes());
                t
            },
            // Refused at its first tar header, before the rest is read.
            expect: Expect::Refused("is no image archive (its first entry is \"oci-layouX\")"),
        },
        Case {
            name: "a truncated archive",
            archive: plain[..plain.len() / 2].to_vec(),
            expect: Expect::Refused("archive is truncated"),
        },
        Case {
            name: "a truncated gzip",
            archive: {
                let gz = gzip(&plain);
                gz[..gz.len() / 2].to_vec()
            },
            expect: Expect::Refused("archive is truncated"),
        },
        Case {
            name: "an entry that climbs out",
            archive: app().tar(&[("blobs/sha256/../../x", b"x")]),
            expect: Expect::Refused("points outside the archive"),
        },
        Case {
            name: "a blob name that is not sha256",
            archive: app().tar(&[("blobs/md5/0123", b"x")]),
            expect: Expect::Refused("is not a blob name"),
        },
        Case {
            name: "not a tar at all",
            archive: b"this is not a tar archive at all, just some text padding it out to more than a block".repeat(10),
            expect: Expect::Refused("cannot read the archive: an entry header is not valid tar"),
        },
    ];
    let mut tampered = app();
    let victim = tampered.layers()[1].clone();
    if let Some(entry) = tampered.blobs.iter_mut().find(|(d, _)| *d == victim) {
        entry.1[512] ^= 1;
    }
    out.push(Case {
        name: "a tampered layer",
        archive: tampered.tar(&[]),
        expect: Expect::Refused("in the archive is corrupt: its content does not match its digest"),
    });
    let mut missing = app();
    let gone = missing.layers()[2].clone();
    missing.blobs.retain(|(d, _)| *d != gone);
    out.push(Case {
        name: "a missing layer of another platform",
        archive: missing.tar(&[]),
        expect: Expect::Refused("(layer of linux/arm/v7) is missing"),
    });
    let mut wrong_size = app();
    wrong_size.index["manifests"][0]["size"] = json!(3);
    out.push(Case {
        name: "a descriptor with the wrong size",
        archive: wrong_size.tar(&[]),
        expect: Expect::Refused("but its descriptor says 3"),
    });
    out
}
