//! The router's current routing table: swapped in atomically (readers never lock), only ever
//! forward in version, and kept on local disk as the last-known-good copy so a restarted router
//! serves even if the control plane never answers.
//!
//! Disk writes are atomic: a temp file in the same directory, fsync, rename, fsync of the
//! directory. A copy that fails to decode or validate is refused whole, with a clear error — a
//! router never serves half a table.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwapOption;
use cellstack_api::routing::{DecodeError, PackedTable};

use crate::{
    background::Retirer,
    snapshot::{Origin, Snapshot, SnapshotError},
};

/// How long a replaced table waits for the requests routed with it before the retiring thread
/// lets it go (the last of them then frees it): well past any request's deadline.
const RETIRE_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

/// What became of an offered table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Now serving this version.
    Swapped { from: Option<u64>, to: u64 },
    /// Same version as the one served: nothing to do.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("routing table refused: {0}")]
    Decode(#[from] DecodeError),
    #[error("routing table refused: {0}")]
    Index(#[from] SnapshotError),
    #[error(
        "routing table version {offered} is older than the version {current} being served; versions only move forward"
    )]
    Backwards { offered: u64, current: u64 },
    #[error("cannot persist the last-known-good table to {path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the last-known-good table {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct TableStore {
    current: ArcSwapOption<Snapshot>,
    /// Where the last-known-good copy lives (none: not persisted).
    disk: Option<PathBuf>,
    /// Frees replaced tables off the traffic workers.
    retired: Retirer<Snapshot>,
}

impl TableStore {
    pub fn new(disk: Option<PathBuf>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            disk,
            retired: Retirer::start("table-retire", RETIRE_HOLD),
        }
    }

    /// The table being served, if any. Lock-free; cheap enough for every request.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Loads the last-known-good copy from disk, if there is one. `Ok(None)` when none exists;
    /// an error when one exists but is unreadable or corrupt (it is then not used).
    pub fn load_disk(&self) -> Result<Option<u64>, StoreError> {
        let Some(path) = &self.disk else {
            return Ok(None);
        };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        let table = PackedTable::decode(&bytes)?;
        let version = table.version();
        self.swap(Snapshot::new(table, Origin::Disk, SystemTime::now())?);
        Ok(Some(version))
    }

    /// Offers an encoded table from a source: decoded and validated, refused if older than the
    /// one served, indexed, persisted to disk, then swapped in. Indexed before it is persisted,
    /// so the disk never keeps a table this router could not serve.
    pub fn offer(&self, encoded: &[u8], origin: Origin) -> Result<Offer, StoreError> {
        let table = PackedTable::decode(encoded)?;
        let from = self.current().map(|s| s.version());
        match from {
            Some(current) if table.version() < current => {
                return Err(StoreError::Backwards {
                    offered: table.version(),
                    current,
                });
            }
            Some(current) if table.version() == current => return Ok(Offer::Unchanged),
            _ => {}
        }
        let to = table.version();
        let snapshot = Snapshot::new(table, origin, SystemTime::now())?;
        if let Some(path) = &self.disk {
            persist(path, encoded).map_err(|source| StoreError::Persist {
                path: path.clone(),
                source,
            })?;
        }
        self.swap(snapshot);
        Ok(Offer::Swapped { from, to })
    }

    fn swap(&self, snapshot: Snapshot) {
        if let Some(old) = self.current.swap(Some(Arc::new(snapshot))) {
            self.retired.retire(old);
        }
    }
}

/// Writes `bytes` to `path` atomically and durably.
fn persist(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("routing-table"),
        std::process::id()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::fixtures;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cellstack-router-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn tables_only_move_forward() {
        let store = TableStore::new(None);
        let v2 = fixtures::table(2, 10).encode().unwrap();
        assert_eq!(
            store.offer(&v2, Origin::File).unwrap(),
            Offer::Swapped { from: None, to: 2 }
        );
        assert_eq!(store.offer(&v2, Origin::File).unwrap(), Offer::Unchanged);
        let v1 = fixtures::table(1, 10).encode().unwrap();
        assert!(matches!(
            store.offer(&v1, Origin::File),
            Err(StoreError::Backwards {
                offered: 1,
                current: 2
            })
        ));
        assert_eq!(store.current().unwrap().version(), 2);
    }

    #[test]
    fn a_restarted_router_serves_the_last_known_good_copy() {
        let path = scratch().join("lkg/routing-table.bin");
        let first = TableStore::new(Some(path.clone()));
        first
            .offer(
                &fixtures::table(7, 20).encode().unwrap(),
                Origin::Kubernetes,
            )
            .unwrap();
        drop(first);
        let restarted = TableStore::new(Some(path));
        assert_eq!(restarted.load_disk().unwrap(), Some(7));
        let snap = restarted.current().unwrap();
        assert_eq!(snap.origin, Origin::Disk);
        assert!(snap.route("t3").is_some());
    }

    #[test]
    fn a_corrupt_disk_copy_is_refused_whole() {
        let path = scratch().join("routing-table.bin");
        let mut bytes = fixtures::table(3, 20).encode().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.truncate(bytes.len() - 5);
        fs::write(&path, &bytes).unwrap();
        let store = TableStore::new(Some(path));
        let err = store.load_disk().unwrap_err();
        assert!(
            err.to_string().starts_with("routing table refused"),
            "{err}"
        );
        assert!(store.current().is_none(), "nothing of it is served");
    }

    #[test]
    fn a_corrupt_offer_leaves_the_served_table_and_the_disk_copy_alone() {
        let path = scratch().join("routing-table.bin");
        let store = TableStore::new(Some(path.clone()));
        let good = fixtures::table(4, 5).encode().unwrap();
        store.offer(&good, Origin::File).unwrap();
        assert!(store.offer(b"CSRT\x01\x00garbage", Origin::File).is_err());
        assert_eq!(store.current().unwrap().version(), 4);
        assert_eq!(fs::read(&path).unwrap(), good);
    }

    #[test]
    fn no_disk_copy_is_not_an_error() {
        let store = TableStore::new(Some(scratch().join("absent.bin")));
        assert_eq!(store.load_disk().unwrap(), None);
    }
}
