//! `SimDisk`: an in-memory [`Wal`] that the simulator can crash, losing
//! every record appended since the last sync.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::{DurableError, Wal};

#[derive(Debug, Default)]
struct Disk {
    synced: Vec<Bytes>,
    pending: Vec<Bytes>,
    syncs: u64,
    lost: u64,
}

/// A simulated disk: clones share the same contents, so the simulator keeps
/// one handle while the node owns another.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<Disk>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding this lock can only come from a failing test;
        // the data is still consistent (every method is a few pushes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A power cut: every record not yet synced is lost. Returns how many.
    pub fn crash(&self) -> usize {
        let mut d = self.lock();
        let n = d.pending.len();
        d.lost += n as u64;
        d.pending.clear();
        n
    }

    /// Number of syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Records lost in crashes so far.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// The records that would survive a crash now.
    pub fn durable_records(&self) -> Vec<Bytes> {
        self.lock().synced.clone()
    }
}

impl Wal for SimDisk {
    fn append(&mut self, record: &[u8]) -> Result<(), DurableError> {
        self.lock().pending.push(Bytes::copy_from_slice(record));
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DurableError> {
        let mut d = self.lock();
        let pending = std::mem::take(&mut d.pending);
        d.synced.extend(pending);
        d.syncs += 1;
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    fn records(&mut self) -> Result<Vec<Bytes>, DurableError> {
        let d = self.lock();
        Ok(d.synced.iter().chain(&d.pending).cloned().collect())
    }

    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), DurableError> {
        let mut d = self.lock();
        d.synced = records.to_vec();
        d.pending.clear();
        d.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loses_only_unsynced_records() {
        let sim = SimDisk::new();
        let mut node = sim.clone();
        node.append(b"one").unwrap();
        node.sync().unwrap();
        node.append(b"two").unwrap();
        assert!(node.is_dirty());
        assert_eq!(node.records().unwrap().len(), 2);
        assert_eq!(sim.crash(), 1);
        assert_eq!(node.records().unwrap(), vec![Bytes::from("one")]);
        assert_eq!((sim.syncs(), sim.lost()), (1, 1));
    }
}
