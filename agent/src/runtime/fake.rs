//! An in-memory runtime for unit tests of the agent's pure core: it records what it was
//! asked and lets a test decide how containers end. Never used outside tests of logic;
//! the end-to-end tests run real containers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{validate_id, ContainerConfig, ContainerStatus, Runtime, RuntimeError};

/// A fake runtime.
#[derive(Default)]
pub struct FakeRuntime {
    containers: Mutex<BTreeMap<String, ContainerStatus>>,
    /// Every call, in order, as text (`create web.1`, `stop web.1`, ...).
    pub calls: Mutex<Vec<String>>,
}

impl FakeRuntime {
    /// Makes a running container exit with `code`, as if its process ended.
    pub fn exit(&self, id: &str, code: i32) {
        if let Some(s) = self.containers.lock().expect("fake").get_mut(id) {
            *s = ContainerStatus::Exited { code, at_ms: 0 };
        }
    }

    fn record(&self, call: String) {
        self.calls.lock().expect("fake").push(call);
    }
}

impl Runtime for FakeRuntime {
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        validate_id(&config.id)?;
        self.record(format!("create {}", config.id));
        let mut c = self.containers.lock().expect("fake");
        if c.contains_key(&config.id) {
            return Err(RuntimeError::Exists(config.id.clone()));
        }
        c.insert(config.id.clone(), ContainerStatus::Created);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        self.record(format!("start {id}"));
        let mut c = self.containers.lock().expect("fake");
        let s = c.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        *s = ContainerStatus::Running { pid: 4242 };
        Ok(4242)
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<i32, RuntimeError> {
        self.record(format!("stop {id}"));
        let mut c = self.containers.lock().expect("fake");
        let s = c.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.to_owned()))?;
        if let ContainerStatus::Exited { code, .. } = s {
            return Ok(*code);
        }
        *s = ContainerStatus::Exited { code: 143, at_ms: 0 };
        Ok(143)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(format!("delete {id}"));
        self.containers
            .lock()
            .expect("fake")
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.containers.lock().expect("fake").get(id).copied().ok_or_else(|| RuntimeError::NotFound(id.to_owned()))
    }

    fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.containers.lock().expect("fake").keys().cloned().collect())
    }
}
