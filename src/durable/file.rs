//! `FileWal`: a [`Wal`] in one file, fsynced on [`Wal::sync`].
//!
//! Format: an 8-byte magic `ZPWAL01\n`, then records of
//! `[len: u32 LE][fnv1a-64 of payload: u64 LE][payload]`. On open, records
//! are read until the first one that is short or fails its checksum (a
//! write torn by a crash); the file is truncated there so later appends
//! never follow garbage.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{DurableError, Wal};
use crate::det::fnv1a64;

const MAGIC: &[u8; 8] = b"ZPWAL01\n";
const HEADER: usize = 12;

/// A write-ahead log in a file.
#[derive(Debug)]
pub struct FileWal {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    unsynced: bool,
    torn_bytes: u64,
}

impl FileWal {
    /// Opens (or creates) the log at `path`, cutting off a torn tail.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| DurableError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let (good, torn_bytes) = if data.is_empty() {
            file.write_all(MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            sync_dir(&path)?;
            (MAGIC.len(), 0)
        } else if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(DurableError::Corrupt(format!(
                "{} is not a zpatterns WAL (bad magic)",
                path.display()
            )));
        } else {
            let (_, good) = parse(&data);
            (good, (data.len() - good) as u64)
        };
        if torn_bytes > 0 {
            tracing::warn!(path = %path.display(), torn_bytes, "cutting a torn WAL tail");
            file.set_len(good as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(FileWal {
            path,
            file,
            buf: Vec::new(),
            unsynced: false,
            torn_bytes,
        })
    }

    /// Bytes cut off at open because the last write was torn.
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> DurableError {
        DurableError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn flush_buf(&mut self) -> Result<(), DurableError> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.file.write_all(&buf).map_err(|e| self.io(e))?;
            self.unsynced = true;
        }
        Ok(())
    }
}

/// Parses records after the magic; returns them and the end of the last
/// good one.
fn parse(data: &[u8]) -> (Vec<Bytes>, usize) {
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while data.len() - at >= HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let sum = u64::from_le_bytes(data[at + 4..at + 12].try_into().expect("8 bytes"));
        let start = at + HEADER;
        if data.len() - start < len || fnv1a64(&data[start..start + len]) != sum {
            break;
        }
        records.push(Bytes::copy_from_slice(&data[start..start + len]));
        at = start + len;
    }
    (records, at)
}

fn encode(record: &[u8], out: &mut Vec<u8>) -> Result<(), DurableError> {
    let len =
        u32::try_from(record.len()).map_err(|_| DurableError::RecordTooLarge(record.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&fnv1a64(record).to_le_bytes());
    out.extend_from_slice(record);
    Ok(())
}

fn sync_dir(path: &Path) -> Result<(), DurableError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Directories can be opened read-only and fsynced on Unix; elsewhere
    // this is best effort.
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(|source| DurableError::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

impl Wal for FileWal {
    fn append(&mut self, record: &[u8]) -> Result<(), DurableError> {
        encode(record, &mut self.buf)
    }

    fn sync(&mut self) -> Result<(), DurableError> {
        self.flush_buf()?;
        if self.unsynced {
            self.file.sync_data().map_err(|e| self.io(e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        !self.buf.is_empty() || self.unsynced
    }

    fn records(&mut self) -> Result<Vec<Bytes>, DurableError> {
        self.flush_buf()?;
        let data = fs::read(&self.path).map_err(|e| self.io(e))?;
        Ok(parse(&data).0)
    }

    fn rewrite(&mut self, records: &[Bytes]) -> Result<(), DurableError> {
        let mut data = MAGIC.to_vec();
        for r in records {
            encode(r, &mut data)?;
        }
        let tmp = self.path.with_extension("tmp");
        let io = |source| DurableError::Io {
            path: tmp.display().to_string(),
            source,
        };
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        sync_dir(&self.path)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        self.buf.clear();
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zpatterns-wal-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("wal")
    }

    #[test]
    fn records_survive_reopen_and_torn_tails_are_cut() {
        let path = temp_path("torn");
        let mut w = FileWal::open(&path).unwrap();
        w.append(b"alpha").unwrap();
        w.append(b"").unwrap();
        assert!(w.is_dirty());
        w.sync().unwrap();
        assert!(!w.is_dirty());
        drop(w);
        // A crash in the middle of the next record: half a header and payload.
        let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
        raw.write_all(&[9, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(raw);
        let mut w = FileWal::open(&path).unwrap();
        assert_eq!(w.torn_bytes(), 7);
        assert_eq!(
            w.records().unwrap(),
            vec![Bytes::from("alpha"), Bytes::new()]
        );
        w.append(b"beta").unwrap();
        w.sync().unwrap();
        drop(w);
        let mut w = FileWal::open(&path).unwrap();
        assert_eq!(w.records().unwrap().len(), 3);
        // A flipped byte inside a record stops the replay there.
        drop(w);
        let mut data = fs::read(&path).unwrap();
        let n = data.len();
        data[n - 1] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let mut w = FileWal::open(&path).unwrap();
        assert_eq!(w.records().unwrap().len(), 2);
    }

    #[test]
    fn rewrite_compacts_atomically() {
        let path = temp_path("rewrite");
        let mut w = FileWal::open(&path).unwrap();
        for i in 0..10u8 {
            w.append(&[i]).unwrap();
        }
        w.rewrite(&[Bytes::from_static(b"only")]).unwrap();
        w.append(b"next").unwrap();
        w.sync().unwrap();
        drop(w);
        let mut w = FileWal::open(&path).unwrap();
        assert_eq!(
            w.records().unwrap(),
            vec![Bytes::from("only"), Bytes::from("next")]
        );
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let path = temp_path("foreign");
        fs::write(&path, b"hello world, not a wal").unwrap();
        assert!(matches!(
            FileWal::open(&path),
            Err(DurableError::Corrupt(_))
        ));
    }
}
