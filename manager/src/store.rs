//! The manager's persistent state in one redb file: cluster secrets, node records,
//! image records (the image blobs themselves live beside it, in `images::blobs`),
//! services (with the spec before the last change, for `--rollback`) and tasks.
//! Values are postcard; every change is one transaction, so a crash leaves either the
//! old state or the new one.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use shoal_proto::{NodeId, ServiceId, Task, TaskId};

use crate::core::nodes::NodeRecord;
use crate::core::rotation::{NodeCert, PkiRecord};
use crate::core::services::ServiceRecord;
use crate::images::ImageRecord;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Image records by reference.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Service records by service ID.
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Tasks by task ID.
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
/// Overlay networks by network ID (ingress included).
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
/// Secrets (sealed) and configs, by `kind/name` (`crate::secrets::ObjectRecord`).
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const CLUSTER_KEY: &str = "cluster";
/// Certificate settings and the CA rotation in progress ([`PkiRecord`]); absent in stores
/// made before them, which means the defaults.
const PKI_KEY: &str = "pki";
/// The certificate each node holds, by node ID ([`NodeCert`]).
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
/// Which layout of records the store holds; bumped when a stored type changes shape.
const FORMAT_KEY: &str = "format";
/// 2: tasks know the desired state Ready; services carry their update progress.
/// 3: service and task specs carry their seccomp mode.
/// 4: networks (a table), tasks' addresses, services' virtual IPs, stop signals.
/// 5: nodes' ingress addresses and missing kernel features, specs' hostnames.
/// 6: specs' container options, secrets, configs, labels and health checks; tasks'
///    health; nodes' devices; secrets and configs (a table); certificates (a table and
///    the `pki` record).
const FORMAT: u32 = 6;

/// One atomic change to services and tasks: what a control request or a reconciliation
/// writes.
#[derive(Debug, Default)]
pub struct ServiceChanges<'a> {
    /// Service records to insert or replace.
    pub put_services: Vec<&'a ServiceRecord>,
    /// Services to delete.
    pub remove_services: Vec<&'a ServiceId>,
    /// Tasks to insert or replace.
    pub put_tasks: Vec<&'a Task>,
    /// Tasks to delete.
    pub remove_tasks: Vec<&'a TaskId>,
}

impl ServiceChanges<'_> {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.put_services.is_empty()
            && self.remove_services.is_empty()
            && self.put_tasks.is_empty()
            && self.remove_tasks.is_empty()
    }
}

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
    /// The disk under the store is full: nothing was written.
    #[error(
        "the manager's disk is full: free space under {} (nothing was changed; the manager recovers by itself \
         once there is space)",
        .0.display()
    )]
    DiskFull(std::path::PathBuf),
    /// Reading or writing the file failed; the store is reopened before the next use.
    #[error("state store I/O error: {0}")]
    Io(String),
    /// The file is not a readable store: empty, another kind of file, truncated or
    /// overwritten in places.
    #[error(
        "the state store {path} is damaged ({detail}): stop the manager and restore a backup with \
         `shoal manager restore FILE` (made by `shoal manager backup FILE`), or move the data directory \
         away and start a new cluster with `shoal manager init`"
    )]
    Damaged {
        /// The store file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// What a check in another process said (already a whole message).
    #[error("{0}")]
    Checked(String),
    /// Another process (a running manager) holds the store.
    #[error("the state store {0} is in use: is `shoal manager run` running? stop it first")]
    Locked(std::path::PathBuf),
    /// Written by a shoal whose records this one reads differently.
    #[error(
        "the state store was written by another version of shoal (format {found}, this one reads {FORMAT}): \
         keep that version, or start a new cluster with `shoal manager init` in a new data directory"
    )]
    Format {
        /// The store's format.
        found: u32,
    },
}

/// Sorts redb's storage failures: a full disk and other I/O errors (after which redb
/// refuses every request until the file is reopened) apart from the rest.
fn storage(e: redb::StorageError) -> StoreError {
    match e {
        redb::StorageError::Io(io) if is_no_space(&io) => StoreError::DiskFull(std::path::PathBuf::new()),
        redb::StorageError::Io(io) => StoreError::Io(io.to_string()),
        redb::StorageError::PreviousIo => StoreError::Io("an earlier write failed".into()),
        other => StoreError::Db(other.to_string()),
    }
}

/// ENOSPC (or a quota), however the platform reports it.
fn is_no_space(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        storage(e)
    }
}

/// redb's error types that can carry a storage failure: that part is sorted by
/// [`storage`], the rest is a plain database error.
macro_rules! from_redb {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(e: redb::$t) -> Self {
                match e {
                    redb::$t::Storage(s) => storage(s),
                    other => Self::Db(other.to_string()),
                }
            }
        }
    )*};
}
from_redb!(TransactionError, CommitError, TableError, DatabaseError);

impl StoreError {
    /// Whether redb needs the file reopened before it serves again.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, Self::DiskFull(_) | Self::Io(_))
    }

    /// Whether the disk under the store is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::DiskFull(_))
    }
}

/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// What is wrong with the file's first bytes, before redb is let near it.
/// redb's page cache. Its default (1 GiB) lets it grow with the store; the manager
/// keeps what it reads often in memory of its own, so a small cache costs nothing and
/// keeps the manager's memory bounded as fleets and task counts grow.
const CACHE_BYTES: usize = 16 << 20;

fn builder() -> redb::Builder {
    let mut b = redb::Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

fn check_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut head = [0u8; REDB_MAGIC.len()];
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Err("the file is empty".into());
    }
    match file.read_exact(&mut head) {
        Ok(()) if head == REDB_MAGIC => Ok(()),
        Ok(()) => Err("it is not a redb database".into()),
        Err(_) => Err(format!("the file is only {len} bytes long")),
    }
}

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

/// The open store. After an I/O error (a full disk) redb refuses every request until
/// the file is reopened, so the store reopens it itself before its next use.
pub struct Store {
    db: std::sync::RwLock<Option<std::sync::Arc<Database>>>,
    path: std::path::PathBuf,
    /// Set by an I/O error: reopen before the next use.
    broken: std::sync::atomic::AtomicBool,
    /// The node records as last read: every reconcile pass reads them all, and decoding
    /// 5,000 records each pass cost more than the pass. Dropped by every node write.
    nodes: std::sync::Mutex<NodesCache>,
}

/// [`Store::nodes_shared`]'s records, and the count of node writes when they were read:
/// a read that a write overtook is returned but not kept.
#[derive(Default)]
struct NodesCache {
    writes: u64,
    records: Option<std::sync::Arc<[NodeRecord]>>,
}

impl Store {
    fn from_db(db: Database, path: &Path) -> Self {
        Self {
            db: std::sync::RwLock::new(Some(std::sync::Arc::new(db))),
            path: path.to_owned(),
            broken: std::sync::atomic::AtomicBool::new(false),
            nodes: Default::default(),
        }
    }

    /// Drops the kept node records: called after every write to the nodes table (and
    /// after a failed one, which costs a read and never keeps a stale copy).
    fn nodes_changed(&self) {
        let mut cache = self.nodes.lock().expect("nodes cache lock");
        cache.writes += 1;
        cache.records = None;
    }

    /// Runs a write to the nodes table, then drops the kept node records.
    fn node_write<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let out = self.note(f);
        self.nodes_changed();
        out
    }

    /// The database, reopened first if an I/O error broke it.
    fn db(&self) -> Result<std::sync::Arc<Database>, StoreError> {
        use std::sync::atomic::Ordering;
        if self.broken.load(Ordering::Acquire) {
            let mut slot = self.db.write().expect("store lock");
            if self.broken.load(Ordering::Acquire) {
                // The old handle must be closed (its file lock released) before the open.
                drop(slot.take());
                *slot = Some(std::sync::Arc::new(builder().open(&self.path).map_err(|e| self.noted(e.into()))?));
                self.broken.store(false, Ordering::Release);
                tracing::info!(path = %self.path.display(), "state store reopened after an I/O error");
            }
        }
        let db = self.db.read().expect("store lock").clone();
        db.ok_or_else(|| StoreError::Io("the state store is being reopened".into()))
    }

    /// Marks the store for reopening after an I/O error, and says where the full disk is.
    fn noted(&self, e: StoreError) -> StoreError {
        if e.needs_reopen() {
            self.broken.store(true, std::sync::atomic::Ordering::Release);
        }
        match e {
            StoreError::DiskFull(_) => StoreError::DiskFull(self.path.parent().unwrap_or(&self.path).to_owned()),
            e => e,
        }
    }

    /// Runs `f` and notes an I/O error it met.
    fn note<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        f().map_err(|e| self.noted(e))
    }

    /// Creates a new store holding `cluster` and the manager's own node record.
    ///
    /// One transaction: a crash leaves either no cluster or the whole of it, never a
    /// format key without a cluster record (which `run` would call empty).
    pub fn create(path: &Path, cluster: &ClusterRecord, manager_node: &NodeRecord) -> Result<Self, StoreError> {
        let write = || -> Result<Self, StoreError> {
            let store = Self::from_db(builder().create(path)?, path);
            let tx = store.db()?.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                meta.insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())?;
                meta.insert(CLUSTER_KEY, postcard::to_allocvec(cluster)?.as_slice())?;
                tx.open_table(NODES)?
                    .insert(manager_node.id.as_str(), postcard::to_allocvec(manager_node)?.as_slice())?;
            }
            tx.commit()?;
            Ok(store)
        };
        // A full disk names the directory to free (the store is new: nothing to recover).
        write().map_err(|e| match e {
            StoreError::DiskFull(_) => StoreError::DiskFull(path.parent().unwrap_or(path).to_owned()),
            e => e,
        })
    }

    /// Opens an existing store, if this version can read it. Records are postcard, which
    /// does not describe itself: reading another layout would give wrong values, not errors.
    ///
    /// A damaged file is an error that says how to restore, never a panic where unwinding
    /// is on: the header is checked first, then redb opens the file and checks every
    /// page's checksum (repairing what a crash left), then every record is decoded. redb
    /// asserts on some broken structures; under `panic = "abort"` (release builds) only
    /// a separate process can survive that, which is why `manager run` and
    /// `manager restore` check the file in a child first (see `cli::manager`).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let damaged = |detail: &str| StoreError::Damaged { path: path.to_owned(), detail: detail.to_owned() };
        // A file that can't be opened or read (permissions, a read-only or full disk) is
        // not a damaged one: say so, and never advise starting a new cluster for it.
        let io = |e: std::io::Error| match is_no_space(&e) {
            true => StoreError::DiskFull(path.parent().unwrap_or(path).to_owned()),
            false => StoreError::Io(format!("{}: {e}", path.display())),
        };
        std::fs::File::open(path).map_err(io)?;
        check_header(path).map_err(|detail| damaged(&detail))?;
        let opened = std::panic::catch_unwind(|| builder().open(path));
        let mut db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(StoreError::Locked(path.to_owned())),
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => return Err(io(e)),
            Ok(Err(e)) => return Err(damaged(&e.to_string())),
            Err(_) => return Err(damaged("redb cannot read its structure")),
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity())) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(path = %path.display(), "the state store was repaired after a crash"),
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))) => return Err(io(e)),
            Ok(Err(e)) => return Err(damaged(&e.to_string())),
            Err(_) => return Err(damaged("redb found its pages inconsistent")),
        }
        let store = Self::checked_format(Self::from_db(db, path))?;
        let read_all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), StoreError> {
            store.nodes()?;
            store.images()?;
            store.services()?;
            store.tasks()?;
            store.objects()?;
            Ok(())
        }));
        match read_all {
            Ok(Ok(())) => Ok(store),
            Ok(Err(StoreError::Db(e))) => Err(damaged(&e)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(damaged("a record cannot be read")),
        }
    }

    fn checked_format(store: Self) -> Result<Self, StoreError> {
        let found = {
            let tx = store.db()?.begin_read()?;
            match tx.open_table(META) {
                Ok(meta) => {
                    let format = meta.get(FORMAT_KEY)?.map(|v| v.value().try_into().map(u32::from_le_bytes));
                    match format {
                        Some(Ok(f)) => Some(f),
                        Some(Err(_)) => Some(0),
                        // Stores from before the format key held a cluster record.
                        None if meta.get(CLUSTER_KEY)?.is_some() => Some(1),
                        None => None,
                    }
                }
                Err(_) => None,
            }
        };
        match found {
            Some(found) if found != FORMAT => Err(StoreError::Format { found }),
            _ => Ok(store),
        }
    }

    /// Writes a consistent copy of the whole store to a new file at `dest`, from one
    /// read transaction: writes made meanwhile are either all in it or not at all.
    pub fn snapshot(&self, dest: &Path) -> Result<(), StoreError> {
        self.note(|| {
            let rtx = self.db()?.begin_read()?;
            let out = builder().create(dest)?;
            let wtx = out.begin_write()?;
            for def in [META, NODES, IMAGES, SERVICES, TASKS] {
                let table = match rtx.open_table(def) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut copy = wtx.open_table(def)?;
                for row in table.iter()? {
                    let (k, v) = row?;
                    copy.insert(k.value(), v.value())?;
                }
            }
            wtx.commit()?;
            Ok(())
        })
    }

    /// The cluster record.
    pub fn cluster(&self) -> Result<ClusterRecord, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = tx.open_table(META).map_err(|_| StoreError::Empty)?;
            let value = table.get(CLUSTER_KEY)?.ok_or(StoreError::Empty)?;
            Ok(postcard::from_bytes(value.value())?)
        })
    }

    /// Replaces the cluster record.
    pub fn put_cluster(&self, cluster: &ClusterRecord) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(META)?.insert(CLUSTER_KEY, postcard::to_allocvec(cluster)?.as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every node record.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.nodes_shared()?.to_vec())
    }

    /// Every node record, shared: read from the file only after a node write.
    pub fn nodes_shared(&self) -> Result<std::sync::Arc<[NodeRecord]>, StoreError> {
        let writes = {
            let cache = self.nodes.lock().expect("nodes cache lock");
            if let Some(records) = &cache.records {
                return Ok(records.clone());
            }
            cache.writes
        };
        let records: std::sync::Arc<[NodeRecord]> = self.all(NODES)?.into();
        let mut cache = self.nodes.lock().expect("nodes cache lock");
        if cache.writes == writes {
            cache.records = Some(records.clone());
        }
        Ok(records)
    }

    /// One node record.
    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = match tx.open_table(NODES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let value = table.get(id.as_str())?;
            Ok(value.map(|v| postcard::from_bytes(v.value())).transpose()?)
        })
    }

    /// Inserts or replaces a node record.
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        self.node_write(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(NODES)?.insert(node.id.as_str(), postcard::to_allocvec(node)?.as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Changes one node record in place, in one write transaction: read, `change`, write.
    /// Writers that each change their own fields (the operator's availability and labels,
    /// the session's description, the mesh's ingress address) never undo one another,
    /// and a node removed meanwhile is not written back. `None`: there is no such node.
    pub fn update_node(
        &self,
        id: &NodeId,
        change: impl FnOnce(&mut NodeRecord),
    ) -> Result<Option<NodeRecord>, StoreError> {
        self.node_write(|| {
            let tx = self.db()?.begin_write()?;
            let updated = {
                let mut table = tx.open_table(NODES)?;
                let record: Option<NodeRecord> =
                    table.get(id.as_str())?.map(|v| postcard::from_bytes(v.value())).transpose()?;
                match record {
                    Some(mut record) => {
                        change(&mut record);
                        table.insert(id.as_str(), postcard::to_allocvec(&record)?.as_slice())?;
                        Some(record)
                    }
                    None => None,
                }
            };
            tx.commit()?;
            Ok(updated)
        })
    }

    /// Deletes a node record (and what it knew of its certificate); its certificates,
    /// old and renewed alike, are refused from then on.
    pub fn remove_node(&self, id: &NodeId) -> Result<(), StoreError> {
        self.node_write(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(NODES)?.remove(id.as_str())?;
            tx.open_table(CERTS)?.remove(id.as_str())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Certificate settings and the CA rotation in progress (the defaults when never set).
    pub fn pki(&self) -> Result<PkiRecord, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = tx.open_table(META).map_err(|_| StoreError::Empty)?;
            let value = table.get(PKI_KEY)?;
            Ok(value.map(|v| postcard::from_bytes(v.value())).transpose()?.unwrap_or_default())
        })
    }

    /// Replaces the certificate settings and, in the same transaction, the cluster record
    /// when given (retiring a CA changes both at once).
    pub fn put_pki(&self, pki: &PkiRecord, cluster: Option<&ClusterRecord>) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                meta.insert(PKI_KEY, postcard::to_allocvec(pki)?.as_slice())?;
                if let Some(c) = cluster {
                    meta.insert(CLUSTER_KEY, postcard::to_allocvec(c)?.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// What each node's certificate is, by node ID.
    pub fn node_certs(&self) -> Result<std::collections::HashMap<NodeId, NodeCert>, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = match tx.open_table(CERTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
                Err(e) => return Err(e.into()),
            };
            let mut out = std::collections::HashMap::new();
            for row in table.iter()? {
                let (key, value) = row?;
                // A key that is not a node ID is skipped, not fatal: the record is advisory.
                if let Ok(id) = key.value().parse::<NodeId>() {
                    out.insert(id, postcard::from_bytes(value.value())?);
                }
            }
            Ok(out)
        })
    }

    /// What node `id`'s certificate is, if known.
    pub fn node_cert(&self, id: &NodeId) -> Result<Option<NodeCert>, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = match tx.open_table(CERTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let value = table.get(id.as_str())?;
            Ok(value.map(|v| postcard::from_bytes(v.value())).transpose()?)
        })
    }

    /// A node that just joined and the certificate it was given, in one transaction: a
    /// join costs the disk one commit (a fleet of boards joining at once waits on them).
    pub fn put_joined(&self, node: &NodeRecord, cert: Option<&NodeCert>) -> Result<(), StoreError> {
        self.node_write(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(NODES)?.insert(node.id.as_str(), postcard::to_allocvec(node)?.as_slice())?;
            if let Some(cert) = cert {
                tx.open_table(CERTS)?.insert(node.id.as_str(), postcard::to_allocvec(cert)?.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records the certificate node `id` holds, unless the node was removed meanwhile.
    pub fn put_node_cert(&self, id: &NodeId, cert: &NodeCert) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            if tx.open_table(NODES)?.get(id.as_str())?.is_some() {
                tx.open_table(CERTS)?.insert(id.as_str(), postcard::to_allocvec(cert)?.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Every image record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.all(IMAGES)
    }

    /// Every service record, in ID order.
    pub fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        self.all(SERVICES)
    }

    /// Every task, in ID order.
    pub fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.all(TASKS)
    }

    /// Every overlay network, in ID order.
    pub fn networks(&self) -> Result<Vec<shoal_proto::networks::Network>, StoreError> {
        self.all(NETWORKS)
    }

    /// Writes a network record.
    pub fn put_network(&self, network: &shoal_proto::networks::Network) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(NETWORKS)?.insert(network.id.as_str(), postcard::to_allocvec(network)?.as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Deletes a network record.
    pub fn remove_network(&self, id: &shoal_proto::networks::NetworkId) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            tx.open_table(NETWORKS)?.remove(id.as_str())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Every secret and config record, by kind and name.
    pub fn objects(&self) -> Result<Vec<crate::secrets::ObjectRecord>, StoreError> {
        self.all(OBJECTS)
    }

    /// Writes or deletes one secret or config together with the services it changes
    /// (a rotation rolls them): all or nothing.
    pub fn change_object(
        &self,
        put: Option<&crate::secrets::ObjectRecord>,
        remove: Option<&str>,
        services: &[&ServiceRecord],
    ) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
            {
                let mut objects = tx.open_table(OBJECTS)?;
                if let Some(key) = remove {
                    objects.remove(key)?;
                }
                if let Some(o) = put {
                    objects.insert(o.key().as_str(), postcard::to_allocvec(o)?.as_slice())?;
                }
                let mut table = tx.open_table(SERVICES)?;
                for s in services {
                    table.insert(s.service.id.as_str(), postcard::to_allocvec(s)?.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Writes services and tasks in one transaction: a reconciliation is all or nothing.
    pub fn change_services(&self, changes: &ServiceChanges) -> Result<(), StoreError> {
        self.note(|| {
            if changes.is_empty() {
                return Ok(());
            }
            let tx = self.db()?.begin_write()?;
            {
                let mut services = tx.open_table(SERVICES)?;
                for id in &changes.remove_services {
                    services.remove(id.as_str())?;
                }
                for s in &changes.put_services {
                    services.insert(s.service.id.as_str(), postcard::to_allocvec(s)?.as_slice())?;
                }
                let mut tasks = tx.open_table(TASKS)?;
                for id in &changes.remove_tasks {
                    tasks.remove(id.as_str())?;
                }
                for t in &changes.put_tasks {
                    tasks.insert(t.id.as_str(), postcard::to_allocvec(t)?.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Every value of a table, decoded, in key order; none when the table was never written.
    fn all<T: serde::de::DeserializeOwned>(&self, def: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_read()?;
            let table = match tx.open_table(def) {
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
        })
    }

    /// Writes `put` (replacing records of the same reference) and deletes `remove`, in
    /// one transaction: a load or a removal is all or nothing.
    pub fn update_images(&self, put: &[ImageRecord], remove: &[&str]) -> Result<(), StoreError> {
        self.note(|| {
            let tx = self.db()?.begin_write()?;
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_another_format_is_refused_with_what_to_do() {
        let path =
            std::env::temp_dir().join(format!("shoal-store-{}.redb", shoal_proto::hex(&shoal_link::random::<6>())));
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert(CLUSTER_KEY, b"old".as_slice()).unwrap();
            tx.commit().unwrap();
        }
        let Err(e) = Store::open(&path) else { panic!("an old store was opened") };
        assert!(matches!(e, StoreError::Format { found: 1 }), "{e}");
        assert!(e.to_string().contains("shoal manager init"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    /// An active worker's record, as a join makes it.
    fn worker(id: NodeId) -> NodeRecord {
        NodeRecord {
            id,
            role: shoal_proto::Role::Worker,
            availability: shoal_proto::Availability::Active,
            labels: Default::default(),
            description: Default::default(),
            addr: None,
            created_at_ms: 1,
            ingress_address: None,
        }
    }

    fn scratch_path() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("shoal-store-{}.redb", shoal_proto::hex(&shoal_link::random::<6>())))
    }

    /// A store like `init` makes, with enough records to span many pages.
    fn full_store(path: &Path) {
        let store = Store::from_db(Database::create(path).unwrap(), path);
        let tx = store.db().unwrap().begin_write().unwrap();
        tx.open_table(META).unwrap().insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice()).unwrap();
        tx.commit().unwrap();
        let images: Vec<ImageRecord> = (0..300)
            .map(|i| ImageRecord {
                reference: format!("img{i}:1"),
                digest: format!("sha256:{}", "a".repeat(64)),
                platforms: vec!["linux/arm64".into()],
                size: 1,
                blobs: vec![format!("sha256:{}", "b".repeat(64)); 4],
                loaded_at_ms: 1,
            })
            .collect();
        store.update_images(&images, &[]).unwrap();
    }

    #[test]
    fn the_kept_node_records_follow_every_node_write() {
        let path = scratch_path();
        full_store(&path);
        let store = Store::open(&path).unwrap();
        let node = |n: u8| worker(NodeId::from_random([n; 16]));
        let ids = |store: &Store| store.nodes_shared().unwrap().iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert!(ids(&store).is_empty());
        store.put_node(&node(1)).unwrap();
        assert_eq!(ids(&store), [node(1).id]);
        let (a, b) = (store.nodes_shared().unwrap(), store.nodes_shared().unwrap());
        assert!(std::sync::Arc::ptr_eq(&a, &b), "kept between writes");
        store.put_joined(&node(2), None).unwrap();
        assert_eq!(ids(&store).len(), 2);
        store.update_node(&node(1).id, |r| r.availability = shoal_proto::Availability::Drain).unwrap();
        let drained = store.nodes_shared().unwrap().iter().find(|r| r.id == node(1).id).unwrap().availability;
        assert_eq!(drained, shoal_proto::Availability::Drain);
        store.remove_node(&node(2).id).unwrap();
        assert_eq!(ids(&store), [node(1).id]);
        assert_eq!(store.nodes().unwrap(), store.nodes_shared().unwrap().to_vec());
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn update_node_changes_only_what_it_is_given_and_never_resurrects_a_removed_node() {
        let path = scratch_path();
        full_store(&path);
        let store = Store::open(&path).unwrap();
        let id = NodeId::from_random(shoal_link::random());
        let node = worker(id.clone());
        store.put_node(&node).unwrap();
        // Two writers that each read the record before the other wrote: the mesh's
        // address and the operator's drain both stand.
        let stale = store.node(&id).unwrap().unwrap();
        let address = std::net::Ipv4Addr::new(10, 0, 0, 254);
        store.update_node(&id, |r| r.ingress_address = Some(address)).unwrap().unwrap();
        let mut drained = stale.clone();
        drained.availability = shoal_proto::Availability::Drain;
        store.update_node(&id, |r| r.availability = drained.availability).unwrap().unwrap();
        let now = store.node(&id).unwrap().unwrap();
        assert_eq!((now.ingress_address, now.availability), (Some(address), shoal_proto::Availability::Drain));
        // Removed meanwhile: nothing is written back.
        store.remove_node(&id).unwrap();
        assert!(store.update_node(&id, |r| r.ingress_address = None).unwrap().is_none());
        assert!(store.node(&id).unwrap().is_none());
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_store_that_cannot_be_opened_is_not_called_damaged() {
        let path = std::env::temp_dir().join(format!("shoal-no-such-dir-{}", std::process::id())).join("state.redb");
        let err = Store::open(&path).err().expect("no store there");
        assert!(matches!(err, StoreError::Io(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("No such file") && !text.contains("new cluster") && !text.contains("damaged"), "{text}");
    }

    #[test]
    fn a_damaged_store_is_an_error_that_says_how_to_restore_never_a_panic() {
        let path = scratch_path();
        full_store(&path);
        let good = std::fs::read(&path).unwrap();
        assert!(Store::open(&path).is_ok());
        let mut cases: Vec<(String, Vec<u8>, bool)> = vec![
            ("empty".into(), Vec::new(), true),
            ("text".into(), b"hello, not a database".to_vec(), true),
            ("five bytes".into(), b"redb\x1a".to_vec(), true),
        ];
        for frac in [2, 3, 8, 64] {
            cases.push((format!("truncated to 1/{frac}"), good[..good.len() / frac].to_vec(), true));
        }
        for off in [0, 64, 512, 4096, 8192, 16384, good.len() / 2, good.len() - 300] {
            let mut bytes = good.clone();
            bytes.iter_mut().skip(off).take(256).for_each(|b| *b ^= 0x5a);
            // Some pages are unused: overwriting them may leave a good store.
            cases.push((format!("overwritten at {off}"), bytes, false));
        }
        let mut refused = 0;
        for (what, bytes, must_fail) in cases {
            std::fs::write(&path, &bytes).unwrap();
            match std::panic::catch_unwind(|| Store::open(&path)) {
                Err(_) => panic!("{what}: opening panicked"),
                Ok(Ok(_)) => assert!(!must_fail, "{what}: opened"),
                Ok(Err(e)) => {
                    refused += 1;
                    let msg = e.to_string();
                    assert!(matches!(e, StoreError::Damaged { .. }), "{what}: {msg}");
                    assert!(msg.contains("shoal manager restore FILE"), "{what}: {msg}");
                    assert!(!msg.contains("another"), "{what}: {msg}");
                }
            }
        }
        assert!(refused >= 9, "only {refused} damaged files refused");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_store_in_use_says_so_and_a_snapshot_opens_with_the_same_records() {
        let path = scratch_path();
        full_store(&path);
        let store = Store::open(&path).unwrap();
        let Err(e) = Store::open(&path) else { panic!("opened twice") };
        assert!(matches!(e, StoreError::Locked(_)), "{e}");
        assert!(e.to_string().contains("stop it first"), "{e}");
        let copy = scratch_path();
        store.snapshot(&copy).unwrap();
        assert_eq!(Store::open(&copy).unwrap().images().unwrap(), store.images().unwrap());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&copy);
    }

    #[test]
    fn image_records_survive_reopening_the_store() {
        let path =
            std::env::temp_dir().join(format!("shoal-store-{}.redb", shoal_proto::hex(&shoal_link::random::<6>())));
        let image = |r: &str| ImageRecord {
            reference: r.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platforms: vec!["linux/arm64".into()],
            size: 42,
            blobs: vec![format!("sha256:{}", "a".repeat(64))],
            loaded_at_ms: 1,
        };
        {
            let store = Store::from_db(Database::create(&path).unwrap(), &path);
            assert!(store.images().unwrap().is_empty());
            store.update_images(&[image("a:1"), image("b:1")], &[]).unwrap();
            store.update_images(&[], &["a:1"]).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.images().unwrap(), vec![image("b:1")]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn services_and_tasks_survive_reopening_the_store() {
        use shoal_proto::{Service, ServiceSpec, TaskState, TaskStatus};
        let path =
            std::env::temp_dir().join(format!("shoal-store-{}.redb", shoal_proto::hex(&shoal_link::random::<6>())));
        let spec = ServiceSpec::new(shoal_proto::text("web").unwrap(), shoal_proto::text("demo/app:1.0").unwrap());
        let mut old = spec.clone();
        old.env.push(shoal_proto::BoundedString::lossy("A=1")).unwrap();
        let record = ServiceRecord {
            service: Service {
                id: ServiceId::from_random([1; 16]),
                spec: spec.clone(),
                spec_version: 2,
                created_at_ms: 5,
                virtual_ips: Default::default(),
            },
            previous: Some(old),
            update: None,
            updated_at_ms: 6,
        };
        let task = |n: u8| Task {
            id: TaskId::from_random([n; 16]),
            service_id: record.service.id.clone(),
            slot: u32::from(n),
            node_id: None,
            spec: spec.task_spec(),
            spec_version: 2,
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Pending, 0, "pending"),
            created_at_ms: 0,
            networks: Default::default(),
        };
        let (t1, t2) = (task(1), task(2));
        {
            let store = Store::from_db(Database::create(&path).unwrap(), &path);
            assert!(store.services().unwrap().is_empty() && store.tasks().unwrap().is_empty());
            let all = ServiceChanges { put_services: vec![&record], put_tasks: vec![&t1, &t2], ..Default::default() };
            store.change_services(&all).unwrap();
            store.change_services(&ServiceChanges { remove_tasks: vec![&t1.id], ..Default::default() }).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.services().unwrap(), vec![record.clone()]);
        assert_eq!(store.tasks().unwrap(), vec![t2]);
        store
            .change_services(&ServiceChanges { remove_services: vec![&record.service.id], ..Default::default() })
            .unwrap();
        assert!(store.services().unwrap().is_empty());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn networks_survive_reopening_the_store() {
        let path =
            std::env::temp_dir().join(format!("shoal-store-{}.redb", shoal_proto::hex(&shoal_link::random::<6>())));
        let ingress = crate::core::ipam::ingress(shoal_proto::networks::NetworkId::from_random([1; 16]), 3);
        let spec = shoal_proto::networks::NetworkSpec::new(shoal_proto::text("atsea").unwrap());
        let atsea = crate::core::ipam::create_network(
            std::slice::from_ref(&ingress),
            spec,
            shoal_proto::networks::NetworkId::from_random([2; 16]),
            4,
        )
        .unwrap();
        {
            let store = Store::from_db(Database::create(&path).unwrap(), &path);
            assert!(store.networks().unwrap().is_empty());
            store.put_network(&ingress).unwrap();
            store.put_network(&atsea).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut both = vec![ingress.clone(), atsea.clone()];
        both.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(store.networks().unwrap(), both, "in ID order");
        store.remove_network(&atsea.id).unwrap();
        assert_eq!(store.networks().unwrap(), vec![ingress]);
        let _ = std::fs::remove_file(&path);
    }

    /// A CA rotation in progress is in the store, so a restarted manager resumes it; a
    /// node's certificate record goes with the node.
    #[test]
    fn certificate_settings_and_a_rotation_survive_reopening_the_store() {
        use crate::core::rotation::Rotation;
        let path = scratch_path();
        let node = worker(NodeId::from_random([7; 16]));
        let cert = NodeCert { valid_from_ms: 1, valid_until_ms: 2, ca_digest: [3; 32] };
        let pki = PkiRecord {
            cert_expiry_ms: 60_000,
            rotation: Some(Rotation { ca_cert: vec![1, 2], ca_key_pem: "k".into(), ca_digest: [4; 32], started_ms: 5 }),
        };
        {
            let store = Store::from_db(Database::create(&path).unwrap(), &path);
            let tx = store.db().unwrap().begin_write().unwrap();
            tx.open_table(META).unwrap().insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice()).unwrap();
            tx.commit().unwrap();
            assert_eq!(store.pki().unwrap(), PkiRecord::default(), "a store from before: the defaults");
            // A node removed meanwhile gets no record.
            store.put_node_cert(&node.id, &cert).unwrap();
            assert!(store.node_certs().unwrap().is_empty());
            store.put_node(&node).unwrap();
            store.put_node_cert(&node.id, &cert).unwrap();
            store.put_pki(&pki, None).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.pki().unwrap(), pki);
        assert_eq!(store.node_certs().unwrap().get(&node.id), Some(&cert));
        assert_eq!(store.node_cert(&node.id).unwrap(), Some(cert));
        store.remove_node(&node.id).unwrap();
        assert!(store.node_certs().unwrap().is_empty(), "removing a node forgets its certificate");
        let _ = std::fs::remove_file(&path);
    }
}
