//! One download: the manifest, then chunks from every provider of the
//! hash under a credit window, each verified, into the share's `.part`.
//!
//! Pure state: the node feeds it messages and time, it writes requests
//! into the outbox and reports what happened ([`Progress`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;

use super::msg::Msg;
use super::{code, FileInfo, Hash, P2pError, Share};
use crate::transport::{NodeId, Outbox, Time};

/// Who asked for the download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// [`P2pNode::fetch`](super::P2pNode::fetch).
    Local,
    /// A FETCH message: `(peer, req)`.
    Remote(NodeId, u64),
}

#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) node: NodeId,
    pub(crate) url: String,
    bad: bool,
    /// Bad only for chunks that did not match the manifest in use (which
    /// may itself be the lie): forgiven when another manifest is tried.
    blamed: bool,
    /// Its manifest was asked for.
    manifest_tried: bool,
    strikes: u32,
    inflight: usize,
    pub(crate) delivered: u64,
}

/// What a call did to the download.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Still going.
    Running,
    /// Stored and verified.
    Done(FileInfo),
    /// Given up, with a wire code.
    Failed(u32),
}

/// What the node must count after a call.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Peers that failed (timeout, corrupt chunk).
    pub(crate) failed: Vec<NodeId>,
    /// Peers that delivered.
    pub(crate) succeeded: Vec<NodeId>,
    pub(crate) corrupt: u64,
    pub(crate) timeouts: u64,
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
    pub(crate) path_refused: bool,
    /// Manifests given up on (the download failed against them while
    /// another provider's manifest was left to try).
    pub(crate) bad_manifests: u64,
}

#[derive(Debug)]
enum Phase {
    Manifest { provider: usize, deadline: Time },
    Chunks,
}

/// A download in progress.
#[derive(Debug)]
pub(crate) struct Transfer {
    pub(crate) id: u64,
    pub(crate) origin: Origin,
    pub(crate) started: Time,
    pub(crate) info: FileInfo,
    pub(crate) providers: Vec<Provider>,
    pub(crate) resumed: u64,
    pub(crate) bytes: u64,
    phase: Phase,
    chunk_size: u32,
    want_chunk: u32,
    chunks: Vec<Hash>,
    missing: BTreeSet<u32>,
    inflight: BTreeMap<u32, (usize, Time)>,
    credit: usize,
    timeout: Duration,
    strikes: u32,
    last_refusal: Option<u32>,
    /// The provider whose manifest the chunks are checked against.
    manifest_from: Option<usize>,
}

impl Transfer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        origin: Origin,
        now: Time,
        info: FileInfo,
        providers: Vec<(NodeId, String)>,
        chunk_size: u32,
        credit: usize,
        timeout: Duration,
        strikes: u32,
    ) -> Self {
        let providers = providers
            .into_iter()
            .map(|(node, url)| Provider {
                node,
                url,
                bad: false,
                blamed: false,
                manifest_tried: false,
                strikes: 0,
                inflight: 0,
                delivered: 0,
            })
            .collect();
        Transfer {
            id,
            origin,
            started: now,
            info,
            providers,
            resumed: 0,
            bytes: 0,
            phase: Phase::Manifest {
                provider: usize::MAX,
                deadline: now,
            },
            chunk_size,
            want_chunk: chunk_size,
            chunks: Vec::new(),
            missing: BTreeSet::new(),
            inflight: BTreeMap::new(),
            credit,
            timeout,
            strikes,
            last_refusal: None,
            manifest_from: None,
        }
    }

    /// Bytes stored so far (resumed included) and the total.
    pub(crate) fn progress(&self) -> (u64, u64) {
        let missing: u64 = self.missing.iter().map(|i| self.chunk_len(*i)).sum();
        let pending = if matches!(self.phase, Phase::Manifest { .. }) {
            self.info.size
        } else {
            missing
        };
        (self.info.size - pending.min(self.info.size), self.info.size)
    }

    /// Asks the next good provider not asked yet for the manifest.
    pub(crate) fn start(&mut self, now: Time, out: &mut Outbox) -> Progress {
        let Some(p) = (0..self.providers.len())
            .find(|p| !self.providers[*p].bad && !self.providers[*p].manifest_tried)
        else {
            return Progress::Failed(self.last_refusal.unwrap_or(code::TRANSFER_FAILED));
        };
        self.providers[p].manifest_tried = true;
        out.send(
            self.providers[p].node,
            Msg::GetManifest {
                req: self.id,
                hash: self.info.hash,
                chunk_size: self.want_chunk,
            }
            .encode(),
        );
        self.phase = Phase::Manifest {
            provider: p,
            deadline: now + self.timeout,
        };
        Progress::Running
    }

    /// The download failed against the manifest in use (no provider's
    /// chunks match it any more, or the whole file's hash is wrong): if
    /// another provider's manifest is left to try, the manifest's provider
    /// is marked bad, the providers blamed only against it are forgiven,
    /// and the download starts over from that manifest (the verified
    /// chunks of the `.part` that it confirms are kept). Each manifest is
    /// tried once, so this ends.
    fn retry_manifest(
        &mut self,
        now: Time,
        failure: u32,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        let Some(m) = self.manifest_from else {
            return Progress::Failed(failure);
        };
        let left = self
            .providers
            .iter()
            .enumerate()
            .any(|(i, p)| i != m && !p.manifest_tried && (!p.bad || p.blamed));
        if !left {
            return Progress::Failed(failure);
        }
        report.bad_manifests += 1;
        report.failed.push(self.providers[m].node);
        for (i, p) in self.providers.iter_mut().enumerate() {
            if i == m {
                p.bad = true;
                p.blamed = false;
            } else if p.blamed {
                p.bad = false;
                p.blamed = false;
            }
            p.inflight = 0;
            // What was delivered against the lie is not what is stored.
            p.delivered = 0;
        }
        self.manifest_from = None;
        self.inflight.clear();
        self.missing.clear();
        self.chunks.clear();
        self.phase = Phase::Manifest {
            provider: usize::MAX,
            deadline: now,
        };
        self.start(now, out)
    }

    fn provider_of(&self, node: NodeId) -> Option<usize> {
        self.providers.iter().position(|p| p.node == node)
    }

    fn chunk_len(&self, i: u32) -> u64 {
        let cs = u64::from(self.chunk_size);
        let start = u64::from(i) * cs;
        cs.min(self.info.size.saturating_sub(start))
    }

    /// The manifest arrived from `from`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_manifest(
        &mut self,
        now: Time,
        from: NodeId,
        size: u64,
        chunk_size: u32,
        chunks: Vec<Hash>,
        share: &mut dyn Share,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        let Phase::Manifest { provider, .. } = self.phase else {
            return Progress::Running;
        };
        if self.providers.get(provider).map(|p| p.node) != Some(from) {
            return Progress::Running;
        }
        let n = size.div_ceil(u64::from(chunk_size.max(1)));
        if size != self.info.size
            || chunk_size == 0
            || chunk_size > self.want_chunk
            || n != chunks.len() as u64
        {
            self.providers[provider].bad = true;
            report.failed.push(from);
            return self.start(now, out);
        }
        self.manifest_from = Some(provider);
        self.chunk_size = chunk_size;
        self.chunks = chunks;
        let resume = match share.begin(&self.info.name, chunk_size, &self.chunks) {
            Ok(r) => r,
            Err(P2pError::BadPath) => {
                report.path_refused = true;
                return Progress::Failed(code::UNHANDLED);
            }
            Err(_) => return Progress::Failed(code::TRANSFER_FAILED),
        };
        self.resumed = resume;
        let first = (resume / u64::from(chunk_size)) as u32;
        self.missing = (first..self.chunks.len() as u32).collect();
        self.phase = Phase::Chunks;
        self.pump(now, share, out, report)
    }

    /// Fills the credit window.
    fn pump(
        &mut self,
        now: Time,
        share: &mut dyn Share,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        if self.missing.is_empty() && self.inflight.is_empty() {
            return match share.finish(&self.info.name, &self.info.hash) {
                Ok(info) => Progress::Done(info),
                Err(P2pError::Corrupt) => {
                    self.retry_manifest(now, code::TRANSFER_FAILED, out, report)
                }
                Err(_) => Progress::Failed(code::TRANSFER_FAILED),
            };
        }
        let todo: Vec<u32> = self
            .missing
            .iter()
            .filter(|i| !self.inflight.contains_key(i))
            .take(self.credit.saturating_sub(self.inflight.len()))
            .copied()
            .collect();
        for i in todo {
            let Some(p) = (0..self.providers.len())
                .filter(|p| !self.providers[*p].bad)
                .min_by_key(|p| self.providers[*p].inflight)
            else {
                break;
            };
            self.providers[p].inflight += 1;
            self.inflight.insert(i, (p, now + self.timeout));
            out.send(
                self.providers[p].node,
                Msg::Get {
                    req: self.id,
                    hash: self.info.hash,
                    index: i,
                    chunk_size: self.chunk_size,
                }
                .encode(),
            );
        }
        if self.inflight.is_empty() {
            let failure = self.last_refusal.unwrap_or(code::TRANSFER_FAILED);
            return self.retry_manifest(now, failure, out, report);
        }
        Progress::Running
    }

    fn release(&mut self, index: u32) -> Option<usize> {
        let (p, _) = self.inflight.remove(&index)?;
        self.providers[p].inflight = self.providers[p].inflight.saturating_sub(1);
        Some(p)
    }

    /// A chunk arrived.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_chunk(
        &mut self,
        now: Time,
        from: NodeId,
        index: u32,
        data: Bytes,
        share: &mut dyn Share,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        match self.inflight.get(&index) {
            Some((p, _)) if self.providers[*p].node == from => {}
            _ => return Progress::Running,
        }
        let p = self.release(index).unwrap_or(0);
        let ok = data.len() as u64 == self.chunk_len(index)
            && self.chunks.get(index as usize) == Some(&Hash::of(&data));
        if !ok {
            report.corrupt += 1;
            report.failed.push(from);
            self.providers[p].bad = true;
            // Against this manifest; another may show it honest.
            self.providers[p].blamed = self.manifest_from != Some(p);
            return self.pump(now, share, out, report);
        }
        let offset = u64::from(index) * u64::from(self.chunk_size);
        if share.write(&self.info.name, offset, &data).is_err() {
            return Progress::Failed(code::TRANSFER_FAILED);
        }
        self.missing.remove(&index);
        self.providers[p].strikes = 0;
        self.providers[p].delivered += data.len() as u64;
        self.bytes += data.len() as u64;
        report.chunks += 1;
        report.bytes += data.len() as u64;
        report.succeeded.push(from);
        self.pump(now, share, out, report)
    }

    /// A provider refused (an ERROR frame for this download).
    pub(crate) fn on_error(
        &mut self,
        now: Time,
        from: NodeId,
        code: u32,
        share: &mut dyn Share,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        let Some(p) = self.provider_of(from) else {
            return Progress::Running;
        };
        self.providers[p].bad = true;
        self.last_refusal = Some(code);
        let lost: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, (q, _))| *q == p)
            .map(|(i, _)| *i)
            .collect();
        for i in lost {
            self.release(i);
        }
        match self.phase {
            Phase::Manifest { provider, .. } if provider == p => self.start(now, out),
            Phase::Manifest { .. } => Progress::Running,
            Phase::Chunks => self.pump(now, share, out, report),
        }
    }

    /// The earliest deadline.
    pub(crate) fn deadline(&self) -> Option<Time> {
        match self.phase {
            Phase::Manifest { deadline, .. } => Some(deadline),
            Phase::Chunks => self.inflight.values().map(|(_, d)| *d).min(),
        }
    }

    /// Handles the deadlines that passed.
    pub(crate) fn on_timeout(
        &mut self,
        now: Time,
        share: &mut dyn Share,
        out: &mut Outbox,
        report: &mut Report,
    ) -> Progress {
        if let Phase::Manifest { provider, deadline } = self.phase {
            if deadline > now {
                return Progress::Running;
            }
            report.timeouts += 1;
            if let Some(p) = self.providers.get_mut(provider) {
                p.bad = true;
                report.failed.push(p.node);
            }
            return self.start(now, out);
        }
        let late: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(i, _)| *i)
            .collect();
        if late.is_empty() {
            return Progress::Running;
        }
        for i in late {
            if let Some(p) = self.release(i) {
                report.timeouts += 1;
                let prov = &mut self.providers[p];
                prov.strikes += 1;
                report.failed.push(prov.node);
                if prov.strikes >= self.strikes {
                    prov.bad = true;
                    prov.blamed = false;
                }
            }
        }
        self.pump(now, share, out, report)
    }
}
