//! The Black Box's pure core: which worker gets each message, when a
//! worker's batch is handed over, what a full queue does with it, and which
//! messages are refused as oversized.
//!
//! Black Box (Guide ch. 5): the step between "one thread reads" and "N
//! workers work". This module contains no networking code and reads no
//! clock: the I/O task in [`subscriber`](super) feeds it each received
//! message and the room left in a worker's queue, and only does what it
//! answers (try_send, wait for room, or count a drop).

use std::num::NonZeroUsize;

use zeromq::ZmqMessage;

use super::config::Overflow;
use super::shard::Sharder;

/// Messages for one worker, handed over together.
#[derive(Debug)]
pub struct WorkerBatch {
    /// The worker (0..n) the messages belong to.
    pub worker: usize,
    /// The messages, in the order they were received.
    pub messages: Vec<ZmqMessage>,
}

/// What became of one received message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Dispatched {
    /// Added to its worker's pending batch.
    Held,
    /// Added, and that worker's batch is full: hand it over now
    /// ([`Dispatcher::route`]).
    Full(WorkerBatch),
    /// Refused: the message (all frames) exceeds the size limit.
    Oversized {
        /// The message's size, all frames.
        bytes: usize,
    },
}

/// How to hand a batch over, given the room in its worker's queue.
#[derive(Debug)]
#[non_exhaustive]
pub enum Handoff {
    /// There is room: queue it without waiting (`try_send`).
    Send(WorkerBatch),
    /// No room and [`Overflow::Block`]: wait until there is.
    Wait(WorkerBatch),
    /// No room and [`Overflow::DropNewest`]: drop it, counted per worker.
    Drop(WorkerBatch),
}

/// One I/O task's dispatcher: a pending batch per worker.
#[derive(Debug)]
pub struct Dispatcher {
    sharder: Sharder,
    pending: Vec<Vec<ZmqMessage>>,
    batch_max: usize,
    max_message_bytes: usize,
    overflow: Overflow,
}

impl Dispatcher {
    /// A dispatcher over `sharder`'s workers that hands batches over at
    /// `batch_max` messages, refuses messages above `max_message_bytes`
    /// (all frames) and applies `overflow` at a full queue.
    pub fn new(
        sharder: Sharder,
        batch_max: NonZeroUsize,
        max_message_bytes: usize,
        overflow: Overflow,
    ) -> Self {
        let pending = (0..sharder.workers()).map(|_| Vec::new()).collect();
        Self {
            sharder,
            pending,
            batch_max: batch_max.get(),
            max_message_bytes,
            overflow,
        }
    }

    /// Takes one received message.
    #[inline]
    pub fn on_message(&mut self, msg: ZmqMessage) -> Dispatched {
        let bytes = size(&msg);
        if bytes > self.max_message_bytes {
            return Dispatched::Oversized { bytes };
        }
        let w = self.sharder.worker_for(&msg);
        let pending = &mut self.pending[w];
        pending.push(msg);
        if pending.len() >= self.batch_max {
            return Dispatched::Full(self.take(w));
        }
        Dispatched::Held
    }

    /// Every non-empty pending batch, to hand over when the socket has
    /// nothing more ready (so a quiet stream adds no delay) or when
    /// stopping.
    pub fn flush(&mut self) -> Vec<WorkerBatch> {
        let mut out = Vec::new();
        for w in 0..self.pending.len() {
            if !self.pending[w].is_empty() {
                out.push(self.take(w));
            }
        }
        out
    }

    /// Messages pending, over all workers.
    pub fn pending(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }

    /// How to hand `batch` over when its worker's queue has room for
    /// `room` more batches.
    pub fn route(&self, batch: WorkerBatch, room: usize) -> Handoff {
        match (room, self.overflow) {
            (1.., _) => Handoff::Send(batch),
            (0, Overflow::Block) => Handoff::Wait(batch),
            (0, Overflow::DropNewest) => Handoff::Drop(batch),
        }
    }

    fn take(&mut self, w: usize) -> WorkerBatch {
        let messages = std::mem::replace(&mut self.pending[w], Vec::with_capacity(self.batch_max));
        WorkerBatch {
            worker: w,
            messages,
        }
    }
}

/// A message's size: all frames together.
#[inline]
fn size(msg: &ZmqMessage) -> usize {
    msg.iter().map(|f| f.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::super::shard::ShardKey;
    use super::*;
    use bytes::Bytes;

    fn msg(key: &str, body: usize) -> ZmqMessage {
        ZmqMessage::try_from(vec![
            Bytes::from(key.to_owned()),
            Bytes::from(vec![0u8; body]),
        ])
        .unwrap()
    }

    fn dispatcher(workers: usize, batch: usize, overflow: Overflow) -> Dispatcher {
        let n = |k| NonZeroUsize::new(k).unwrap();
        Dispatcher::new(
            Sharder::new(ShardKey::Topic, n(workers)),
            n(batch),
            100,
            overflow,
        )
    }

    #[test]
    fn a_batch_goes_when_full_and_keeps_the_order_of_one_key() {
        let mut d = dispatcher(4, 3, Overflow::Block);
        assert!(matches!(d.on_message(msg("a", 1)), Dispatched::Held));
        assert!(matches!(d.on_message(msg("a", 2)), Dispatched::Held));
        let Dispatched::Full(b) = d.on_message(msg("a", 3)) else {
            panic!("a batch of 3 is full")
        };
        let sizes: Vec<usize> = b.messages.iter().map(|m| m.get(1).unwrap().len()).collect();
        assert_eq!(sizes, [1, 2, 3]);
        assert_eq!(b.worker, d.sharder.worker_for_key(b"a"));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn flush_hands_over_every_pending_batch_once() {
        let mut d = dispatcher(8, 64, Overflow::Block);
        for k in 0..100 {
            assert!(matches!(
                d.on_message(msg(&format!("k{k}"), 0)),
                Dispatched::Held
            ));
        }
        let batches = d.flush();
        assert_eq!(batches.iter().map(|b| b.messages.len()).sum::<usize>(), 100);
        let mut workers: Vec<usize> = batches.iter().map(|b| b.worker).collect();
        workers.dedup();
        assert_eq!(workers.len(), batches.len(), "one batch per worker");
        assert!(batches.iter().all(|b| !b.messages.is_empty()));
        assert!(d.flush().is_empty());
    }

    #[test]
    fn oversized_messages_are_refused_before_sharding() {
        let mut d = dispatcher(2, 64, Overflow::Block);
        assert!(matches!(d.on_message(msg("k", 99)), Dispatched::Held));
        assert!(matches!(
            d.on_message(msg("kk", 99)),
            Dispatched::Oversized { bytes: 101 }
        ));
        assert_eq!(d.pending(), 1, "the message of exactly 100 bytes is held");
    }

    #[test]
    fn a_full_queue_waits_or_drops_as_configured() {
        let batch = || WorkerBatch {
            worker: 0,
            messages: vec![msg("k", 0)],
        };
        let block = dispatcher(1, 1, Overflow::Block);
        assert!(matches!(block.route(batch(), 2), Handoff::Send(_)));
        assert!(matches!(block.route(batch(), 0), Handoff::Wait(_)));
        let drop = dispatcher(1, 1, Overflow::DropNewest);
        assert!(matches!(drop.route(batch(), 1), Handoff::Send(_)));
        assert!(matches!(drop.route(batch(), 0), Handoff::Drop(b) if b.messages.len() == 1));
    }
}
