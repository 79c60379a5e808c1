//! The sync thread: makes committed batches durable and only then acknowledges them.
//!
//! The writer commits a batch with SQLite at `synchronous=NORMAL` (its WAL frames are written,
//! not synced) and hands it here; this thread calls `fdatasync` on the write-ahead log and, once
//! that returns, publishes the batch as durable and answers its callers. Meanwhile the writer
//! builds and commits the next batch, so a batch's sync no longer stalls the writer. One sync
//! covers every batch committed before it began, so the batches queued while a sync ran share the
//! next one.
//!
//! A failed sync, or a batch the writer could not commit, stops the store for good (fail-stop):
//! the batches before it that this thread syncs are acknowledged, nothing after it is, and a sync
//! is never retried on the same file.
//!
//! Readers can see a committed batch before it is durable: the reads that answer outside callers
//! are held to the durable state (see `SqliteStore`'s reads and `Shared::wait_durable`).

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use marketgov_store::{Error, Receipt};
use tokio::sync::oneshot;

use crate::writer::{Inbound, Tail};
use crate::{FaultInjector, Shared};

/// Committed batches waiting for the sync thread, at most; beyond that the writer waits. One sync
/// covers all of them, so this only bounds how far the writer runs ahead of the disk.
pub const BATCHES_AWAITING_SYNC_MAX: usize = 8;

/// A caller waiting for its commit.
pub(crate) type AckSender = oneshot::Sender<Result<Receipt, Error>>;

/// A batch committed by the writer, not yet synced.
pub(crate) struct Committed {
    /// Its number among the batches made visible (from 1 in this process).
    pub batch: u64,
    /// Each caller with its commit's own result.
    pub acks: Vec<(AckSender, Result<Receipt, Error>)>,
    /// The audit head, pending counts and highest outbox row id after it.
    pub tail: Tail,
    /// Test seam: wait for [`FaultInjector::release`] before syncing it.
    pub hold: bool,
}

/// What the writer hands over, in commit order.
pub(crate) enum ToSync {
    Committed(Committed),
    /// A batch that failed; the store is stopping. Its callers are told, after the batches before
    /// it are settled.
    Failed {
        acks: Vec<AckSender>,
        reason: String,
        /// Committed, so it may be on disk (it is synced like the others, then reported failed).
        committed: bool,
    },
}

pub(crate) struct Syncer {
    /// The write-ahead log, opened for `fdatasync` only (SQLite holds no lock on it).
    pub wal: File,
    /// Tells the writer a sync is done (a batch it holds open may be committed).
    pub wake_writer: SyncSender<Inbound>,
    /// Whether to sync at all (`Sync::Full`); the unsafe settings acknowledge without it.
    pub sync_wal: bool,
    pub shared: Arc<Shared>,
    pub fault: Option<Arc<FaultInjector>>,
}

impl Syncer {
    /// Runs until the writer is gone.
    pub fn run(self, rx: Receiver<ToSync>) {
        // Set once a sync fails or a failed batch arrives: nothing after it is acknowledged.
        let mut failed: Option<String> = None;
        while let Ok(first) = rx.recv() {
            let mut group = Vec::with_capacity(BATCHES_AWAITING_SYNC_MAX);
            group.push(first);
            while group.len() < BATCHES_AWAITING_SYNC_MAX {
                match rx.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) => break,
                }
            }
            self.settle(group, &mut failed);
            // A full queue holds work for the writer anyway; it looks at the durable state after
            // each message.
            let _ = self.wake_writer.try_send(Inbound::Synced);
        }
    }

    /// Syncs once for the whole group, then publishes and answers each batch in order.
    fn settle(&self, group: Vec<ToSync>, failed: &mut Option<String>) {
        if failed.is_none() {
            let hold = group
                .iter()
                .any(|i| matches!(i, ToSync::Committed(c) if c.hold));
            if hold {
                if let Some(f) = &self.fault {
                    f.hold();
                }
            }
            let on_disk = group.iter().any(|i| match i {
                ToSync::Committed(_) => true,
                ToSync::Failed { committed, .. } => *committed,
            });
            if on_disk && self.sync_wal {
                if let Err(e) = self.wal.sync_data() {
                    let reason = format!("sync of the write-ahead log failed: {e}");
                    self.shared.stop(&reason);
                    *failed = Some(reason);
                }
            }
        }
        for item in group {
            match item {
                ToSync::Committed(c) => match failed.as_ref() {
                    None => {
                        // Published before anyone is answered: a caller that reads after its
                        // acknowledgement sees what it wrote.
                        self.publish(&c);
                        for (ack, result) in c.acks {
                            let _ = ack.send(result);
                        }
                    }
                    Some(reason) => {
                        for (ack, _) in c.acks {
                            let _ = ack.send(Err(Error::Stopped {
                                reason: reason.clone(),
                            }));
                        }
                    }
                },
                ToSync::Failed { acks, reason, .. } => {
                    self.shared.stop(&reason);
                    let reason = failed.get_or_insert(reason).clone();
                    for ack in acks {
                        let _ = ack.send(Err(Error::Stopped {
                            reason: reason.clone(),
                        }));
                    }
                }
            }
        }
        self.shared.durable_changed();
    }

    fn publish(&self, c: &Committed) {
        let s = &self.shared;
        s.head_seq.store(c.tail.head.seq, Ordering::SeqCst);
        s.outbox_id_durable
            .store(c.tail.outbox_id_max, Ordering::SeqCst);
        c.tail.pending.publish(s);
        s.commits.fetch_add(c.acks.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.set_durable_batch(c.batch);
    }
}
