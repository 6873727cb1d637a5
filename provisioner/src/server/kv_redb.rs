//! The embedded store: [`Kv`] on redb, one file (`store.redb`) in one private directory
//! (`--data/store/`). redb is a copy-on-write B-tree with ACID transactions; a commit with
//! `Durability::Immediate` (redb's default) is on disk when it returns, and a kill -9 at
//! any point leaves the last committed state. Each value is stored with its version (the
//! revision of the transaction that wrote it) in front: 8 bytes, big-endian.
//!
//! Commits share their syncs (group commit): each transaction commits without one, then
//! waits until a synced commit covers it, made by whichever waiting thread gets there
//! first. `commit` still returns only once the transaction is on disk.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::server::files::private_dir;
use crate::server::kv::{Entry, Kv, Retention, Txn};

/// Every key and its versioned value.
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("data");
/// `revision`: the last committed transaction's number.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// History's expiry: `<expiry, 16 hex digits>/<key>`, value empty; in expiry order, so
/// what is due is the table's first entries.
const EXPIRY: TableDefinition<&str, &[u8]> = TableDefinition::new("expiry");

/// History dropped by one commit at most: a backlog (a store opened after a long stop)
/// goes away over the next commits rather than making one of them slow.
const SWEEP: usize = 256;

/// The store's file name inside its directory.
pub const FILE: &str = "store.redb";

/// redb's errors, said with what was being done.
fn err(what: &str) -> impl FnOnce(redb::Error) -> Error + '_ {
    move |e| Error::Store {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// The embedded store.
pub struct RedbKv {
    db: Database,
    path: PathBuf,
    retention: Retention,
    /// The last revision known to be on disk; held by the one thread syncing, while
    /// the others wait for it (group commit, see [`RedbKv::sync_through`]).
    durable: std::sync::Mutex<u64>,
}

impl std::fmt::Debug for RedbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbKv").field("path", &self.path).finish()
    }
}

impl RedbKv {
    /// Opens (creating) the store in `dir`. A store left by a crash is recovered by redb
    /// here (the last committed transaction); one that cannot be read is an error naming
    /// the file.
    pub fn open(dir: &Path, retention: Retention) -> Result<RedbKv> {
        use std::os::unix::fs::PermissionsExt;
        private_dir(dir)?;
        let path = dir.join(FILE);
        let db = Database::create(&path).map_err(|e| Error::Store {
            what: format!("opening {}", path.display()),
            reason: e.to_string(),
        })?;
        // redb makes the file with the umask's mode: the store holds token hashes and
        // certificates' records, so it is private like the rest of --data.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(crate::error::io("setting the mode of", &path))?;
        let kv = RedbKv {
            db,
            path,
            retention,
            durable: std::sync::Mutex::new(0),
        };
        // The tables exist from the first open on, so reads never meet a missing one.
        let w = kv
            .db
            .begin_write()
            .map_err(|e| err("starting a write")(e.into()))?;
        {
            w.open_table(DATA)
                .map_err(|e| err("opening the data table")(e.into()))?;
            w.open_table(META)
                .map_err(|e| err("opening the meta table")(e.into()))?;
            w.open_table(EXPIRY)
                .map_err(|e| err("opening the expiry table")(e.into()))?;
        }
        w.commit()
            .map_err(|e| err("committing the tables")(e.into()))?;
        Ok(kv)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies `txn` without syncing: `Some(revision)` when its compares held and it is
    /// committed (seen by every later read, on disk only after
    /// [`RedbKv::sync_through`] that revision), `None` when a compare failed.
    fn apply(&self, txn: Txn) -> Result<Option<u64>> {
        let mut w = self
            .db
            .begin_write()
            .map_err(|e| err("starting a write")(e.into()))?;
        w.set_durability(Durability::None)
            .map_err(|e| Error::Store {
                what: "deferring a commit's sync".into(),
                reason: e.to_string(),
            })?;
        let revision;
        {
            let mut data = w
                .open_table(DATA)
                .map_err(|e| err("opening the data table")(e.into()))?;
            for (key, want) in &txn.compare {
                let have = match data
                    .get(key.as_str())
                    .map_err(|e| err("reading")(e.into()))?
                {
                    Some(g) => Some(decode(g.value()).ok_or_else(|| corrupt(key))?.version),
                    None => None,
                };
                if have != *want {
                    drop(data);
                    w.abort().map_err(|e| err("aborting")(e.into()))?;
                    return Ok(None);
                }
            }
            let mut meta = w
                .open_table(META)
                .map_err(|e| err("opening the meta table")(e.into()))?;
            revision = last_revision(&meta)? + 1;
            meta.insert("revision", revision)
                .map_err(|e| err("writing the revision")(e.into()))?;
            for key in &txn.delete {
                data.remove(key.as_str())
                    .map_err(|e| err("deleting")(e.into()))?;
            }
            for prefix in &txn.delete_prefix {
                let mut doomed = Vec::new();
                for item in data
                    .range(prefix.as_str()..)
                    .map_err(|e| err("listing")(e.into()))?
                {
                    let (k, _) = item.map_err(|e| err("listing")(e.into()))?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    doomed.push(k.value().to_string());
                }
                for k in doomed {
                    data.remove(k.as_str())
                        .map_err(|e| err("deleting")(e.into()))?;
                }
            }
            for (key, value) in txn.put.iter().chain(&txn.history) {
                let mut raw = Vec::with_capacity(8 + value.len());
                raw.extend_from_slice(&revision.to_be_bytes());
                raw.extend_from_slice(value);
                data.insert(key.as_str(), raw.as_slice())
                    .map_err(|e| err("writing")(e.into()))?;
            }
            let mut expiry = w
                .open_table(EXPIRY)
                .map_err(|e| err("opening the expiry table")(e.into()))?;
            let now = crate::schema::unix_time();
            let (_, expires) = self.retention.slot(now);
            for (key, _) in &txn.history {
                expiry
                    .insert(format!("{expires:016x}/{key}").as_str(), &[][..])
                    .map_err(|e| err("writing an expiry")(e.into()))?;
            }
            // What is due goes in the same transaction: the store never holds history
            // past its time by more than the time to the next write.
            let due_before = format!("{:016x}/", now + 1);
            let mut due = Vec::new();
            for item in expiry
                .range(..due_before.as_str())
                .map_err(|e| err("listing expiries")(e.into()))?
                .take(SWEEP)
            {
                let (k, _) = item.map_err(|e| err("listing expiries")(e.into()))?;
                due.push(k.value().to_string());
            }
            for e in &due {
                expiry
                    .remove(e.as_str())
                    .map_err(|e| err("dropping an expiry")(e.into()))?;
                if let Some((_, key)) = e.split_once('/') {
                    data.remove(key)
                        .map_err(|e| err("dropping history")(e.into()))?;
                }
            }
        }
        w.commit().map_err(|e| err("committing")(e.into()))?;
        Ok(Some(revision))
    }

    /// Returns once every commit up to `revision` is on disk. Group commit: one thread
    /// at a time makes everything committed so far durable with one synced, empty
    /// commit; the threads that waited meanwhile find their revision covered by it and
    /// return without a sync of their own. Under a storm that is one sync for many
    /// transactions instead of one each.
    fn sync_through(&self, revision: u64) -> Result<()> {
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        if *durable >= revision {
            return Ok(());
        }
        let w = self
            .db
            .begin_write()
            .map_err(|e| err("starting a sync")(e.into()))?;
        // Every commit before this one, this one's revision being the last committed.
        let last = last_revision(
            &w.open_table(META)
                .map_err(|e| err("opening the meta table")(e.into()))?,
        )?;
        w.commit().map_err(|e| err("syncing")(e.into()))?;
        *durable = last;
        Ok(())
    }
}

/// The last committed transaction's number (0 in a new store).
fn last_revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64> {
    Ok(meta
        .get("revision")
        .map_err(|e| err("reading the revision")(e.into()))?
        .map_or(0, |g| g.value()))
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let (v, value) = raw.split_at_checked(8)?;
    let version = u64::from_be_bytes(v.try_into().ok()?);
    Some(Entry {
        value: value.to_vec(),
        version,
    })
}

fn corrupt(key: &str) -> Error {
    Error::Store {
        what: format!("reading {key}"),
        reason: "a value shorter than its version".into(),
    }
}

impl Kv for RedbKv {
    fn get(&self, key: &str) -> Result<Option<Entry>> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| err("starting a read")(e.into()))?;
        let t = r
            .open_table(DATA)
            .map_err(|e| err("opening the data table")(e.into()))?;
        let Some(g) = t.get(key).map_err(|e| err("reading")(e.into()))? else {
            return Ok(None);
        };
        decode(g.value()).map(Some).ok_or_else(|| corrupt(key))
    }

    fn range(&self, prefix: &str) -> Result<Vec<(String, Entry)>> {
        let r = self
            .db
            .begin_read()
            .map_err(|e| err("starting a read")(e.into()))?;
        let t = r
            .open_table(DATA)
            .map_err(|e| err("opening the data table")(e.into()))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| err("listing")(e.into()))? {
            let (k, v) = item.map_err(|e| err("listing")(e.into()))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let entry = decode(v.value()).ok_or_else(|| corrupt(key))?;
            out.push((key.to_string(), entry));
        }
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<bool> {
        match self.apply(txn)? {
            Some(revision) => {
                self.sync_through(revision)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)
            .map_err(crate::error::io("reading the size of", &self.path))?
            .len())
    }

    // The file is locked to one process: no other server is alive on it, and the one
    // that runs knows itself (`Store::server_alive`).
    fn announce(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    fn alive(&self, _id: &str) -> Result<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONTH: Retention = Retention {
        keep: std::time::Duration::from_secs(30 * 86400),
    };

    #[test]
    fn history_is_dropped_by_the_first_write_after_its_time() {
        let dir = std::env::temp_dir().join(format!("plinth-kv-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keep = Retention {
            keep: std::time::Duration::from_secs(1),
        };
        let kv = RedbKv::open(&dir, keep).expect("open");
        let (_, expires) = keep.slot(crate::schema::unix_time());
        assert!(kv
            .commit(Txn {
                put: vec![("m/a".into(), b"record".to_vec())],
                history: vec![("e/a/1".into(), b"event".to_vec())],
                ..Txn::default()
            })
            .expect("commit"));
        assert!(kv.get("e/a/1").expect("get").is_some(), "dropped at once");
        while crate::schema::unix_time() <= expires {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Still there until a write: reads never write.
        assert!(kv.get("e/a/1").expect("get").is_some());
        assert!(kv
            .commit(Txn {
                history: vec![("e/a/2".into(), b"later".to_vec())],
                ..Txn::default()
            })
            .expect("commit"));
        assert!(
            kv.get("e/a/1").expect("get").is_none(),
            "kept past its time"
        );
        assert!(kv.get("e/a/2").expect("get").is_some());
        assert!(
            kv.get("m/a").expect("get").is_some(),
            "a record is not history"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn compares_guard_a_transaction_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("plinth-kv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let kv = RedbKv::open(&dir, MONTH).expect("open");
            let put = |k: &str, v: &str| Txn {
                compare: vec![(k.to_string(), None)],
                put: vec![(k.to_string(), v.as_bytes().to_vec())],
                ..Txn::default()
            };
            assert!(kv.commit(put("m/a", "1")).expect("commit"));
            // Created only when missing.
            assert!(!kv.commit(put("m/a", "2")).expect("commit"));
            let a = kv.get("m/a").expect("get").expect("there");
            assert_eq!(a.value, b"1");
            assert!(kv.commit(put("m/b", "3")).expect("commit"));
            assert!(kv.commit(put("n/c", "4")).expect("commit"));
            // A stale version changes nothing, not even the other keys of the txn.
            let stale = Txn {
                compare: vec![("m/a".into(), Some(a.version + 100))],
                put: vec![("m/z".into(), b"x".to_vec())],
                delete: vec!["m/b".into()],
                ..Txn::default()
            };
            assert!(!kv.commit(stale).expect("commit"));
            let fresh = Txn {
                compare: vec![("m/a".into(), Some(a.version))],
                put: vec![("m/a".into(), b"5".to_vec())],
                delete: vec!["m/b".into()],
                ..Txn::default()
            };
            assert!(kv.commit(fresh).expect("commit"));
        }
        let kv = RedbKv::open(&dir, MONTH).expect("reopen");
        let keys: Vec<String> = kv
            .range("m/")
            .expect("range")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["m/a"]);
        let a = kv.get("m/a").expect("get").expect("there");
        assert_eq!(a.value, b"5");
        assert!(a.version > 1);
        assert!(kv.size().expect("size") > 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(kv.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
