//! Durable state for the consensus protocol cores: an append-only record
//! log with explicit sync, and three implementations.
//!
//! A protocol core writes its state changes as records (for a Paxos
//! acceptor: "promised b", "accepted slot s at b with v"), calls
//! [`Wal::sync`] before any reply that depends on them leaves (the
//! [`Process::persist`](crate::transport::Process::persist) step), and on
//! restart replays [`Wal::records`] to rebuild its state. The abstraction
//! is protocol-agnostic: records are opaque bytes. Checksums use
//! [`det::fnv1a64`](crate::det::fnv1a64).
//!
//! - [`FileWal`]: a file of checksummed, length-prefixed records; `sync` is
//!   `fsync`; a torn tail after a crash is detected and cut off;
//!   [`Wal::rewrite`] compacts through a temporary file and an atomic rename.
//! - [`SimDisk`]: in memory, shared between a simulated node and the
//!   simulator, which can [`crash`](SimDisk::crash) it: every record not yet
//!   synced is lost, exactly what a power cut does to an unsynced file.
//! - [`MemWal`]: in memory, never crashes (nodes that need no durability).

mod file;
mod sim;

use std::fmt;

use bytes::Bytes;

pub use file::FileWal;
pub use sim::SimDisk;

/// An append-only log of opaque records with explicit durability.
pub trait Wal: Send + fmt::Debug {
    /// Appends `record` (buffered; durable only after [`Wal::sync`]).
    fn append(&mut self, record: &[u8]) -> Result<(), DurableError>;

    /// Makes every appended record durable.
    fn sync(&mut self) -> Result<(), DurableError>;

    /// True if records were appended since the last sync.
    fn is_dirty(&self) -> bool;

    /// Every record, in append order, as found at open (after a crash: the
    /// durable ones only) plus those appended since.
    fn records(&mut self) -> Result<Vec<Bytes>, DurableError>;

    /// Atomically replaces the whole log by `records` and makes it durable
    /// (compaction).
    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), DurableError>;
}

/// A [`Wal`] that only lives in memory and never loses anything.
#[derive(Debug, Default, Clone)]
pub struct MemWal {
    records: Vec<Bytes>,
    dirty: bool,
}

impl MemWal {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Wal for MemWal {
    fn append(&mut self, record: &[u8]) -> Result<(), DurableError> {
        self.records.push(Bytes::copy_from_slice(record));
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DurableError> {
        self.dirty = false;
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn records(&mut self) -> Result<Vec<Bytes>, DurableError> {
        Ok(self.records.clone())
    }

    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), DurableError> {
        self.records = records.to_vec();
        self.dirty = false;
        Ok(())
    }
}

impl Wal for Box<dyn Wal> {
    fn append(&mut self, record: &[u8]) -> Result<(), DurableError> {
        (**self).append(record)
    }
    fn sync(&mut self) -> Result<(), DurableError> {
        (**self).sync()
    }
    fn is_dirty(&self) -> bool {
        (**self).is_dirty()
    }
    fn records(&mut self) -> Result<Vec<Bytes>, DurableError> {
        (**self).records()
    }
    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), DurableError> {
        (**self).rewrite(records)
    }
}

/// Errors of durable storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The operating system refused a read, write or fsync.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record is larger than the format allows (4 GiB).
    #[error("record of {0} bytes is too large")]
    RecordTooLarge(usize),
    /// A record read back did not decode as the core expected.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// An append failed earlier in this step (logged then): the step's state
    /// is not durable, so its replies must not leave.
    #[error("an append failed earlier in this step")]
    AppendFailed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_wal_keeps_everything() {
        let mut w = MemWal::new();
        w.append(b"a").unwrap();
        assert!(w.is_dirty());
        w.sync().unwrap();
        assert!(!w.is_dirty());
        w.rewrite(&[Bytes::from_static(b"z")]).unwrap();
        w.append(b"b").unwrap();
        assert_eq!(
            w.records().unwrap(),
            vec![Bytes::from("z"), Bytes::from("b")]
        );
    }
}
