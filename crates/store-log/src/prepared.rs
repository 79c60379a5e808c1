//! Segments prepared before they are used: a file written full of zeros and synced, so that the
//! batches later written into it overwrite blocks the file system has already allocated, in a
//! file whose size it already knows. Each batch's `fdatasync` then flushes the batch's own pages
//! and nothing else. Appending to a growing file makes every sync write the inode (its new size)
//! and the extent tree too: on this machine's disk a 66 KB `pwrite` and `fdatasync` took 0.19 ms
//! into a prepared file against 0.4-0.6 ms appended, at a third of the kernel's CPU
//! (docs/PERFORMANCE.md, twelfth session). Preallocating with `fallocate` is not enough: its
//! unwritten extents are converted, a metadata change again, by the first write into them.
//!
//! Segment `n` holds [`capacity`]`(n)` bytes: 16 MiB for the first, doubling up to the store's
//! `segment_bytes_max` (256 MiB by default), so a young store is soon writing into prepared
//! files without having prepared a large one first. The first segment is an ordinary growing
//! file: a store that never writes [`PREPARE_AFTER_BYTES_MAX`] prepares nothing.
//!
//! The syncer asks for segment `n + 1` once segment `n` holds [`prepare_after`] bytes. A thread
//! writes `n+1.seg.prep` in chunks of [`CHUNK_BYTES`], each synced at once, so the page cache
//! never holds much of it dirty and the syncer's own syncs do not queue behind one large
//! flush; between chunks it rests as long as the chunk took, leaving the disk half free for the
//! log. At the roll the syncer takes the file if it is ready (renamed to `n+1.seg`, the
//! directory synced) or else starts an ordinary file, as before, and the preparation is
//! abandoned. Either way the log is the same: preparing changes how fast a sync is, never what
//! the log holds or where a segment ends.
//!
//! What it means for the open (segments.rs): the last segment may end in zeros after its last
//! batch. Zeros never decode as a frame (a frame's length is never 0), so they read as the end of
//! the log.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::direct;

/// The first segment's capacity; each later one doubles it, up to `segment_bytes_max`.
pub const FIRST_SEGMENT_BYTES: u64 = 16 << 20;

/// Bytes a segment holds before the next one is prepared, at most (less for small segments:
/// see [`prepare_after`]).
pub const PREPARE_AFTER_BYTES_MAX: u64 = 2 << 20;

/// Zeros written, then synced, at a time.
pub const CHUNK_BYTES: usize = 512 << 10;

/// What `O_DIRECT` writes are aligned to (buffer, offset and length): see [`direct::ALIGN`].
const DIRECT_ALIGN: usize = direct::ALIGN as usize;

/// The capacity of segment `number` (from 1): the writer starts the next segment when a batch
/// would take this one past it (a batch larger than a whole segment still goes in one).
pub fn capacity(number: u32, segment_bytes_max: u64) -> u64 {
    let doublings = number.saturating_sub(1).min(32);
    FIRST_SEGMENT_BYTES
        .saturating_mul(1 << doublings)
        .min(segment_bytes_max)
        .max(1)
}

/// Bytes segment `number` holds once the next one should be prepared: an eighth of it, at most
/// [`PREPARE_AFTER_BYTES_MAX`].
pub fn prepare_after(number: u32, segment_bytes_max: u64) -> u64 {
    (capacity(number, segment_bytes_max) / 8).min(PREPARE_AFTER_BYTES_MAX)
}

/// The name a segment has while it is prepared.
pub fn prep_name(number: u32) -> String {
    format!("{}.prep", crate::segments::file_name(number))
}

/// Removes preparations left by an earlier process (a crash, or a close before the roll): a
/// `.prep` file is never part of the log.
pub fn remove_leftovers(dir: &Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".seg.prep"))
        {
            std::fs::remove_file(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// What the preparing thread is asked for and has done.
#[derive(Debug, Default)]
struct State {
    /// The segment to prepare and its size; cleared when the syncer gives up on it.
    wanted: Option<(u32, u64)>,
    /// A prepared segment, synced and ready to be renamed into the log.
    ready: Option<(u32, File)>,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Segments started prepared, and started as ordinary files (not ready), since the open.
    taken: AtomicU64,
    missed: AtomicU64,
}

/// The preparing thread, owned by the syncer.
#[derive(Debug)]
pub struct Preparer {
    dir: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the preparation did since the open, seen from outside the syncer.
#[derive(Debug, Clone)]
pub struct Watch(Arc<Shared>);

impl Watch {
    /// Segments started prepared, and started as ordinary files because theirs was not ready.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.0.taken.load(Ordering::Relaxed),
            self.0.missed.load(Ordering::Relaxed),
        )
    }

    /// Waits at most `timeout` for a prepared segment to be ready: its number.
    pub fn wait_ready(&self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.state.lock().ok()?;
        loop {
            if let Some((n, _)) = &state.ready {
                return Some(*n);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self.0.changed.wait_timeout(state, left).ok()?.0;
        }
    }
}

impl Preparer {
    /// Starts the thread (it waits until asked).
    pub fn start(dir: &Path) -> Result<Self, String> {
        let shared = Arc::new(Shared::default());
        let (thread_dir, thread_shared) = (dir.to_path_buf(), shared.clone());
        let thread = std::thread::Builder::new()
            .name("marketgov-store-prepare".into())
            .spawn(move || run(&thread_dir, &thread_shared))
            .map_err(|e| format!("cannot start the segment preparer: {e}"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            shared,
            thread: Some(thread),
        })
    }

    /// A view of what it does, for the store's stats and tests.
    pub fn watch(&self) -> Watch {
        Watch(self.shared.clone())
    }

    /// Asks for segment `number` of `bytes` (again: nothing changes).
    pub fn want(&self, number: u32, bytes: u64) {
        let Ok(mut state) = self.shared.state.lock() else {
            return;
        };
        let ready = state.ready.as_ref().is_some_and(|(n, _)| *n == number);
        if state.wanted.is_some_and(|(n, _)| n == number) || ready {
            return;
        }
        state.wanted = Some((number, bytes));
        self.shared.changed.notify_all();
    }

    /// Segment `number` prepared, now named as a segment of the log (its directory synced), or
    /// `None`: not ready (its preparation is given up), and the caller starts an ordinary file.
    pub fn take(&mut self, number: u32) -> Result<Option<File>, String> {
        let ready = {
            let Ok(mut state) = self.shared.state.lock() else {
                return Ok(None);
            };
            state.wanted = None;
            self.shared.changed.notify_all();
            match state.ready.take() {
                Some((n, file)) if n == number => Some(file),
                // Another number: left over from before a failed roll; its file is removed.
                Some((n, _)) => {
                    let _ = std::fs::remove_file(self.dir.join(prep_name(n)));
                    None
                }
                None => None,
            }
        };
        let Some(file) = ready else {
            self.shared.missed.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let (from, to) = (
            self.dir.join(prep_name(number)),
            self.dir.join(crate::segments::file_name(number)),
        );
        if to.exists() {
            return Err(format!("{} exists already", to.display()));
        }
        std::fs::rename(&from, &to).map_err(|e| format!("{}: {e}", from.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        self.shared.taken.fetch_add(1, Ordering::Relaxed);
        Ok(Some(file))
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stop = true;
            state.wanted = None;
            if let Some((n, _)) = state.ready.take() {
                let _ = std::fs::remove_file(self.dir.join(prep_name(n)));
            }
            self.shared.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: waits for a wish, prepares it, offers it; gives up when the wish changes.
fn run(dir: &Path, shared: &Shared) {
    // Room to align a whole chunk for `O_DIRECT`.
    let zeros = vec![0u8; CHUNK_BYTES + DIRECT_ALIGN];
    loop {
        let (number, bytes) = {
            let Ok(mut state) = shared.state.lock() else {
                return;
            };
            loop {
                if state.stop {
                    return;
                }
                let ready = state.ready.as_ref().map(|(n, _)| *n);
                match state.wanted {
                    Some((n, bytes)) if ready != Some(n) => break (n, bytes),
                    _ => {}
                }
                state = match shared.changed.wait(state) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        };
        let path = dir.join(prep_name(number));
        let still_wanted = || {
            shared
                .state
                .lock()
                .is_ok_and(|s| !s.stop && s.wanted.is_some_and(|(n, _)| n == number))
        };
        match prepare(&path, bytes, &zeros, still_wanted) {
            Ok(Some(file)) => {
                if let Ok(mut state) = shared.state.lock() {
                    if !state.stop && state.wanted.is_some_and(|(n, _)| n == number) {
                        if let Some((old, _)) = state.ready.replace((number, file)) {
                            let _ = std::fs::remove_file(dir.join(prep_name(old)));
                        }
                        shared.changed.notify_all();
                        continue;
                    }
                }
                let _ = std::fs::remove_file(&path);
            }
            // Given up, or the disk refused (full, say): the roll starts an ordinary file.
            Ok(None) | Err(_) => {
                let _ = std::fs::remove_file(&path);
                if let Ok(mut state) = shared.state.lock() {
                    if state.wanted.is_some_and(|(n, _)| n == number) {
                        state.wanted = None;
                    }
                }
            }
        }
    }
}

/// Writes `bytes` zeros to a new file at `path` chunk by chunk, each synced, resting between
/// chunks as long as each took. `None`: `still_wanted` said no between chunks.
///
/// The whole blocks are written with `O_DIRECT` where the file system takes it: from one
/// buffer of zeros straight to the disk, without copying each chunk into the page cache and
/// writing it back (CPU the log's own work needs on a small machine); the rest, and everything
/// where `O_DIRECT` is refused, through the page cache.
fn prepare(
    path: &Path,
    bytes: u64,
    zeros: &[u8],
    still_wanted: impl Fn() -> bool,
) -> std::io::Result<Option<File>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok();
    let aligned = zeros
        .get(zeros.as_ptr().align_offset(DIRECT_ALIGN)..)
        .map(|z| &z[..z.len() - z.len() % DIRECT_ALIGN]);
    let mut at = 0u64;
    while at < bytes {
        if !still_wanted() {
            return Ok(None);
        }
        let started = Instant::now();
        let left = bytes - at;
        match (&direct, aligned) {
            (Some(direct), Some(aligned)) if left >= DIRECT_ALIGN as u64 => {
                let n = left.min(aligned.len() as u64) as usize;
                let n = n - n % DIRECT_ALIGN;
                direct.write_all_at(&aligned[..n], at)?;
                direct.sync_data()?;
                at += n as u64;
            }
            _ => {
                let n = left.min(CHUNK_BYTES as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                file.sync_data()?;
                at += n as u64;
            }
        }
        std::thread::sleep(started.elapsed());
    }
    // The size and the allocation are metadata: synced once, here, not by the log's syncs.
    file.sync_all()?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_double_from_the_first_up_to_the_maximum() {
        let max = 256 << 20;
        let caps: Vec<u64> = (1..=7).map(|n| capacity(n, max) >> 20).collect();
        assert_eq!(caps, [16, 32, 64, 128, 256, 256, 256]);
        assert_eq!(capacity(u32::MAX, max), max);
        assert_eq!(capacity(3, 4 << 10), 4 << 10);
        assert_eq!(prepare_after(1, max), 2 << 20);
        assert_eq!(prepare_after(1, 4 << 10), 512);
    }

    #[test]
    fn a_wanted_segment_is_prepared_full_of_zeros_and_taken_under_its_log_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Preparer::start(dir.path()).unwrap();
        let bytes = CHUNK_BYTES as u64 + 12_345;
        p.want(2, bytes);
        assert_eq!(p.watch().wait_ready(Duration::from_secs(60)), Some(2));
        let file = p.take(2).unwrap().expect("ready");
        assert_eq!(file.metadata().unwrap().len(), bytes);
        let on_disk = std::fs::read(dir.path().join(crate::segments::file_name(2))).unwrap();
        assert_eq!(on_disk.len() as u64, bytes);
        assert!(on_disk.iter().all(|b| *b == 0));
        assert!(!dir.path().join(prep_name(2)).exists());
        assert_eq!(p.watch().counts(), (1, 0));
    }

    #[test]
    fn a_segment_not_ready_at_its_roll_is_given_up_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Preparer::start(dir.path()).unwrap();
        // Far more than can be written before the take below.
        p.want(5, 64 * CHUNK_BYTES as u64);
        assert!(p.take(5).unwrap().is_none());
        assert_eq!(p.watch().counts(), (0, 1));
        drop(p);
        assert!(!dir.path().join(prep_name(5)).exists());
        assert!(!dir.path().join(crate::segments::file_name(5)).exists());
    }

    #[test]
    fn leftover_preparations_are_removed_and_segments_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(prep_name(3)), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join(crate::segments::file_name(1)), [1u8; 10]).unwrap();
        remove_leftovers(dir.path()).unwrap();
        assert!(!dir.path().join(prep_name(3)).exists());
        assert!(dir.path().join(crate::segments::file_name(1)).exists());
    }
}
