//! The shared directory behind the path guard: the [`Share`] trait, the
//! guard itself, [`DirShare`] (the file system) and [`MemShare`] (memory,
//! for the simulator and tests).
//!
//! The guard is applied to every read and every write. A name is a
//! relative `/`-separated path of ordinary components: empty names and
//! components, `.` and `..`, a leading `/`, backslashes, `:` and NUL bytes
//! are refused, and so are names ending in `.part` (downloads in
//! progress). On disk, the path is also resolved (symlinks followed) and
//! must stay inside the shared directory. A refused name on the reading
//! side looks exactly like a missing file (the node answers UNHANDLED), so
//! a refusal reveals nothing about what exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;

use super::{FileInfo, Hash, Hasher, P2pError};

/// A shared directory. Every method applies the path guard to the names it
/// is given.
pub trait Share: Send + fmt::Debug {
    /// The files offered (top level; `.part` files excluded).
    fn list(&mut self) -> Vec<FileInfo>;

    /// The file called `name`, or `None` if it is missing *or* refused.
    fn lookup(&mut self, name: &str) -> Option<FileInfo>;

    /// A file whose content has `hash`.
    fn by_hash(&mut self, hash: &Hash) -> Option<FileInfo> {
        self.list().into_iter().find(|f| f.hash == *hash)
    }

    /// Up to `len` bytes of `name` from `offset`.
    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Bytes, P2pError>;

    /// The SHA-256 of every `chunk_size` piece of `info`'s file.
    fn manifest(&mut self, info: &FileInfo, chunk_size: u32) -> Result<Vec<Hash>, P2pError> {
        let cs = u64::from(chunk_size.max(1));
        let mut out = Vec::new();
        let mut off = 0;
        while off < info.size {
            let d = self.read(&info.name, off, cs.min(info.size - off) as usize)?;
            if d.is_empty() {
                return Err(P2pError::Corrupt);
            }
            out.push(Hash::of(&d));
            off += d.len() as u64;
        }
        Ok(out)
    }

    /// Starts (or resumes) writing `name`: keeps the chunks of an existing
    /// `.part` that match `chunks` from the start, drops the rest, and
    /// returns the byte offset to resume from.
    fn begin(&mut self, name: &str, chunk_size: u32, chunks: &[Hash]) -> Result<u64, P2pError>;

    /// Writes verified bytes into `name`'s `.part` at `offset`.
    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), P2pError>;

    /// Checks that the `.part`'s whole content has `hash`, then renames it
    /// to `name`. On a mismatch the `.part` is removed.
    fn finish(&mut self, name: &str, hash: &Hash) -> Result<FileInfo, P2pError>;
}

/// The path guard on names: `Ok` if `name` is a relative path of ordinary
/// components (see the module doc).
pub fn check_name(name: &str) -> Result<(), P2pError> {
    let bad = name.is_empty()
        || name.len() > 1024
        || name.starts_with('/')
        || name.ends_with(".part")
        || name.contains(['\\', '\0', ':'])
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        Err(P2pError::BadPath)
    } else {
        Ok(())
    }
}

fn part_name(name: &str) -> String {
    format!("{name}.part")
}

fn verified_prefix(part: &[u8], chunk_size: u32, chunks: &[Hash]) -> u64 {
    let cs = chunk_size.max(1) as usize;
    let mut ok = 0;
    for (piece, want) in part.chunks(cs).zip(chunks) {
        if piece.len() != cs && ok + piece.len() != part.len() {
            break;
        }
        if Hash::of(piece) != *want {
            break;
        }
        ok += piece.len();
        if piece.len() < cs {
            break;
        }
    }
    ok as u64
}

/// A share in a directory of the file system.
#[derive(Debug)]
pub struct DirShare {
    root: PathBuf,
    hashes: HashMap<PathBuf, (u64, Option<SystemTime>, Hash)>,
}

impl DirShare {
    /// The share rooted at `dir`, which must exist.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self, P2pError> {
        let root = fs::canonicalize(dir.as_ref())?;
        if !root.is_dir() {
            return Err(P2pError::Io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            )));
        }
        Ok(DirShare {
            root,
            hashes: HashMap::new(),
        })
    }

    /// The shared directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The resolved path of an existing regular file inside the root.
    fn resolve_read(&self, name: &str) -> Option<PathBuf> {
        check_name(name).ok()?;
        let p = fs::canonicalize(self.root.join(name)).ok()?;
        (p.starts_with(&self.root) && p.is_file()).then_some(p)
    }

    /// The path to write `file` (a final name or a `.part`) at: its parent
    /// resolved inside the root, itself not a symlink.
    fn resolve_write(&self, name: &str, file: &str) -> Result<PathBuf, P2pError> {
        check_name(name)?;
        let joined = self.root.join(file);
        let parent = joined.parent().ok_or(P2pError::BadPath)?;
        let parent = fs::canonicalize(parent).map_err(|_| P2pError::BadPath)?;
        if !parent.starts_with(&self.root) {
            return Err(P2pError::BadPath);
        }
        let leaf = joined.file_name().ok_or(P2pError::BadPath)?;
        let target = parent.join(leaf);
        match fs::symlink_metadata(&target) {
            Ok(m) if !m.is_file() => Err(P2pError::BadPath),
            _ => Ok(target),
        }
    }

    fn info(&mut self, name: &str, path: &Path) -> Option<FileInfo> {
        let meta = fs::metadata(path).ok()?;
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if let Some((s, m, h)) = self.hashes.get(path) {
            if *s == size && *m == mtime {
                return Some(FileInfo {
                    name: name.to_owned(),
                    size,
                    hash: *h,
                });
            }
        }
        let hash = hash_file(path).ok()?;
        self.hashes.insert(path.to_owned(), (size, mtime, hash));
        Some(FileInfo {
            name: name.to_owned(),
            size,
            hash,
        })
    }
}

fn hash_file(path: &Path) -> std::io::Result<Hash> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

impl Share for DirShare {
    fn list(&mut self) -> Vec<FileInfo> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        names.into_iter().filter_map(|n| self.lookup(&n)).collect()
    }

    fn lookup(&mut self, name: &str) -> Option<FileInfo> {
        let path = self.resolve_read(name)?;
        self.info(name, &path)
    }

    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Bytes, P2pError> {
        let path = self.resolve_read(name).ok_or(P2pError::Unhandled)?;
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    }

    fn begin(&mut self, name: &str, chunk_size: u32, chunks: &[Hash]) -> Result<u64, P2pError> {
        self.resolve_write(name, name)?;
        let part = self.resolve_write(name, &part_name(name))?;
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)?;
        let mut have = Vec::new();
        f.read_to_end(&mut have)?;
        let ok = verified_prefix(&have, chunk_size, chunks);
        f.set_len(ok)?;
        Ok(ok)
    }

    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), P2pError> {
        let part = self.resolve_write(name, &part_name(name))?;
        let mut f = OpenOptions::new().write(true).open(part)?;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)?;
        Ok(())
    }

    fn finish(&mut self, name: &str, hash: &Hash) -> Result<FileInfo, P2pError> {
        let target = self.resolve_write(name, name)?;
        let part = self.resolve_write(name, &part_name(name))?;
        if hash_file(&part)? != *hash {
            let _ = fs::remove_file(&part);
            return Err(P2pError::Corrupt);
        }
        File::open(&part)?.sync_all()?;
        fs::rename(&part, &target)?;
        self.lookup(name).ok_or(P2pError::Unhandled)
    }
}

#[derive(Debug, Default)]
struct MemInner {
    files: BTreeMap<String, Bytes>,
    parts: BTreeMap<String, Vec<u8>>,
    corrupt: BTreeSet<String>,
}

/// A share in memory. Clones share the same files, so a test (or a
/// simulated node's factory) keeps a clone to look inside or to survive a
/// crash.
#[derive(Clone, Default)]
pub struct MemShare {
    inner: Arc<Mutex<MemInner>>,
}

impl fmt::Debug for MemShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("MemShare")
            .field("files", &g.files.keys().collect::<Vec<_>>())
            .field("parts", &g.parts.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MemShare {
    /// An empty share.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) a file.
    pub fn insert(&self, name: &str, data: impl Into<Bytes>) {
        self.lock().files.insert(name.to_owned(), data.into());
    }

    /// A file's content.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        self.lock().files.get(name).cloned()
    }

    /// Length of a download in progress, if any.
    pub fn part_len(&self, name: &str) -> Option<usize> {
        self.lock().parts.get(name).map(Vec::len)
    }

    /// Fault injection for tests: every chunk of `name` read from now on
    /// has its first byte flipped (the manifest stays that of the true
    /// content), as a provider with a bad disk or bad intent would serve.
    pub fn corrupt_reads(&self, name: &str) {
        self.lock().corrupt.insert(name.to_owned());
    }
}

impl Share for MemShare {
    fn list(&mut self) -> Vec<FileInfo> {
        let names: Vec<String> = self.lock().files.keys().cloned().collect();
        names.iter().filter_map(|n| self.lookup(n)).collect()
    }

    fn lookup(&mut self, name: &str) -> Option<FileInfo> {
        check_name(name).ok()?;
        let g = self.lock();
        let d = g.files.get(name)?;
        Some(FileInfo {
            name: name.to_owned(),
            size: d.len() as u64,
            hash: Hash::of(d),
        })
    }

    fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Bytes, P2pError> {
        check_name(name).map_err(|_| P2pError::Unhandled)?;
        let g = self.lock();
        let d = g.files.get(name).ok_or(P2pError::Unhandled)?;
        let start = (offset.min(d.len() as u64)) as usize;
        let end = start.saturating_add(len).min(d.len());
        let out = d.slice(start..end);
        if g.corrupt.contains(name) && !out.is_empty() {
            let mut v = out.to_vec();
            v[0] ^= 0xff;
            return Ok(Bytes::from(v));
        }
        Ok(out)
    }

    fn manifest(&mut self, info: &FileInfo, chunk_size: u32) -> Result<Vec<Hash>, P2pError> {
        let g = self.lock();
        let d = g.files.get(&info.name).ok_or(P2pError::Unhandled)?;
        Ok(d.chunks(chunk_size.max(1) as usize).map(Hash::of).collect())
    }

    fn begin(&mut self, name: &str, chunk_size: u32, chunks: &[Hash]) -> Result<u64, P2pError> {
        check_name(name)?;
        let mut g = self.lock();
        let part = g.parts.entry(name.to_owned()).or_default();
        let ok = verified_prefix(part, chunk_size, chunks);
        part.truncate(ok as usize);
        Ok(ok)
    }

    fn write(&mut self, name: &str, offset: u64, data: &[u8]) -> Result<(), P2pError> {
        check_name(name)?;
        let mut g = self.lock();
        let part = g.parts.get_mut(name).ok_or(P2pError::BadPath)?;
        let off = offset as usize;
        if part.len() < off + data.len() {
            part.resize(off + data.len(), 0);
        }
        part[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn finish(&mut self, name: &str, hash: &Hash) -> Result<FileInfo, P2pError> {
        check_name(name)?;
        let mut g = self.lock();
        let part = g.parts.remove(name).ok_or(P2pError::BadPath)?;
        if Hash::of(&part) != *hash {
            return Err(P2pError::Corrupt);
        }
        let size = part.len() as u64;
        g.files.insert(name.to_owned(), Bytes::from(part));
        Ok(FileInfo {
            name: name.to_owned(),
            size,
            hash: *hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_refuses_escapes() {
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            "c:x",
            "a//b",
            "./a",
            "x.part",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a.txt", "dir/a", "...x"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_part_resumes_after_its_last_good_chunk() {
        let data: Vec<u8> = (0..100u8).collect();
        let chunks: Vec<Hash> = data.chunks(30).map(Hash::of).collect();
        let mut s = MemShare::new();
        assert_eq!(s.begin("f", 30, &chunks).unwrap(), 0);
        s.write("f", 0, &data[..30]).unwrap();
        s.write("f", 30, &data[30..60]).unwrap();
        let mut bad = data[60..90].to_vec();
        bad[3] ^= 1;
        s.write("f", 60, &bad).unwrap();
        assert_eq!(s.begin("f", 30, &chunks).unwrap(), 60);
        s.write("f", 60, &data[60..]).unwrap();
        let info = s.finish("f", &Hash::of(&data)).unwrap();
        assert_eq!(info.size, 100);
        assert_eq!(s.get("f").unwrap(), Bytes::from(data));
    }
}
