//! A fake [`Sandboxes`] for unit tests of code that drives the network (the
//! supervisor): it hands out addresses from the same allocator as the real one and
//! records what it was asked, touching no kernel state and no file. It is never a
//! substitute for `tests/net.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::ipam::Allocations;
use super::{check_id, BridgeConfig, NetError, Sandbox, Sandboxes};

/// What the fake was asked, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ensure_bridge`.
    EnsureBridge,
    /// `create_sandbox(id)`.
    Create(String),
    /// `remove_sandbox(id)`.
    Remove(String),
    /// `join_overlays(id, networks)`.
    Join(String, Vec<String>),
}

/// Records calls and keeps sandboxes in memory.
#[derive(Debug)]
pub struct FakeNetwork {
    config: BridgeConfig,
    state: Mutex<(Allocations, BTreeMap<String, Sandbox>, Vec<Call>)>,
}

impl FakeNetwork {
    /// A fake for `config` with nothing allocated.
    pub fn new(config: BridgeConfig) -> Self {
        let alloc = Allocations::new(config.subnet);
        Self { config, state: Mutex::new((alloc, BTreeMap::new(), Vec::new())) }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().2.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Allocations, BTreeMap<String, Sandbox>, Vec<Call>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Sandboxes for FakeNetwork {
    async fn ensure_bridge(&self) -> Result<(), NetError> {
        self.lock().2.push(Call::EnsureBridge);
        Ok(())
    }

    async fn create_sandbox(&self, container_id: &str) -> Result<Sandbox, NetError> {
        let mut st = self.lock();
        st.2.push(Call::Create(container_id.to_string()));
        check_id(container_id)?;
        if st.1.contains_key(container_id) {
            return Err(NetError::SandboxExists(container_id.to_string()));
        }
        let ip = st.0.allocate(container_id)?;
        let s = super::describe(&self.config, container_id, ip);
        st.1.insert(container_id.to_string(), s.clone());
        Ok(s)
    }

    async fn remove_sandbox(&self, container_id: &str) -> Result<(), NetError> {
        let mut st = self.lock();
        st.2.push(Call::Remove(container_id.to_string()));
        check_id(container_id)?;
        st.0.release(container_id);
        st.1.remove(container_id);
        Ok(())
    }

    fn sandbox(&self, container_id: &str) -> Option<Sandbox> {
        self.lock().1.get(container_id).cloned()
    }

    fn sandbox_ids(&self) -> Vec<String> {
        self.lock().1.keys().cloned().collect()
    }

    async fn join_overlays(
        &self,
        sandbox: &Sandbox,
        attachments: &[super::plane::NetworkAttachment],
    ) -> Result<(), (String, NetError)> {
        let networks = attachments.iter().map(|a| a.network.clone()).collect();
        self.lock().2.push(Call::Join(sandbox.container_id.clone(), networks));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_allocates() {
        let fake = FakeNetwork::new(BridgeConfig::default());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            fake.ensure_bridge().await.unwrap();
            let a = fake.create_sandbox("a").await.unwrap();
            let b = fake.create_sandbox("b").await.unwrap();
            assert_ne!(a.ip, b.ip);
            assert!(fake.create_sandbox("a").await.is_err());
            fake.remove_sandbox("a").await.unwrap();
            fake.remove_sandbox("a").await.unwrap();
            assert!(fake.sandbox("a").is_none());
            assert_eq!(fake.sandbox("b"), Some(b));
        });
        assert_eq!(fake.calls()[0], Call::EnsureBridge);
        assert_eq!(fake.calls().len(), 6);
    }
}
