//! The manager's persistent state in one redb file: cluster secrets, node records and
//! image records (the image blobs themselves live beside it, in `images::blobs`).
//! Values are postcard; every change is one transaction, so a crash leaves either the
//! old state or the new one.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use shoal_proto::NodeId;

use crate::core::nodes::NodeRecord;
use crate::images::ImageRecord;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Image records by reference.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
const CLUSTER_KEY: &str = "cluster";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or written.
    #[error("state store: {0}")]
    Db(String),
    /// A record did not decode.
    #[error("state store holds a record this version cannot read: {0}")]
    Corrupt(#[from] postcard::Error),
    /// The store has no cluster in it.
    #[error("the state store has no cluster: run `shoal manager init` first")]
    Empty,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { Self::Db(e.to_string()) } })*};
}
db_err!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Cluster-wide secrets and settings, written at init.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Cluster ID.
    pub cluster_id: String,
    /// CA certificate (DER) and key (PEM).
    pub ca_cert: Vec<u8>,
    /// CA private key, PEM.
    pub ca_key_pem: String,
    /// Manager server certificate (DER).
    pub server_cert: Vec<u8>,
    /// Manager server key, PEM.
    pub server_key_pem: String,
    /// Current worker join secret.
    pub worker_secret: String,
    /// `IP:PORT` agents join.
    pub advertise_addr: String,
    /// Address the manager listens on.
    pub listen_addr: String,
    /// The manager's own node ID.
    pub manager_node: NodeId,
}

/// The open store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Creates a new store holding `cluster` and the manager's own node record.
    pub fn create(path: &Path, cluster: &ClusterRecord, manager_node: &NodeRecord) -> Result<Self, StoreError> {
        let store = Self { db: Database::create(path)? };
        store.put_cluster(cluster)?;
        store.put_node(manager_node)?;
        Ok(store)
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self { db: Database::open(path)? })
    }

    /// The cluster record.
    pub fn cluster(&self) -> Result<ClusterRecord, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(META).map_err(|_| StoreError::Empty)?;
        let value = table.get(CLUSTER_KEY)?.ok_or(StoreError::Empty)?;
        Ok(postcard::from_bytes(value.value())?)
    }

    /// Replaces the cluster record.
    pub fn put_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(CLUSTER_KEY, postcard::to_allocvec(cluster)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Every node record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(NODES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            out.push(postcard::from_bytes(value.value())?);
        }
        Ok(out)
    }

    /// One node record.
    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(NODES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value = table.get(id.as_str())?;
        Ok(value.map(|v| postcard::from_bytes(v.value())).transpose()?)
    }

    /// Inserts or replaces a node record.
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(NODES)?.insert(node.id.as_str(), postcard::to_allocvec(node)?.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes a node record; its certificate is refused from then on.
    pub fn remove_node(&self, id: &NodeId) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(NODES)?.remove(id.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Every image record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(IMAGES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            out.push(postcard::from_bytes(value.value())?);
        }
        Ok(out)
    }

    /// Writes `put` (replacing records of the same reference) and deletes `remove`, in
    /// one transaction: a load or a removal is all or nothing.
    pub fn update_images(&self, put: &[ImageRecord], remove: &[&str]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(IMAGES)?;
            for reference in remove {
                table.remove(*reference)?;
            }
            for image in put {
                table.insert(image.reference.as_str(), postcard::to_allocvec(image)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_records_survive_reopening_the_store() {
        let path = std::env::temp_dir().join(format!("shoal-store-{}.redb", crate::images::hex(&crate::random::<6>())));
        let image = |r: &str| ImageRecord {
            reference: r.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/arm64".into()],
            size: 42,
            blobs: vec![format!("sha256:{}", "a".repeat(64))],
            loaded_at_ms: 1,
        };
        {
            let store = Store { db: Database::create(&path).unwrap() };
            assert!(store.images().unwrap().is_empty());
            store.update_images(&[image("a:1"), image("b:1")], &[]).unwrap();
            store.update_images(&[], &["a:1"]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.images().unwrap(), vec![image("b:1")]);
        let _ = std::fs::remove_file(&path);
    }
}
