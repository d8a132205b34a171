//! Whether this board's kernel has what the agent's networking needs (VXLAN for overlay
//! networks, nf_tables for NAT and VIPs, XFRM with ESP and AES-GCM for encrypted
//! overlays), so a board without them says so at start
//! (`node inspect`, the agent's log) instead of failing later without a word.
//!
//! Read only: `/sys/module/<name>` (loaded modules, and built-in ones with parameters)
//! and the kernel's module lists (`/lib/modules/<release>/modules.builtin` and
//! `modules.dep`, where a module the kernel can load on first use is listed). Nothing is
//! probed by creating devices or tables. [`missing`] is the decision, pure: a feature is
//! reported missing only when the module lists could be read and name it nowhere, so a
//! board without those lists (a kernel without modules installed) is not accused
//! wrongly; there the first use still fails with an error naming the option.

use std::collections::BTreeSet;

/// A kernel feature the agent needs, and what goes without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// The module's name (`vxlan`).
    pub module: &'static str,
    /// The kernel option that provides it.
    pub config: &'static str,
    /// What does not work without it.
    pub needed_for: &'static str,
}

/// What the agent checks for.
pub const FEATURES: [Feature; 5] = [
    Feature { module: "vxlan", config: "CONFIG_VXLAN", needed_for: "no overlay networks" },
    Feature {
        module: "nf_tables",
        config: "CONFIG_NF_TABLES",
        needed_for: "no outbound NAT for containers and no service VIPs",
    },
    // Encrypted overlays (`--opt encrypted`): IPsec SAs and policies are set over the
    // xfrm netlink family, carry ESP, and use rfc4106(gcm(aes)).
    Feature { module: "xfrm_user", config: "CONFIG_XFRM_USER", needed_for: "no encrypted overlay networks" },
    Feature { module: "esp4", config: "CONFIG_INET_ESP", needed_for: "no encrypted overlay networks" },
    Feature { module: "gcm", config: "CONFIG_CRYPTO_GCM", needed_for: "no encrypted overlay networks" },
];

/// What the board's files say about its modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The names under `/sys/module`.
    pub loaded: BTreeSet<String>,
    /// `modules.builtin` and `modules.dep`, concatenated; `None` when neither could be
    /// read.
    pub module_lists: Option<String>,
}

impl Facts {
    /// Reads the running kernel's facts. Never fails: what can't be read is unknown.
    pub fn read() -> Self {
        let loaded = std::fs::read_dir("/sys/module")
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let dir = std::path::Path::new("/lib/modules").join(release.trim());
        let lists: Vec<String> = ["modules.builtin", "modules.dep"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
            .collect();
        Self { loaded, module_lists: (!release.trim().is_empty() && !lists.is_empty()).then(|| lists.concat()) }
    }

    /// Whether `module` is loaded, built in or loadable; `None`: can't tell.
    fn has(&self, module: &str) -> Option<bool> {
        if self.loaded.contains(module) {
            return Some(true);
        }
        let lists = self.module_lists.as_deref()?;
        // Lines such as `kernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko`
        // or `kernel/net/netfilter/nf_tables.ko`: the file name before any colon.
        Some(lists.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            file.split(".ko").next() == Some(module) && file.contains(".ko")
        }))
    }
}

/// The features `facts` show missing, each as `<module>: <what goes> (<option>)`.
pub fn missing(facts: &Facts) -> Vec<String> {
    FEATURES
        .iter()
        .filter(|f| facts.has(f.module) == Some(false))
        .map(|f| format!("{}: {} ({})", f.module, f.needed_for, f.config))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(loaded: &[&str], lists: Option<&str>) -> Facts {
        Facts { loaded: loaded.iter().map(|s| s.to_string()).collect(), module_lists: lists.map(str::to_owned) }
    }

    #[test]
    fn a_feature_is_missing_only_when_the_lists_say_so() {
        let both =
            "kernel/net/netfilter/nf_tables.ko\nkernel/drivers/net/vxlan/vxlan.ko.zst: kernel/net/ipv4/udp_tunnel.ko\n\
                    kernel/net/xfrm/xfrm_user.ko\nkernel/net/ipv4/esp4.ko.xz: kernel/net/xfrm/xfrm_algo.ko\n\
                    kernel/crypto/gcm.ko\n";
        assert!(missing(&facts(&[], Some(both))).is_empty());
        assert!(missing(&facts(&["vxlan", "nf_tables"], None)).is_empty(), "loaded modules count");
        // No lists and nothing loaded: unknown, so nothing is claimed.
        assert!(missing(&facts(&[], None)).is_empty());
        let no_vxlan = "kernel/net/netfilter/nf_tables.ko\nkernel/drivers/net/vxlan_other.ko\n\
                        kernel/net/xfrm/xfrm_user.ko\nkernel/net/ipv4/esp4.ko\nkernel/crypto/gcm.ko\n";
        assert_eq!(missing(&facts(&[], Some(no_vxlan))), ["vxlan: no overlay networks (CONFIG_VXLAN)"]);
        let neither = "kernel/net/netfilter/nf_tables_set.ko: \nkernel/fs/ext4/ext4.ko\n\
                       kernel/net/xfrm/xfrm_user.ko\nkernel/net/ipv4/esp4.ko\nkernel/crypto/gcm.ko\n";
        let m = missing(&facts(&[], Some(neither)));
        assert_eq!(m.len(), 2);
        assert!(m[1].starts_with("nf_tables: ") && m[1].ends_with("(CONFIG_NF_TABLES)"), "{m:?}");
        // Loaded wins over absent from the lists (a module built out of tree).
        assert_eq!(missing(&facts(&["vxlan"], Some(neither))).len(), 1);
        // A kernel with XFRM but neither ESP nor GCM (this CI machine's): both named.
        let no_esp = "kernel/net/netfilter/nf_tables.ko\nkernel/drivers/net/vxlan.ko\nkernel/net/xfrm/xfrm_user.ko\n";
        assert_eq!(
            missing(&facts(&[], Some(no_esp))),
            [
                "esp4: no encrypted overlay networks (CONFIG_INET_ESP)",
                "gcm: no encrypted overlay networks (CONFIG_CRYPTO_GCM)"
            ]
        );
    }

    #[test]
    fn every_message_fits_the_wire_bound() {
        let m = missing(&facts(&[], Some("")));
        assert_eq!(m.len(), FEATURES.len());
        assert!(FEATURES.len() <= shoal_proto::MAX_MISSING_FEATURES, "all fit in a node description");
        assert!(m.iter().all(|s| s.len() <= 128), "{m:?}");
    }
}
