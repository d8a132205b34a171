//! Images end to end: an OCI archive loaded on the manager reaches every board, and
//! truncated or tampered archives are refused with the image list unchanged.
//!
//! The archive is built here, from the host's static `/bin/busybox`, rather than taken
//! from `out/images/` (built by `images/build.sh`): the test then needs nothing but the
//! two shoal binaries, and it knows exactly which bytes it can cut or tamper with.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use shoal_e2e::{wait_for, Cluster, Host};
use shoal_link::{ClientTls, Identity, Trust};
use shoal_proto::{frame, Envelope, ErrorKind, FetchBlob, Request, Response};

const REF: &str = "test/busybox:1.0";

fn digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A multi-arch OCI image layout, blob by blob.
struct Archive {
    blobs: Vec<(String, Vec<u8>)>,
    index: serde_json::Value,
    /// The host platform's layer (busybox), to tamper with.
    busybox_layer: String,
}

fn tar_of(entries: &[(&str, &[u8], u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        // Unset numeric fields are not numbers to a strict reader (the agent's unpacker).
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        t.append_data(&mut h, name, *data).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        t.append_link(&mut h, name, target).unwrap();
    }
    t.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        other => panic!("no OCI platform for {other}"),
    }
}

impl Archive {
    fn add(&mut self, data: Vec<u8>) -> (String, u64) {
        let d = digest(&data);
        let size = data.len() as u64;
        if !self.blobs.iter().any(|(x, _)| *x == d) {
            self.blobs.push((d.clone(), data));
        }
        (d, size)
    }

    /// linux/amd64, linux/arm64 and linux/arm/v7. The host's platform gets busybox; the
    /// others (which no board in this lab runs) get a small placeholder layer.
    fn busybox() -> Self {
        Self::busybox_built("1")
    }

    /// The same image with another build number in its configs: new configs, manifests
    /// and index, the same layers.
    fn busybox_built(build: &str) -> Self {
        let mut a = Self { blobs: Vec::new(), index: json!({}), busybox_layer: String::new() };
        let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static) is needed");
        let host = host_platform();
        let mut manifests = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", None), ("arm", Some("v7"))] {
            let layer_tar = if (arch, variant) == host {
                tar_of(&[("bin/busybox", &busybox, 0o755)], &[("bin/sh", "busybox")])
            } else {
                tar_of(&[("etc/placeholder", format!("linux/{arch}\n").as_bytes(), 0o644)], &[])
            };
            let diff_id = digest(&layer_tar);
            let (layer, layer_size) = a.add(gzip(&layer_tar));
            if (arch, variant) == host {
                a.busybox_layer = layer.clone();
            }
            let mut config = json!({
                "architecture": arch, "os": "linux",
                "config": { "Cmd": ["/bin/sh"], "Env": ["PATH=/bin", format!("BUILD={build}")] },
                "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            });
            let mut platform = json!({ "architecture": arch, "os": "linux" });
            if let Some(v) = variant {
                config["variant"] = json!(v);
                platform["variant"] = json!(v);
            }
            let (config, config_size) = a.add(serde_json::to_vec(&config).unwrap());
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size },
                "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size }],
            });
            let (m, m_size) = a.add(serde_json::to_vec(&manifest).unwrap());
            manifests.push(json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": m_size, "platform": platform,
            }));
        }
        let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
        let (idx, idx_size) = a.add(serde_json::to_vec(&index).unwrap());
        a.index = json!({ "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": idx, "size": idx_size,
            "annotations": { "org.opencontainers.image.ref.name": REF },
        }]});
        a
    }

    fn tar(&self) -> Vec<u8> {
        let mut entries: Vec<(String, Vec<u8>)> =
            vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
        entries.push(("index.json".into(), serde_json::to_vec(&self.index).unwrap()));
        for (d, data) in &self.blobs {
            entries.push((format!("blobs/sha256/{}", &d[7..]), data.clone()));
        }
        let refs: Vec<(&str, &[u8], u32)> = entries.iter().map(|(n, d)| (n.as_str(), d.as_slice(), 0o644)).collect();
        tar_of(&refs, &[])
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

fn load_fails(host: &Host, path: &str, expect: &str) {
    let out = host.run("shoal", &["image", "load", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "loading {path} succeeded");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
}

/// `shoal-agent image load` (a board, no manager needed) and `shoal image load` (the
/// manager) accept the same archives and refuse the others with the same message: plain
/// and gzipped, a bare tag refused, a truncated archive refused. The board's side runs
/// on the manager's host under its own data dir, where no agent is running.
#[test]
#[ignore = "needs root"]
fn a_board_side_loads_exactly_what_the_manager_loads() {
    let c = Cluster::start(0).unwrap();
    let m = c.manager_host();
    let good = Archive::busybox().tar();
    let mut tag_only = Archive::busybox();
    tag_only.index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = json!("1.0");
    let cases: [(&str, Vec<u8>, Option<&str>); 4] = [
        ("plain.tar", good.clone(), None),
        ("gzipped.tar.gz", gzip(&good), None),
        ("tag-only.tar", tag_only.tar(), Some("is named only by the tag \"1.0\"")),
        ("truncated.tar", good[..good.len() / 2].to_vec(), Some("archive is truncated")),
    ];
    for (name, bytes, refused) in cases {
        let path = write(&c.lab.dir, name, &bytes);
        let manager = m.run("shoal", &["image", "load", &path]);
        let board = m.run("shoal-agent", &["image", "load", &path]);
        let (m_err, b_err) = (String::from_utf8_lossy(&manager.stderr), String::from_utf8_lossy(&board.stderr));
        match refused {
            None => {
                assert!(manager.status.success(), "{name}: the manager refused it: {m_err}");
                assert!(board.status.success(), "{name}: the board refused it: {b_err}");
                for out in [&manager.stdout, &board.stdout] {
                    assert_eq!(String::from_utf8_lossy(out).trim(), format!("Loaded image: {REF}"), "{name}");
                }
            }
            Some(why) => {
                assert!(!manager.status.success() && !board.status.success(), "{name}: loaded somewhere");
                // The same reason, word for word: the line the manager's CLI printed.
                let reason = m_err.lines().find(|l| l.contains(why)).unwrap_or_else(|| panic!("{name}: {m_err}"));
                let reason = reason.trim().trim_start_matches("Error: ").trim_start_matches("error: ");
                assert!(b_err.contains(reason), "{name}: the board said {b_err:?}, the manager {m_err:?}");
            }
        }
    }
    let held = m.run("shoal-agent", &["image", "ls"]);
    assert!(String::from_utf8_lossy(&held.stdout).contains(REF), "the board holds {REF}");
}

#[test]
#[ignore = "needs root"]
fn a_loaded_image_reaches_every_board_and_rm_takes_it_back() {
    let c = Cluster::start(3).unwrap();
    let m = c.manager_host();
    let archive = Archive::busybox();
    let path = write(&c.lab.dir, "busybox.tar", &archive.tar());
    let out = m.shoal(&["image", "load", &path]);
    assert_eq!(out.trim(), format!("Loaded image: {REF}"));

    let rows = m.image_ls();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["REPOSITORY"].as_str(), rows[0]["TAG"].as_str()), ("test/busybox", "1.0"));
    assert_eq!(rows[0]["PLATFORMS"], "linux/amd64,linux/arm/v7,linux/arm64");
    assert_eq!(m.shoal(&["image", "ls", "-q"]).trim(), rows[0]["DIGEST"]);

    let start = std::time::Instant::now();
    wait_for("every board to hold the image", Duration::from_secs(60), || {
        let rows = m.image_ls();
        (rows.len() == 1 && rows[0]["NODES"] == "node1,node2,node3").then_some(())
    });
    eprintln!("load → held by 3 boards in {:?}", start.elapsed());

    let out = m.shoal(&["image", "rm", REF]);
    assert!(out.contains(&format!("Untagged: {REF}")), "{out}");
    assert!(m.image_ls().is_empty());
    let out = m.run("shoal", &["image", "rm", REF]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));
}

#[test]
#[ignore = "needs root"]
fn bad_archives_are_refused_and_the_image_list_is_unchanged() {
    let mut c = Cluster::start(1).unwrap();
    let dir = c.lab.dir.clone();
    let m = &c.lab.hosts[0];
    let good = Archive::busybox();
    let good_tar = good.tar();
    m.shoal(&["image", "load", "-i", &write(&dir, "good.tar", &good_tar)]);
    let before = m.shoal(&["image", "ls"]);
    // NODES may change meanwhile (the board fetching the image); the rest may not.
    let ls_nodes_cut = |s: &str| -> Vec<Vec<String>> {
        s.lines().map(|l| l.split_whitespace().take(5).map(str::to_owned).collect()).collect()
    };

    // Cut in the middle of the busybox layer.
    let truncated = write(&dir, "truncated.tar", &good_tar[..good_tar.len() / 2]);
    load_fails(m, &truncated, "archive is truncated");

    let mut tampered = Archive::busybox();
    let victim = tampered.busybox_layer.clone();
    let blob = tampered.blobs.iter_mut().find(|(d, _)| *d == victim).unwrap();
    let last = blob.1.len() - 100;
    blob.1[last] ^= 0xff;
    let tampered = write(&dir, "tampered.tar", &tampered.tar());
    load_fails(m, &tampered, &format!("blob {victim} in the archive is corrupt"));

    load_fails(m, dir.join("missing.tar").to_str().unwrap(), "cannot read the archive");
    load_fails(m, &write(&dir, "text.tar", &b"hello, not an archive\n".repeat(100)), "cannot read the archive");

    assert_eq!(ls_nodes_cut(&m.shoal(&["image", "ls"])), ls_nodes_cut(&before));

    // The image survives a manager restart.
    c.manager.stop();
    c.manager = c.lab.hosts[0].spawn("shoal", &["manager", "run"]);
    let m = &c.lab.hosts[0];
    wait_for("the manager to answer again", Duration::from_secs(10), || {
        m.run("shoal", &["image", "ls"]).status.success().then_some(())
    });
    assert_eq!(ls_nodes_cut(&m.shoal(&["image", "ls"])), ls_nodes_cut(&before));

    // Loading the same reference again replaces the image; blobs only the old one used go.
    let rebuilt = Archive::busybox_built("2");
    m.shoal(&["image", "load", &write(&dir, "rebuilt.tar", &rebuilt.tar())]);
    let rows = m.image_ls();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let new_digest = &rebuilt.index["manifests"][0]["digest"].as_str().unwrap()[7..19];
    assert_eq!(rows[0]["DIGEST"], new_digest);
    let mut stored: Vec<String> = std::fs::read_dir(m.data_dir.join("manager/blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    stored.sort();
    let mut expected: Vec<String> = rebuilt.blobs.iter().map(|(d, _)| d.clone()).collect();
    expected.sort();
    assert_eq!(stored, expected, "the store holds exactly the new image's blobs");
}

/// Client TLS from a credentials file holding `ca_pem`, `cert_pem` and `key_pem` (an
/// agent's identity.json or the CLI's admin.json); `None` for no certificate.
fn tls_from(path: Option<&Path>, ca_pem: &str) -> ClientTls {
    let pem = |s: &str| shoal_link::files::pem_der(s).unwrap();
    let identity = path.map(|p| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        Identity {
            chain: vec![CertificateDer::from(pem(v["cert_pem"].as_str().unwrap()))],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pem(v["key_pem"].as_str().unwrap()))),
        }
    });
    ClientTls::new(Trust::Ca(CertificateDer::from(pem(ca_pem))), identity, Duration::from_secs(5)).unwrap()
}

/// Asks for a blob from `offset`; returns the answer and the raw bytes that followed.
async fn fetch(conn: &quinn::Connection, digest: &str, offset: u64) -> (Response, Vec<u8>) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let request = Request::FetchBlob(FetchBlob { digest: shoal_proto::text(digest).unwrap(), offset });
    shoal_link::framed::send(&mut send, &Envelope::new(request)).await.unwrap();
    let _ = send.finish();
    let response = shoal_link::framed::recv::<Response>(&mut recv, frame::MAX_FRAME_LEN).await.unwrap().unwrap();
    let rest = recv.read_to_end(8 << 20).await.unwrap();
    (response, rest)
}

#[test]
#[ignore = "needs root"]
fn nodes_fetch_blobs_from_an_offset_and_nobody_else_may() {
    let c = Cluster::start(1).unwrap();
    let m = c.manager_host();
    let archive = Archive::busybox();
    m.shoal(&["image", "load", &write(&c.lab.dir, "busybox.tar", &archive.tar())]);
    let layer = archive.blobs.iter().find(|(d, _)| *d == archive.busybox_layer).unwrap().1.clone();
    let size = layer.len() as u64;

    let admin_json = m.data_dir.join("manager/admin.json");
    let admin: serde_json::Value = serde_json::from_slice(&std::fs::read(&admin_json).unwrap()).unwrap();
    let ca_pem = admin["ca_pem"].as_str().unwrap().to_owned();
    let node_json = c.lab.hosts[1].data_dir.join("agent/identity.json");
    let addr = format!("{}:4242", m.ip).parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let endpoint = shoal_link::client_endpoint(addr).unwrap();
        let connect = |tls: ClientTls| {
            let endpoint = endpoint.clone();
            async move { shoal_link::connect(&endpoint, addr, &tls, Duration::from_secs(5)).await.unwrap() }
        };
        let node = connect(tls_from(Some(&node_json), &ca_pem)).await;
        let (r, bytes) = fetch(&node, &archive.busybox_layer, 0).await;
        assert_eq!((r, bytes.len() as u64), (Response::Blob { size }, size));
        assert_eq!(bytes, layer);
        // Resuming: only the rest comes.
        let (r, bytes) = fetch(&node, &archive.busybox_layer, size - 1000).await;
        assert_eq!(r, Response::Blob { size });
        assert_eq!(bytes, layer[layer.len() - 1000..]);
        let (r, bytes) = fetch(&node, &archive.busybox_layer, size).await;
        assert_eq!((r, bytes.len()), (Response::Blob { size }, 0));
        let kind = |r: Response| match r {
            Response::Error(e) => e.kind,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(kind(fetch(&node, &archive.busybox_layer, size + 1).await.0), ErrorKind::InvalidRequest);
        assert_eq!(kind(fetch(&node, &digest(b"not stored"), 0).await.0), ErrorKind::NotFound);
        assert_eq!(kind(fetch(&node, "sha256:../../state.redb", 0).await.0), ErrorKind::InvalidRequest);

        let anonymous = connect(tls_from(None, &ca_pem)).await;
        assert_eq!(kind(fetch(&anonymous, &archive.busybox_layer, 0).await.0), ErrorKind::Unauthorized);
        let admin = connect(tls_from(Some(&admin_json), &ca_pem)).await;
        assert_eq!(kind(fetch(&admin, &archive.busybox_layer, 0).await.0), ErrorKind::Unauthorized);
        for conn in [node, anonymous, admin] {
            conn.close(0u32.into(), b"done");
        }
    });
}
