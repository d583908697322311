//! The P2P wire codec: one message is one ZeroMQ frame (the transport adds
//! the sender's routing identity `n<id>` in front on a ROUTER).
//!
//! Integers are big-endian. `str` is a `u16` length then UTF-8 bytes;
//! `hash` is 32 raw bytes; `key` is a `u8` (0 = name, 1 = hash) followed by
//! a `str` or a `hash`. The first byte is the kind:
//!
//! | kind | name | fields after the kind byte |
//! |---|---|---|
//! | 1 | HELLO | `url: str` (the sender's URL, so the receiver can connect back) |
//! | 2 | QUERY | `qid: u64, budget_ms: u32, key, n: u8, history: str * n` (URLs, the sender's last) |
//! | 3 | HITS | `qid: u64, n: u16, (name: str, size: u64, hash, url: str) * n` |
//! | 4 | ERROR | `id: u64` (the qid or request id), `code: u32, message: str` |
//! | 5 | FETCH | `req: u64, secret: str, key` (make this node download a file) |
//! | 6 | FETCHED | `req: u64, name: str, size: u64, hash` |
//! | 7 | GETM | `req: u64, hash, chunk_size: u32` (ask for the manifest) |
//! | 8 | MANIFEST | `req: u64, size: u64, chunk_size: u32, n: u32, hash * n` (per-chunk SHA-256) |
//! | 9 | GET | `req: u64, hash, index: u32, chunk_size: u32` (one chunk) |
//! | 10 | CHUNK | `req: u64, index: u32`, then the chunk's bytes to the end of the frame |

use bytes::{BufMut, Bytes, BytesMut};

use super::{FileInfo, Hash, Key};

/// One search hit: a file and the URL of the node that has it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hit {
    /// The file.
    pub info: FileInfo,
    /// The provider's URL.
    pub url: String,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Msg {
    /// "I am at `url`": the receiver adds the sender as a peer.
    Hello {
        /// The sender's URL.
        url: String,
    },
    /// A search.
    Query {
        /// The query id, unique per search.
        qid: u64,
        /// Milliseconds the sender waits for the answer.
        budget_ms: u32,
        /// What is searched.
        key: Key,
        /// URLs of the nodes the query went through, the sender's last.
        history: Vec<String>,
    },
    /// The answer to a query: every hit found below the receiver.
    Hits {
        /// The query id.
        qid: u64,
        /// The hits.
        hits: Vec<Hit>,
    },
    /// A refusal or failure of query `id` or request `id`.
    Error {
        /// The qid or request id.
        id: u64,
        /// The code (see [`super::code`]).
        code: u32,
        /// Its message.
        message: String,
    },
    /// Make the receiver download `key` into its share.
    Fetch {
        /// Request id.
        req: u64,
        /// The receiver's secret.
        secret: Bytes,
        /// What to fetch.
        key: Key,
    },
    /// A [`Msg::Fetch`] succeeded.
    Fetched {
        /// Request id.
        req: u64,
        /// The stored file.
        info: FileInfo,
    },
    /// Ask for the manifest of a file.
    GetManifest {
        /// Request id.
        req: u64,
        /// The content hash.
        hash: Hash,
        /// The chunk size wanted.
        chunk_size: u32,
    },
    /// Per-chunk hashes of a file.
    Manifest {
        /// Request id.
        req: u64,
        /// File size.
        size: u64,
        /// Chunk size the hashes are over.
        chunk_size: u32,
        /// SHA-256 of every chunk, in order.
        chunks: Vec<Hash>,
    },
    /// Ask for one chunk.
    Get {
        /// Request id.
        req: u64,
        /// The content hash.
        hash: Hash,
        /// Chunk index.
        index: u32,
        /// Chunk size.
        chunk_size: u32,
    },
    /// One chunk.
    Chunk {
        /// Request id.
        req: u64,
        /// Chunk index.
        index: u32,
        /// The bytes.
        data: Bytes,
    },
}

fn put_str(b: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(bytes.len() as u16);
    b.put_slice(bytes);
}

fn put_key(b: &mut BytesMut, k: &Key) {
    match k {
        Key::Name(n) => {
            b.put_u8(0);
            put_str(b, n);
        }
        Key::Hash(h) => {
            b.put_u8(1);
            b.put_slice(&h.0);
        }
    }
}

impl Msg {
    /// Encodes the message as one frame.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Msg::Hello { url } => {
                b.put_u8(1);
                put_str(&mut b, url);
            }
            Msg::Query {
                qid,
                budget_ms,
                key,
                history,
            } => {
                b.put_u8(2);
                b.put_u64(*qid);
                b.put_u32(*budget_ms);
                put_key(&mut b, key);
                let n = history.len().min(255);
                b.put_u8(n as u8);
                for u in &history[..n] {
                    put_str(&mut b, u);
                }
            }
            Msg::Hits { qid, hits } => {
                b.put_u8(3);
                b.put_u64(*qid);
                let n = hits.len().min(u16::MAX as usize);
                b.put_u16(n as u16);
                for h in &hits[..n] {
                    put_str(&mut b, &h.info.name);
                    b.put_u64(h.info.size);
                    b.put_slice(&h.info.hash.0);
                    put_str(&mut b, &h.url);
                }
            }
            Msg::Error { id, code, message } => {
                b.put_u8(4);
                b.put_u64(*id);
                b.put_u32(*code);
                put_str(&mut b, message);
            }
            Msg::Fetch { req, secret, key } => {
                b.put_u8(5);
                b.put_u64(*req);
                let s = &secret[..secret.len().min(u16::MAX as usize)];
                b.put_u16(s.len() as u16);
                b.put_slice(s);
                put_key(&mut b, key);
            }
            Msg::Fetched { req, info } => {
                b.put_u8(6);
                b.put_u64(*req);
                put_str(&mut b, &info.name);
                b.put_u64(info.size);
                b.put_slice(&info.hash.0);
            }
            Msg::GetManifest {
                req,
                hash,
                chunk_size,
            } => {
                b.put_u8(7);
                b.put_u64(*req);
                b.put_slice(&hash.0);
                b.put_u32(*chunk_size);
            }
            Msg::Manifest {
                req,
                size,
                chunk_size,
                chunks,
            } => {
                b.reserve(chunks.len() * 32 + 32);
                b.put_u8(8);
                b.put_u64(*req);
                b.put_u64(*size);
                b.put_u32(*chunk_size);
                b.put_u32(chunks.len() as u32);
                for c in chunks {
                    b.put_slice(&c.0);
                }
            }
            Msg::Get {
                req,
                hash,
                index,
                chunk_size,
            } => {
                b.put_u8(9);
                b.put_u64(*req);
                b.put_slice(&hash.0);
                b.put_u32(*index);
                b.put_u32(*chunk_size);
            }
            Msg::Chunk { req, index, data } => {
                b.reserve(data.len() + 13);
                b.put_u8(10);
                b.put_u64(*req);
                b.put_u32(*index);
                b.put_slice(data);
            }
        }
        b.freeze()
    }

    /// Decodes one frame; `None` for anything malformed.
    pub fn decode(frame: &Bytes) -> Option<Msg> {
        let mut r = Reader { b: frame, at: 0 };
        let msg = match r.u8()? {
            1 => Msg::Hello { url: r.str()? },
            2 => {
                let qid = r.u64()?;
                let budget_ms = r.u32()?;
                let key = r.key()?;
                let n = r.u8()?;
                let history = (0..n).map(|_| r.str()).collect::<Option<_>>()?;
                Msg::Query {
                    qid,
                    budget_ms,
                    key,
                    history,
                }
            }
            3 => {
                let qid = r.u64()?;
                let n = r.u16()?;
                let mut hits = Vec::with_capacity(usize::from(n).min(1024));
                for _ in 0..n {
                    let name = r.str()?;
                    let size = r.u64()?;
                    let hash = r.hash()?;
                    let url = r.str()?;
                    hits.push(Hit {
                        info: FileInfo { name, size, hash },
                        url,
                    });
                }
                Msg::Hits { qid, hits }
            }
            4 => Msg::Error {
                id: r.u64()?,
                code: r.u32()?,
                message: r.str()?,
            },
            5 => {
                let req = r.u64()?;
                let n = r.u16()?;
                let secret = r.take(usize::from(n))?;
                Msg::Fetch {
                    req,
                    secret,
                    key: r.key()?,
                }
            }
            6 => Msg::Fetched {
                req: r.u64()?,
                info: FileInfo {
                    name: r.str()?,
                    size: r.u64()?,
                    hash: r.hash()?,
                },
            },
            7 => Msg::GetManifest {
                req: r.u64()?,
                hash: r.hash()?,
                chunk_size: r.u32()?,
            },
            8 => {
                let req = r.u64()?;
                let size = r.u64()?;
                let chunk_size = r.u32()?;
                let n = r.u32()? as usize;
                if n > (frame.len() - r.at) / 32 {
                    return None;
                }
                let chunks = (0..n).map(|_| r.hash()).collect::<Option<_>>()?;
                Msg::Manifest {
                    req,
                    size,
                    chunk_size,
                    chunks,
                }
            }
            9 => Msg::Get {
                req: r.u64()?,
                hash: r.hash()?,
                index: r.u32()?,
                chunk_size: r.u32()?,
            },
            10 => {
                let req = r.u64()?;
                let index = r.u32()?;
                let data = frame.slice(r.at..);
                r.at = frame.len();
                Msg::Chunk { req, index, data }
            }
            _ => return None,
        };
        (r.at == frame.len()).then_some(msg)
    }
}

struct Reader<'a> {
    b: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n)?;
        if end > self.b.len() {
            return None;
        }
        let s = self.b.slice(self.at..end);
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?[..].try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?[..].try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?[..].try_into().ok()?))
    }
    fn hash(&mut self) -> Option<Hash> {
        Some(Hash(self.take(32)?[..].try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u16()?;
        String::from_utf8(self.take(usize::from(n))?.to_vec()).ok()
    }
    fn key(&mut self) -> Option<Key> {
        match self.u8()? {
            0 => Some(Key::Name(self.str()?)),
            1 => Some(Key::Hash(self.hash()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let h = Hash::of(b"x");
        let msgs = [
            Msg::Hello {
                url: "tcp://a:1".into(),
            },
            Msg::Query {
                qid: 7,
                budget_ms: 900,
                key: Key::Name("f.txt".into()),
                history: vec!["u1".into(), "u2".into()],
            },
            Msg::Hits {
                qid: 7,
                hits: vec![Hit {
                    info: FileInfo {
                        name: "f".into(),
                        size: 3,
                        hash: h,
                    },
                    url: "u".into(),
                }],
            },
            Msg::Error {
                id: 1,
                code: 100,
                message: "Could not handle the query".into(),
            },
            Msg::Fetch {
                req: 2,
                secret: Bytes::from_static(b"s"),
                key: Key::Hash(h),
            },
            Msg::Manifest {
                req: 3,
                size: 10,
                chunk_size: 4,
                chunks: vec![h, h, h],
            },
            Msg::Get {
                req: 4,
                hash: h,
                index: 2,
                chunk_size: 4,
            },
            Msg::Chunk {
                req: 4,
                index: 2,
                data: Bytes::from_static(b"ab"),
            },
        ];
        for m in msgs {
            let f = m.encode();
            assert_eq!(Msg::decode(&f), Some(m.clone()));
            if !matches!(m, Msg::Chunk { .. }) {
                assert_eq!(Msg::decode(&f.slice(..f.len() - 1)), None, "{m:?}");
            }
        }
        assert_eq!(Msg::decode(&Bytes::from_static(b"\x63")), None);
    }
}
