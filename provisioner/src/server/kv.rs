//! The store's one interface: a key-value store with etcd's shape, so that an etcd
//! implementation can stand beside the embedded one ([`crate::server::kv_redb`]) without
//! anything above it changing. Keys are strings (`PREFIX/...`), values bytes; every key
//! has a version (the store-wide revision of its last change, as etcd's `mod_revision`);
//! a transaction is etcd's `Txn`: compares on versions, then puts and deletes, all or
//! nothing, durable when `commit` returns `Ok(true)`.

use crate::error::Result;

/// A value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote it (never 0).
    pub version: u64,
}

/// One transaction: when every compare holds, every put and delete; else nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// `(key, version)`: the key must be at that version; `None`: the key must not exist.
    pub compare: Vec<(String, Option<u64>)>,
    /// Keys to write.
    pub put: Vec<(String, Vec<u8>)>,
    /// Keys to write that are history (events, log batches): the store drops each by
    /// itself once the history's time ([`Retention::keep`]) has passed since it was
    /// written.
    pub history: Vec<(String, Vec<u8>)>,
    /// Keys to remove (missing ones are no error).
    pub delete: Vec<String>,
    /// Every key starting with each of these is removed (one operation each).
    pub delete_prefix: Vec<String>,
}

impl Txn {
    /// Whether the transaction changes nothing.
    pub fn is_empty(&self) -> bool {
        self.put.is_empty()
            && self.history.is_empty()
            && self.delete.is_empty()
            && self.delete_prefix.is_empty()
    }
}

/// How long a store keeps history ([`Txn::history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At least this long after it was written; at most [`Retention::slack`] longer.
    pub keep: std::time::Duration,
}

impl Retention {
    /// History written within one slack shares one expiry (on etcd, one lease): a
    /// sixteenth of the time kept, between 1 s and an hour.
    pub fn slack(&self) -> std::time::Duration {
        (self.keep / 16).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(3600),
        )
    }

    /// The slot (a count of slacks since the epoch) of history written at `now_secs`,
    /// and when that slot's history expires (seconds since the epoch): the end of the
    /// slot plus the time kept.
    pub fn slot(&self, now_secs: u64) -> (u64, u64) {
        let slack = self.slack().as_secs().max(1);
        let slot = now_secs / slack;
        (slot, (slot + 1) * slack + self.keep.as_secs())
    }
}

/// What a store backend provides. Implementations are used from several threads.
pub trait Kv: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Entry>>;
    /// The value under `key`, possibly a moment old: for a read whose transaction then
    /// compares the version read (a stale one fails the compare and is read again with
    /// [`Kv::get`]). etcd answers it from the member asked, without a round of the
    /// cluster's consensus.
    fn get_relaxed(&self, key: &str) -> Result<Option<Entry>> {
        self.get(key)
    }
    /// Every key starting with `prefix`, in key order.
    fn range(&self, prefix: &str) -> Result<Vec<(String, Entry)>>;
    /// Applies `txn`: `Ok(true)` when it was committed (and is durable), `Ok(false)` when
    /// a compare failed (nothing was written).
    fn commit(&self, txn: Txn) -> Result<bool>;
    /// Bytes the store takes on disk.
    fn size(&self) -> Result<u64>;
    /// Marks the server `id` alive for as long as this process lives: on etcd a key on a
    /// lease this process keeps renewing, gone [`LIVE_TTL`] after it stops (a kill -9
    /// included). Other servers on the store ask [`Kv::alive`].
    fn announce(&self, id: &str) -> Result<()>;
    /// Whether the server `id` is alive (announced and still renewing).
    fn alive(&self, id: &str) -> Result<bool>;
}

/// How long a server stays alive on the store after it stops renewing its mark. Short:
/// a server waits up to this long before taking over the work of one that stopped.
pub const LIVE_TTL: std::time::Duration = std::time::Duration::from_secs(10);
