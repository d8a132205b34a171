//! Images from a registry (issue 14): a real registry (Debian's `docker-registry`,
//! distribution v2) started in the manager's namespace on its loopback, images pushed
//! with `skopeo` from the archives `images/build.sh` makes, and the manager pulling
//! through a proxy of the test's that counts every byte and request and can slow the
//! stream down. One cluster for every check: basic auth (anonymous refused, wrong
//! password refused), a missing tag, two services on one image pulled once, only the
//! boards' platform fetched from a two-platform index, the service pinned to the digest
//! and running on a board, a registry killed mid-pull and restarted (the pull resumes
//! where it stopped), and bearer-token auth with a token issuer run by the test.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::{lab_image, wait_for, Cluster};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

/// Runs `f` on a thread inside network namespace `ns`; threads it starts stay there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("opening the namespace");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("entering the namespace");
        f()
    })
}

/// A TCP listener on the namespace's loopback, and its port.
fn listen_in(ns: &str) -> (TcpListener, u16) {
    in_ns(ns, || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        (l, port)
    })
    .join()
    .unwrap()
}

fn nsenter(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(program);
    c
}

/// `docker-registry serve` in the namespace, killed on drop.
struct Registry {
    child: Option<Child>,
    ns: String,
    config: PathBuf,
    port: u16,
}

impl Registry {
    fn start(ns: &str, dir: &Path, name: &str, auth: &str) -> Self {
        let port = listen_in(ns).1; // a free port (released at once)
        let data = dir.join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    \
                 enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n{auth}",
                data.display()
            ),
        )
        .unwrap();
        let mut r = Self { child: None, ns: ns.to_owned(), config, port };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = nsenter(&self.ns, "docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (scripts/setup.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("the registry to listen", Duration::from_secs(10), || {
            in_ns(&self.ns, move || TcpStream::connect(("127.0.0.1", port)).is_ok()).join().unwrap().then_some(())
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    /// Bytes sent from the registry to the manager.
    down: AtomicU64,
    /// Request lines (`GET /v2/...`).
    requests: Mutex<Vec<String>>,
    /// Bytes per second allowed downstream; 0 is unlimited.
    rate: AtomicU64,
    stop: AtomicBool,
}

impl Seen {
    fn blob_gets(&self) -> Vec<String> {
        let reqs = self.requests.lock().unwrap();
        reqs.iter().filter(|r| r.starts_with("GET ") && r.contains("/blobs/")).cloned().collect()
    }
    fn digests_asked(&self, from: usize) -> BTreeSet<String> {
        let reqs = self.requests.lock().unwrap();
        reqs[from..]
            .iter()
            .filter_map(|r| r.rsplit('/').next().filter(|d| d.starts_with("sha256:")).map(str::to_owned))
            .collect()
    }
}

/// A proxy on the namespace's loopback in front of `upstream`, counting and pacing.
fn proxy(ns: &str, upstream: u16) -> (u16, Arc<Seen>) {
    let (listener, port) = listen_in(ns);
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    in_ns(ns, move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if s.stop.load(Ordering::Relaxed) {
                break;
            }
            let s = s.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
                let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let s_up = s.clone();
                let up = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]);
                        for line in text.lines().filter(|l| l.ends_with(" HTTP/1.1")) {
                            s_up.requests.lock().unwrap().push(line.trim_end_matches(" HTTP/1.1").to_owned());
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    s.down.fetch_add(n as u64, Ordering::Relaxed);
                    let rate = s.rate.load(Ordering::Relaxed);
                    if rate > 0 {
                        std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                    }
                }
                // The registry went away: the manager sees its connection end mid-body.
                let _ = c_out.shutdown(std::net::Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    (port, seen)
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64_std(data: &[u8]) -> String {
    let mut s = b64url(data).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// A token issuer as Docker Hub's auth service: basic credentials in, an ES256 JWT out,
/// granting the scopes asked for. The registry trusts `cert.pem` (its `x5c` header).
fn token_issuer(ns: &str, dir: &Path) -> u16 {
    let key = dir.join("token-key.pem");
    let cert = dir.join("token-cert.pem");
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=shoal-test-token", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let pkcs8 = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8.stdout,
        &rng,
    )
    .expect("the token key");
    let x5c = b64_std(&der.stdout);
    let (listener, port) = listen_in(ns);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let want = format!("authorization: basic {}", b64_std(format!("{USER}:{PASSWORD}").as_bytes()));
            let authorized = req.lines().any(|l| l.trim().eq_ignore_ascii_case(&want));
            if !authorized {
                let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let target = req.split_whitespace().nth(1).unwrap_or("");
            let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
            let access: Vec<serde_json::Value> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("scope="))
                .map(|s| s.replace("%3A", ":").replace("%2F", "/").replace("%2C", ","))
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
                })
                .collect();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
            let claims = serde_json::json!({
                "iss": "shoal-test-issuer", "sub": USER, "aud": "shoal-test", "exp": now + 300,
                "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", access.len()), "access": access,
            });
            let signing_input =
                format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
            let sig = signer.sign(&rng, signing_input.as_bytes()).unwrap();
            let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
            let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 }).to_string();
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

/// `skopeo copy --all` of an archive into the registry, from the namespace.
fn push(ns: &str, archive: &Path, dest: &str) {
    let out = nsenter(ns, "skopeo")
        .args(["copy", "--all", "--quiet", "--dest-tls-verify=false", "--dest-creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo (scripts/setup.sh installs it)");
    assert!(out.status.success(), "skopeo copy to {dest}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The raw manifest or index at `reference`, straight from the registry.
fn raw(ns: &str, reference: &str) -> serde_json::Value {
    let out = nsenter(ns, "skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect {reference}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Digests (manifest, config, layers) of `arch`'s image in the index at `reference`,
/// and their sizes.
fn platform_blobs(ns: &str, reference: &str, arch: &str) -> Vec<(String, u64)> {
    let index = raw(ns, reference);
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap_or_else(|| panic!("no {arch} in {reference}"));
    let digest = entry["digest"].as_str().unwrap().to_owned();
    let repo = reference.rsplit_once(':').unwrap().0;
    let manifest = raw(ns, &format!("{repo}@{digest}"));
    let mut out = vec![(digest, entry["size"].as_u64().unwrap())];
    out.push((manifest["config"]["digest"].as_str().unwrap().to_owned(), manifest["config"]["size"].as_u64().unwrap()));
    for l in manifest["layers"].as_array().unwrap() {
        out.push((l["digest"].as_str().unwrap().to_owned(), l["size"].as_u64().unwrap()));
    }
    out
}

#[test]
#[ignore = "needs root"]
fn images_come_from_a_registry_with_auth_resumption_and_only_the_needed_platforms() {
    let started = Instant::now();
    let app = lab_image("demo-app-1.0.tar");
    let redis = lab_image("redis.tar");
    let cluster = Cluster::start(1).expect("cluster");
    let m = cluster.manager_host();
    let ns = m.ns.clone();
    let dir = cluster.lab.dir.clone();
    let htpasswd = dir.join("htpasswd");
    let made = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().expect("htpasswd (apache2-utils)");
    std::fs::write(&htpasswd, &made.stdout).unwrap();
    let mut basic = Registry::start(
        &ns,
        &dir,
        "basic",
        &format!("  htpasswd:\n    realm: shoal-test\n    path: {}\n", htpasswd.display()),
    );
    push(&ns, &app, &format!("127.0.0.1:{}/demo/app:1.0", basic.port));
    push(&ns, &redis, &format!("127.0.0.1:{}/redis:7", basic.port));
    let (port, seen) = proxy(&ns, basic.port);
    let registry = format!("127.0.0.1:{port}");
    let app_ref = format!("{registry}/demo/app:1.0");
    let shoal = |args: &[&str]| m.run("shoal", args);
    let fails_with = |args: &[&str], text: &str| {
        let out = shoal(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(text), "shoal {args:?}: expected {text:?}, got {err}");
    };

    // Anonymous is refused by a registry with basic auth; so is a wrong password.
    fails_with(&["image", "pull", &app_ref], "refused access to demo/app");
    let login = |password: &str| {
        m.run_with_input(
            "shoal",
            &["login", &registry, "-u", USER, "--password-stdin"],
            format!("{password}\n").as_bytes(),
        )
    };
    let wrong = login("not-it");
    assert!(
        !wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("incorrect username or password")
    );
    assert!(login(PASSWORD).status.success());
    let creds = std::fs::read_to_string(m.data_dir.join("manager/registries.json")).unwrap();
    assert!(creds.contains(&b64_std(format!("{USER}:{PASSWORD}").as_bytes())), "docker's config.json format: {creds}");
    fails_with(&["image", "pull", &format!("{registry}/demo/app:9.9")], "not found: the tag does not exist");
    fails_with(
        &["service", "create", "--name", "nope", "--detach", &format!("{registry}/demo/app:9.9")],
        "could not be pulled",
    );

    // An image with no manifest for the board's platform is refused, naming both.
    let out = nsenter(&ns, "skopeo")
        .args(["copy", "--quiet", "--override-arch", "arm64", "--dest-tls-verify=false"])
        .args(["--dest-creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("oci-archive:{}", app.display()))
        .arg(format!("docker://127.0.0.1:{}/arm/only:1", basic.port))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(
        &["service", "create", "--name", "armonly", "--detach", &format!("{registry}/arm/only:1")],
        "has no image for linux/amd64 (needed by node1): it offers linux/arm64",
    );

    // Two services on one image at once: one pull, of the board's platform only.
    let before = seen.blob_gets().len();
    let before_requests = seen.requests.lock().unwrap().len();
    let creates: Vec<_> = ["app1", "app2"]
        .iter()
        .map(|name| {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(shoal_e2e::bin("shoal"))
                .args(["service", "create", "--with-registry-auth", "--detach", "--name", name, &app_ref])
                .env("SHOAL_DATA_DIR", &m.data_dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for c in creates {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "service create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let amd64 = platform_blobs(&ns, &format!("127.0.0.1:{}/demo/app:1.0", basic.port), "amd64");
    let arm64 = platform_blobs(&ns, &format!("127.0.0.1:{}/demo/app:1.0", basic.port), "arm64");
    let gets = seen.blob_gets()[before..].to_vec();
    let asked = seen.digests_asked(before_requests);
    for (d, _) in &amd64[1..] {
        assert_eq!(gets.iter().filter(|g| g.ends_with(d.as_str())).count(), 1, "{d} fetched once: {gets:?}");
    }
    for (d, _) in &arm64 {
        assert!(!asked.contains(d), "{d} is arm64's, which no board needs, yet it was asked for");
    }
    let pinned = m.shoal(&["service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", "app1"]);
    assert!(pinned.trim().starts_with(&format!("{app_ref}@sha256:")), "pinned to the digest: {pinned}");
    let ls = m.shoal(&["image", "ls"]);
    assert!(
        ls.contains(&format!("{registry}/demo/app")) && ls.contains("linux/amd64") && !ls.contains("linux/arm64"),
        "{ls}"
    );
    // The service from the registry's image runs on the board.
    wait_for("app1 to run from the pulled image", Duration::from_secs(20), || {
        (cluster.replicas("app1") == "1/1").then_some(())
    });

    // The registry dies mid-pull and comes back: the pull resumes where it stopped.
    let redis_amd64 = platform_blobs(&ns, &format!("127.0.0.1:{}/redis:7", basic.port), "amd64");
    let needed: u64 = redis_amd64.iter().map(|(_, s)| s).sum();
    seen.rate.store(3 << 20, Ordering::Relaxed);
    let start_bytes = seen.down.load(Ordering::Relaxed);
    let pull = {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(shoal_e2e::bin("shoal"))
            .args(["image", "pull", &format!("{registry}/redis:7")])
            .env("SHOAL_DATA_DIR", &m.data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    wait_for("a third of redis to arrive", Duration::from_secs(20), || {
        (seen.down.load(Ordering::Relaxed) - start_bytes > needed / 3).then_some(())
    });
    basic.kill();
    std::thread::sleep(Duration::from_millis(300));
    basic.restart();
    seen.rate.store(0, Ordering::Relaxed);
    let out = pull.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pull after the restart: {}{}", text, String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Resuming at"), "a blob resumed: {text}");
    let moved = seen.down.load(Ordering::Relaxed) - start_bytes;
    println!("redis amd64: {needed} bytes needed, {moved} bytes through the proxy (headers included)");
    assert!(moved < needed + needed / 5, "resumed, not fetched again: {moved} bytes for {needed}");

    // An update to a pulled image pins the new one.
    m.shoal(&["service", "update", "--detach", "--image", &format!("{registry}/redis:7"), "app2"]);
    let pinned = m.shoal(&["service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", "app2"]);
    assert!(pinned.trim().starts_with(&format!("{registry}/redis:7@sha256:")), "pinned on update: {pinned}");

    // Bearer tokens, as Docker Hub hands them out.
    let issuer = token_issuer(&ns, &dir);
    let bundle = dir.join("token-cert.pem");
    let token = Registry::start(
        &ns,
        &dir,
        "token",
        &format!(
            "  token:\n    realm: http://127.0.0.1:{issuer}/token\n    service: shoal-test\n    issuer: shoal-test-issuer\n    \
             rootcertbundle: {}\n",
            bundle.display()
        ),
    );
    let treg = format!("127.0.0.1:{}", token.port);
    push(&ns, &app, &format!("{treg}/team/app:2.1"));
    fails_with(&["image", "pull", &format!("{treg}/team/app:2.1")], "refused access");
    let wrong = m.run_with_input("shoal", &["login", &treg, "-u", USER, "--password-stdin"], b"nope\n");
    assert!(!wrong.status.success(), "a wrong password is refused by the token issuer");
    let ok = m.run_with_input(
        "shoal",
        &["login", &treg, "-u", USER, "--password-stdin"],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert!(ok.status.success(), "login: {}", String::from_utf8_lossy(&ok.stderr));
    let pulled = m.shoal(&["image", "pull", "--platform", "linux/arm64", &format!("{treg}/team/app:2.1")]);
    assert!(
        pulled.contains("Already exists") && pulled.contains("Pull complete"),
        "amd64 held, arm64 fetched: {pulled}"
    );
    let ls = m.shoal(&["image", "ls"]);
    assert!(
        ls.lines().any(|l| l.contains(&format!("{treg}/team/app")) && l.contains("linux/amd64,linux/arm64")),
        "{ls}"
    );
    // The services use the pinned record: removing the name is a conflict.
    fails_with(&["image", "rm", &app_ref], "must force");
    seen.stop.store(true, Ordering::Relaxed);
    println!("registry checks took {:.1}s", started.elapsed().as_secs_f64());
}
