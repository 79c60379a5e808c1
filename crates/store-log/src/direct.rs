//! Batches written into a prepared segment's room with `O_DIRECT`: from a buffer of the
//! syncer's own straight to the disk, never through the page cache. Only when asked
//! (`Options::direct_writes`): a record read soon after it was written then comes from the
//! disk (docs/store-log.md has what that cost).
//!
//! Why: a buffered `pwrite` copies each batch into page-cache pages, fresh ones as the log
//! grows. On this project's VM a page the guest has not touched lately costs a fault in the
//! host as well when first written: once the page cache's reused pages ran out (after about
//! 1.4 GB written), a 90 KB `pwrite` took 210-220 µs against 21 µs before, 5 µs per 2 KB event,
//! and the copy was 12.5 % of all the CPU of a 10^6-event bench (docs/PERFORMANCE.md, fourteenth
//! session). A direct write reuses the same few buffers for ever, and leaves the page cache to
//! the readers.
//!
//! A direct write must start and end on a page, from page-aligned memory. A batch starts where
//! the last one ended, mid-page, so the write starts at that page's start with the page's bytes
//! before the batch (kept here as the `tail`: the same bytes as on the disk, written again) and
//! ends with zeros to the end of its last page, as a buffered write into the room does: the
//! next batch writes over them, and the open takes zeros after the last batch as the log's end.
//!
//! Readers keep reading through the page cache: the kernel drops the cached pages a direct
//! write covers once it completes, so a read after the batch is applied (which is when its
//! records can be found) reads what was written; every frame's checksum stands behind that. A
//! write that does not fit in the room (a growing segment, or a batch past a prepared one's
//! end) goes through the page cache as before, and where the file system refuses `O_DIRECT`
//! (tmpfs) every write does. The `fdatasync` after the write is unchanged: with no pages dirty
//! it flushes the disk's cache, which is what makes the write durable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What a direct write is aligned to (memory, offset and length): a page, a multiple of every
/// block size the disks here have (as the preparer's writes, prepared.rs).
pub const ALIGN: u64 = 4096;

/// The bytes of a segment's partial last page (the page starts at the segment's length rounded
/// down to [`ALIGN`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The page's bytes up to the segment's length (fewer than [`ALIGN`]).
    pub bytes: Vec<u8>,
}

impl Tail {
    /// The tail of a segment of length `len`, read from `file` (once, when the store opens).
    pub fn read(file: &File, len: u64) -> std::io::Result<Self> {
        let start = len - len % ALIGN;
        let mut bytes = vec![0; (len - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        Ok(Self { bytes })
    }

    /// The tail after `bytes` are written at `at` (the segment's length, where this tail ends).
    pub fn after(&mut self, at: u64, bytes: &[u8]) {
        debug_assert_eq!(at % ALIGN, self.bytes.len() as u64);
        let end = at + bytes.len() as u64;
        let page = end - end % ALIGN;
        if page >= at {
            self.bytes.clear();
            self.bytes.extend_from_slice(&bytes[(page - at) as usize..]);
        } else {
            self.bytes.extend_from_slice(bytes);
        }
        debug_assert!((self.bytes.len() as u64) < ALIGN);
    }
}

/// A segment's `O_DIRECT` handle and the buffer its writes are built in.
pub struct DirectSegment {
    file: File,
    /// Reused for every write; over-allocated by a page so an aligned window fits in it.
    buf: Vec<u8>,
}

impl DirectSegment {
    /// Opens `path` for direct writes; `None` where the file system refuses them.
    pub fn open(path: &Path) -> Option<Self> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        Some(Self {
            file,
            buf: Vec::new(),
        })
    }

    /// Segment `number`'s (from 1) in the segments' directory `log_dir`, if direct writes are
    /// `wanted` and the file system takes them.
    pub fn open_if(wanted: bool, log_dir: &Path, number: u32) -> Option<Self> {
        wanted
            .then(|| Self::open(&log_dir.join(crate::segments::file_name(number))))
            .flatten()
    }

    /// Writes `bytes` at `at` (the segment's length, `tail` its partial last page), with the
    /// tail before them and zeros after them to a page's end, if that ends within `room`
    /// (the file's length). `Ok(false)`: it does not fit; nothing was written.
    pub fn write(
        &mut self,
        tail: &Tail,
        at: u64,
        bytes: &[u8],
        room: u64,
    ) -> std::io::Result<bool> {
        let start = at - at % ALIGN;
        if start + tail.bytes.len() as u64 != at {
            return Err(std::io::Error::other(format!(
                "the kept tail of the segment ({} bytes) does not end at its length {at}",
                tail.bytes.len()
            )));
        }
        let length = (tail.bytes.len() + bytes.len()) as u64;
        let padded = length.next_multiple_of(ALIGN);
        if start + padded > room {
            return Ok(false);
        }
        let padded = padded as usize;
        self.buf.clear();
        // Room for the window at any alignment: nothing below reallocates, so the offset holds.
        self.buf.reserve(padded + ALIGN as usize);
        let offset = self.buf.as_ptr().align_offset(ALIGN as usize);
        if offset >= ALIGN as usize {
            return Ok(false); // cannot be aligned (never for bytes): through the page cache
        }
        self.buf.resize(offset, 0);
        self.buf.extend_from_slice(&tail.bytes);
        self.buf.extend_from_slice(bytes);
        self.buf.resize(offset + padded, 0);
        let window = &self.buf[offset..];
        debug_assert_eq!(window.as_ptr() as usize % ALIGN as usize, 0);
        self.file.write_all_at(window, start)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path, bytes: u64) -> std::path::PathBuf {
        let path = dir.join("0000000002.seg");
        let file = File::create(&path).unwrap();
        file.set_len(bytes).unwrap();
        path
    }

    #[test]
    fn writes_land_where_buffered_ones_would_and_the_tail_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 64 << 10);
        let Some(mut direct) = DirectSegment::open(&path) else {
            return; // a file system without O_DIRECT: every write is buffered
        };
        let mut tail = Tail::default();
        let mut expected = vec![0u8; 64 << 10];
        let mut len = 0u64;
        // Batches of many sizes, across pages and within one.
        for (n, size) in [10usize, 4086, 1, 5000, 3, 8192, 100, 20_000]
            .into_iter()
            .enumerate()
        {
            let bytes: Vec<u8> = (0..size).map(|i| (i + n * 7 + 1) as u8).collect();
            assert!(direct.write(&tail, len, &bytes, 64 << 10).unwrap());
            expected[len as usize..len as usize + size].copy_from_slice(&bytes);
            tail.after(len, &bytes);
            len += size as u64;
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(
                on_disk[..len as usize],
                expected[..len as usize],
                "batch {n}"
            );
            // Zeros after the batch, to its page's end.
            let page_end = len.next_multiple_of(ALIGN) as usize;
            assert!(on_disk[len as usize..page_end].iter().all(|b| *b == 0));
            assert_eq!(tail, Tail::read(&File::open(&path).unwrap(), len).unwrap());
        }
    }

    #[test]
    fn a_write_past_the_room_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment(dir.path(), 8192);
        let Some(mut direct) = DirectSegment::open(&path) else {
            return;
        };
        let tail = Tail::default();
        assert!(!direct.write(&tail, 0, &[1; 8193], 8192).unwrap());
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
        // A tail that is not the segment's is an error, not a write in the wrong place.
        assert!(direct.write(&tail, 10, &[1; 10], 8192).is_err());
    }
}
