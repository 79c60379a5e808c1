//! Pieces every backend needs the same way: the fail-stop flag, the queueing of a commit for a
//! writer thread, the audit-entry check on read, and the test seam that fails or holds a chosen
//! batch.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Condvar, Mutex};

use marketgov_audit::{entry_hash, Entry};

use crate::Error;

/// Why a store stopped (fail-stop): set once, the first reason kept.
#[derive(Debug, Default)]
pub struct StopFlag {
    reason: Mutex<Option<String>>,
    /// Whether `reason` holds one: read without the lock on every commit.
    is_stopped: AtomicBool,
}

impl StopFlag {
    /// Stops for `reason` (a later reason does not replace the first).
    pub fn stop(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert_with(|| reason.to_owned());
        }
        self.is_stopped.store(true, Ordering::SeqCst);
    }

    /// Why it stopped, if it did.
    pub fn reason(&self) -> Option<String> {
        // The common case, asked for every commit, takes no lock and copies no string.
        if !self.is_stopped.load(Ordering::SeqCst) {
            return None;
        }
        match self.reason.lock() {
            Ok(r) => r.clone(),
            Err(_) => Some("writer state poisoned".into()),
        }
    }
}

/// Hands `item` (a commit) to a writer's bounded queue, counting it in `queued`: a full queue is
/// [`Error::Overloaded`], a gone writer [`Error::Stopped`].
pub fn enqueue<T>(
    tx: &SyncSender<T>,
    queued: &AtomicUsize,
    queue_max: usize,
    item: T,
) -> Result<(), Error> {
    queued.fetch_add(1, Ordering::Relaxed);
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            queued.fetch_sub(1, Ordering::Relaxed);
            Err(Error::Overloaded { queued: queue_max })
        }
        Err(TrySendError::Disconnected(_)) => {
            queued.fetch_sub(1, Ordering::Relaxed);
            Err(Error::Stopped {
                reason: "writer gone".into(),
            })
        }
    }
}

/// Checks a stored audit entry against its hash.
pub fn check_entry(e: &Entry) -> Result<(), Error> {
    if entry_hash(&e.prev_hash, e.seq, &e.bytes) == e.hash {
        Ok(())
    } else {
        Err(Error::Corrupt {
            location: format!("audit entry {}", e.seq),
            detail: "hash mismatch: the entry was changed".into(),
        })
    }
}

/// Test seam: fails (or holds) the `n`-th batch a backend writes (counting from 1), in a mode
/// of the backend's own (`M`).
#[derive(Debug)]
pub struct BatchFault<M> {
    fail_batch: u64,
    mode: M,
    batches: AtomicU64,
    /// Whether a held batch may go on.
    released: Mutex<bool>,
    /// Whether a batch is being held now.
    holding: AtomicBool,
    release: Condvar,
}

impl<M: Copy> BatchFault<M> {
    /// Fails batch number `fail_batch` in `mode`.
    pub fn fail_batch(fail_batch: u64, mode: M) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            fail_batch,
            mode,
            batches: AtomicU64::new(0),
            released: Mutex::new(false),
            holding: AtomicBool::new(false),
            release: Condvar::new(),
        })
    }

    /// Lets a held batch go on (now, or when it comes).
    pub fn release(&self) {
        if let Ok(mut released) = self.released.lock() {
            *released = true;
            self.release.notify_all();
        }
    }

    /// Whether a batch is being held now.
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::SeqCst)
    }

    /// For the backend: blocks the calling thread until [`BatchFault::release`].
    pub fn hold(&self) {
        let Ok(mut released) = self.released.lock() else {
            return;
        };
        self.holding.store(true, Ordering::SeqCst);
        while !*released {
            match self.release.wait(released) {
                Ok(r) => released = r,
                Err(_) => break,
            }
        }
        self.holding.store(false, Ordering::SeqCst);
    }

    /// For the backend: counts one more batch; its fault, if it is the chosen one.
    pub fn next_batch(&self) -> Option<M> {
        let n = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        (n == self.fail_batch).then_some(self.mode)
    }
}
