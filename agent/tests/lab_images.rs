//! The lab's images on the real runtime, end to end on one board (as root): the OCI
//! archives from `images/build.sh` side-loaded into the image store, containers on the
//! node bridge in their own network namespaces, ports published on the host.
//! httpd answers on its published port; redis answers PING.

mod common;
use common::{ask, free_port, lab_images};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use shoal_agent::images::{archive, ImageStore};
use shoal_agent::net::publish::PortPublisher;
use shoal_agent::net::subnet::Subnet;
use shoal_agent::net::{BridgeConfig, Network};
use shoal_agent::runtime::from_image::{container_config, Overrides};
use shoal_agent::runtime::{LibcontainerRuntime, NetworkMode, Runtime};
use shoal_proto::Protocol;

#[test]
#[ignore = "needs root"]
fn httpd_answers_on_its_published_port_and_redis_answers_ping() {
    common::require_root();
    let images = lab_images();
    let dir = std::env::temp_dir().join(format!("shoal-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = std::sync::Arc::new(ImageStore::open(&dir.join("images")).unwrap());
    rt.block_on(async {
        for archive_name in ["demo-app-1.0.tar", "redis.tar"] {
            archive::load(&store, &images.join(archive_name)).await.unwrap();
        }
    });
    let n = std::process::id() % 200;
    let net = Network::new(
        BridgeConfig {
            name: format!("shlab{n}"),
            subnet: Subnet::new(Ipv4Addr::new(10, 79, n as u8, 0), 24).unwrap(),
            netns_dir: dir.join("netns"),
        },
        &dir.join("net"),
    )
    .unwrap();
    let runtime = LibcontainerRuntime::new(
        dir.join("containers"),
        dir.join("state"),
        PathBuf::from(env!("CARGO_BIN_EXE_shoal-agent")),
    );
    let publisher = PortPublisher::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(net.ensure_bridge()).unwrap();
        let mut published = Vec::new();
        let mut answers = Vec::new();
        for (id, image, target, request, until) in [
            ("app-1", "demo/app:1.0", 8000, &b"GET / HTTP/1.0\r\n\r\n"[..], "demo app 1.0"),
            ("db-1", "redis", 6379, &b"PING\r\n"[..], "+PONG"),
        ] {
            let sandbox = rt.block_on(net.create_sandbox(id)).unwrap();
            let config = container_config(
                id,
                &store.config(image).unwrap(),
                store.lowerdirs(image).unwrap(),
                &Overrides { network: Some(NetworkMode::Namespace(sandbox.netns_path.clone())), ..Default::default() },
            )
            .unwrap();
            runtime.create(&config).unwrap();
            runtime.start(id).unwrap();
            let port = free_port();
            published.push(rt.block_on(publisher.publish(port, Protocol::Tcp, sandbox.ip.into(), target)).unwrap());
            answers.push(
                rt.block_on(async { tokio::task::spawn_blocking(move || ask(port, request, until)).await.unwrap() }),
            );
        }
        // A second publish of the same host port fails clearly.
        let taken = published[0].local_addr().port();
        let err = rt.block_on(publisher.publish(taken, Protocol::Tcp, Ipv4Addr::LOCALHOST.into(), 1)).unwrap_err();
        assert!(err.is_port_in_use(), "{err}");
        answers
    }));
    for id in ["app-1", "db-1"] {
        let _ = runtime.stop(id, Duration::from_secs(5));
        let _ = runtime.delete(id);
        let _ = rt.block_on(net.remove_sandbox(id));
    }
    let _ = rt.block_on(net.remove_bridge());
    // The namespace directory is a bind mount of itself (see `net::netns`): left, it
    // stays in the mount table until a reboot.
    let _ = rustix::mount::unmount(dir.join("netns"), rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir_all(&dir);
    let answers = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(answers[0].contains("version 1.0"), "{}", answers[0]);
}
