//! OCI JSON as the agent reads it from a blob (the manager's or an archive's): the
//! top-level index or manifest, a manifest, a config; then what the fetcher does with
//! them (pick this board's platform, check the config, read layer media types).
#![cfg_attr(feature = "libfuzzer", no_main)]

use shoal_fuzz::fuzz_target;
use shoal_oci::digest;
use shoal_oci::spec::{HostPlatform, ImageConfig, ImageManifest, LayerMediaType, TopLevel};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, json)) = data.split_first() else { return };
    let hosts = ["x86_64", "aarch64", "arm"].map(HostPlatform::for_rust_arch);
    match kind % 3 {
        0 => match TopLevel::parse(json) {
            Ok(TopLevel::Index(index)) => {
                for host in &hosts {
                    if let Ok(chosen) = host.choose(&index) {
                        let _ = digest::hex(&chosen.digest);
                    }
                }
            }
            Ok(TopLevel::Manifest(m)) => manifest(&m),
            Err(e) => drop(e.to_string()),
        },
        1 => {
            if let Ok(m) = ImageManifest::parse(json) {
                manifest(&m);
            }
        }
        _ => {
            if let Ok(config) = ImageConfig::parse(json) {
                for host in &hosts {
                    let _ = host.check(&config).map_err(|e| e.to_string());
                }
                let _ = config.platform().to_string();
                for id in &config.rootfs.diff_ids {
                    let _ = digest::hex(id);
                }
            }
        }
    }
});

fn manifest(m: &ImageManifest) {
    let _ = digest::hex(&m.config.digest);
    for layer in &m.layers {
        let _ = (LayerMediaType::parse(&layer.media_type), digest::hex(&layer.digest));
    }
}
