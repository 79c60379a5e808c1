//! The segment files: `log/0000000001.seg`, ... in the data directory, each a sequence of whole
//! batches. Only the last is written to; a batch never spans two. Readers share the open files
//! and read frames by location (`pread`).
//!
//! Opening scans every segment batch by batch and applies each to the index, or, after an index
//! kept at a clean close (index_at_close.rs), only the batches after it. What counts as the
//! torn end of the log, and what as damage:
//! - the bytes after the last whole batch of the **last** segment, when they are at most one
//!   batch long and do not form a whole batch (an unfinished `write` when the process or machine
//!   stopped; never acknowledged, since a batch is acknowledged only after its sync and the next
//!   batch is written only after that): cut off, and the cut is synced;
//! - zeros after that in the last segment: the room a prepared segment (prepared.rs) has not
//!   used yet, kept (a torn write is cut off with the room after it). Only one batch's worth of
//!   bytes after the end ([`TORN_BYTES_MAX`]) and [`ROOM_CHECKED_BYTES`] beyond it are read:
//!   damage that wipes more than a whole batch of the last segment and leaves zeros is taken
//!   for its end (as PostgreSQL takes a WAL's first bad record for its end);
//! - anything else that does not check out (a bad frame inside a whole batch, a batch followed by
//!   more data, a short batch in an earlier segment, records that do not follow the log): the
//!   store refuses to open with [`Error::Corrupt`] naming the segment and offset.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use marketgov_store::Error;

use crate::frame::{self, Bad, Record, BEGIN_FRAME_BYTES};
use crate::index::{Index, Loc};

/// A new segment is started when the current one has grown past this.
pub const SEGMENT_BYTES_MAX: u64 = 256 << 20;
/// One batch's bytes at most (the writer closes a batch before it grows past this).
pub const BATCH_BYTES_MAX: u64 = 32 << 20;
/// Bytes after the last whole batch that may be a torn write: one batch and its header.
pub const TORN_BYTES_MAX: u64 = BATCH_BYTES_MAX + BEGIN_FRAME_BYTES as u64;
/// Bytes past [`TORN_BYTES_MAX`] after the end checked to be zeros at open: more data there is
/// damage, not a torn write.
pub const ROOM_CHECKED_BYTES: u64 = 1 << 20;

/// The segments' directory inside the data directory.
pub fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub fn file_name(number: u32) -> String {
    format!("{number:010}.seg")
}

/// The open segments, shared by the writer and the readers.
#[derive(Debug, Default)]
pub struct Segments {
    files: RwLock<Vec<Arc<File>>>,
}

impl Segments {
    pub fn file(&self, segment: u32) -> Result<Arc<File>, Error> {
        let files = self
            .files
            .read()
            .map_err(|_| Error::Storage("segment list poisoned".into()))?;
        files
            .get(segment as usize)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                location: format!("segment {segment}"),
                detail: "an index entry points at a segment that does not exist".into(),
            })
    }

    pub fn push(&self, file: Arc<File>) -> Result<u32, Error> {
        let mut files = self
            .files
            .write()
            .map_err(|_| Error::Storage("segment list poisoned".into()))?;
        files.push(file);
        Ok((files.len() - 1) as u32)
    }

    pub fn len(&self) -> usize {
        self.files.read().map_or(0, |f| f.len())
    }

    /// Reads and checks the frame at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Record, Error> {
        self.read_sized(loc).map(|(r, _)| r)
    }

    /// Reads and checks the frame at `loc`: its record and its size in bytes.
    pub fn read_sized(&self, loc: Loc) -> Result<(Record, usize), Error> {
        let file = self.file(loc.segment())?;
        read_frame(&file, loc)
    }
}

fn corrupt(loc: Loc, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        location: format!("segment {} offset {}", loc.segment() + 1, loc.offset()),
        detail: detail.into(),
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{}: {e}", path.display()))
}

/// Reads one frame at `loc`; a frame that does not check out is corruption.
pub fn read_frame(file: &File, loc: Loc) -> Result<(Record, usize), Error> {
    let mut header = [0u8; frame::FRAME_HEADER_BYTES];
    file.read_exact_at(&mut header, loc.offset())
        .map_err(|e| corrupt(loc, format!("unreadable frame header: {e}")))?;
    let total = frame::frame_length(&header).map_err(|b| corrupt(loc, describe(&b)))?;
    let mut buf = vec![0u8; total];
    file.read_exact_at(&mut buf, loc.offset())
        .map_err(|e| corrupt(loc, format!("unreadable frame: {e}")))?;
    frame::decode(&buf).map_err(|b| corrupt(loc, describe(&b)))
}

fn describe(b: &Bad) -> String {
    match b {
        Bad::Short => "the frame is cut short".into(),
        Bad::Invalid(why) => why.clone(),
    }
}

/// The file of a segment, created (and the directory synced, so its name survives a power loss)
/// if it does not exist.
pub fn create(dir: &Path, number: u32) -> Result<File, Error> {
    let path = dir.join(file_name(number));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))?;
    Ok(file)
}

/// What opening found: the last segment's file and its length (where the next batch goes).
#[derive(Debug)]
pub struct Opened {
    pub last: Arc<File>,
    pub last_len: u64,
    /// Bytes of a torn final batch that were cut off (0: none).
    pub cut_bytes: u64,
}

/// Where the scan of a segment stopped: the end of its last whole batch, the file's length, and
/// what follows the end in the last segment.
struct Scanned {
    end: u64,
    len: u64,
    tail: Tail,
}

/// What follows the last whole batch of the last segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// Nothing, or only zeros (a prepared segment's room).
    Clean,
    /// A torn write, then zeros or the file's end.
    Torn,
}

/// Opens every segment in `dir` (creating the first if there is none), applying each batch to
/// `index` in order.
pub fn open_all(dir: &Path, segments: &Segments, index: &mut Index) -> Result<Opened, Error> {
    let numbers = numbers(dir)?;
    if numbers.is_empty() {
        let file = Arc::new(create(dir, 1)?);
        segments.push(file.clone())?;
        return Ok(Opened {
            last: file,
            last_len: 0,
            cut_bytes: 0,
        });
    }
    // From the first byte of the first segment.
    open_after(dir, segments, &numbers, index, (1, 0)).map(|(opened, _)| opened)
}

/// Opens every segment in `dir` (`numbers`, as [`numbers`] listed them, at least one) for an
/// index that stands for the log up to `from` (segment number, offset: the index kept at close,
/// whose caller has checked that the log still holds it; or nothing, `(1, 0)`), scanning only
/// what follows: the rest of segment `from.0`, then every later one. Answers as [`open_all`]
/// does, with the bytes scanned.
pub fn open_after(
    dir: &Path,
    segments: &Segments,
    numbers: &[u32],
    index: &mut Index,
    from: (u32, u64),
) -> Result<(Opened, u64), Error> {
    let count = numbers.len();
    let mut opened = None;
    let mut scanned = 0u64;
    for &n in numbers {
        let path = dir.join(file_name(n));
        let file = Arc::new(open_file(&path)?);
        let segment = segments.push(file.clone())?;
        let is_last = n as usize == count;
        if n < from.0 {
            continue; // wholly in the kept index, its runs reopened
        }
        let start = if n == from.0 { from.1 } else { 0 };
        let Scanned { end, len, tail } = scan_from(&file, segment, start, is_last, index)?;
        scanned += end - start;
        if !is_last {
            index.close_segment()?;
        } else {
            // A torn write is cut off with any room after it: the segment then grows as an
            // ordinary file until it is closed (simpler than zeroing it, and only after a crash).
            let cut_bytes = match tail {
                Tail::Clean => 0,
                Tail::Torn => {
                    file.set_len(end).map_err(|e| io(&path, e))?;
                    file.sync_all().map_err(|e| io(&path, e))?;
                    len - end
                }
            };
            opened = Some(Opened {
                last: file.clone(),
                last_len: end,
                cut_bytes,
            });
        }
    }
    let opened = opened.ok_or_else(|| Error::Storage("no segment opened".into()))?;
    Ok((opened, scanned))
}

fn open_file(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))
}

/// The numbers of the segments in `dir` (created if needed), in order: 1, 2, ... with none
/// missing.
pub fn numbers(dir: &Path) -> Result<Vec<u32>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        let number: u32 = stem.parse().map_err(|_| Error::Corrupt {
            location: format!("{}/{name}", dir.display()),
            detail: "not a segment name".into(),
        })?;
        numbers.push(number);
    }
    numbers.sort_unstable();
    for (i, n) in numbers.iter().enumerate() {
        if *n as usize != i + 1 {
            return Err(Error::Corrupt {
                location: dir.display().to_string(),
                detail: format!("segment {} is missing", i + 1),
            });
        }
    }
    Ok(numbers)
}

/// Scans one segment from the batch that starts at `start`, applying its whole batches;
/// returns where its last whole batch ends, the file's length and what follows.
fn scan_from(
    file: &File,
    segment: u32,
    start: u64,
    is_last: bool,
    index: &mut Index,
) -> Result<Scanned, Error> {
    let len = file
        .metadata()
        .map_err(|e| Error::Storage(format!("segment {}: {e}", segment + 1)))?
        .len();
    let mut pos = start;
    let mut buf = Vec::new();
    while pos < len {
        let at = Loc::new(segment, pos);
        match read_batch(file, at, len, &mut buf) {
            Ok(()) => {}
            Err(damage) => {
                // Only the final, unfinished write of the log may be cut off: nothing whole
                // may follow it.
                if is_last && damage.torn {
                    if let Some(tail) = tail_after(file, pos, len)? {
                        return Ok(Scanned {
                            end: pos,
                            len,
                            tail,
                        });
                    }
                }
                return Err(corrupt(at, damage.detail));
            }
        }
        apply_batch(&buf, segment, pos, index)?;
        pos += buf.len() as u64;
    }
    Ok(Scanned {
        end: pos,
        len,
        tail: Tail::Clean,
    })
}

/// What follows the last whole batch at `pos` of the last segment (`len` bytes long), if it can
/// be the log's end: zeros, or a torn write (at most one batch of bytes, no whole `Begin` frame
/// after `pos`: the next batch is written only after the one before it is synced) followed by
/// zeros. `None`: anything else, which is damage.
fn tail_after(file: &File, pos: u64, len: u64) -> Result<Option<Tail>, Error> {
    let unreadable = |e| Error::Storage(format!("reading the end of the log: {e}"));
    let window_end = len.min(pos + TORN_BYTES_MAX);
    if !zeros_in(file, window_end, len.min(window_end + ROOM_CHECKED_BYTES)).map_err(unreadable)? {
        return Ok(None);
    }
    let mut window = vec![0u8; (window_end - pos) as usize];
    file.read_exact_at(&mut window, pos).map_err(unreadable)?;
    if window.iter().all(|b| *b == 0) {
        return Ok(Some(Tail::Clean));
    }
    if begins_within(&window) {
        return Ok(None);
    }
    Ok(Some(Tail::Torn))
}

/// Whether `file` holds only zeros from `from` to `to`.
fn zeros_in(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut bytes = vec![0u8; to.saturating_sub(from) as usize];
    file.read_exact_at(&mut bytes, from)?;
    Ok(bytes.iter().all(|b| *b == 0))
}

/// Whether a whole `Begin` frame starts anywhere in `tail` after its first byte.
fn begins_within(tail: &[u8]) -> bool {
    // A Begin frame's length field is fixed: only where it is found is a decode tried.
    let begin_length = ((BEGIN_FRAME_BYTES - frame::FRAME_HEADER_BYTES) as u32).to_le_bytes();
    (1..tail.len()).any(|at| {
        tail[at..].starts_with(&begin_length)
            && matches!(frame::decode(&tail[at..]), Ok((Record::Begin { .. }, _)))
    })
}

struct Damage {
    /// Whether it looks like an unfinished final write (nothing whole after it).
    torn: bool,
    detail: String,
}

/// Reads the whole batch at `at` into `buf`, checking every frame.
fn read_batch(file: &File, at: Loc, len: u64, buf: &mut Vec<u8>) -> Result<(), Damage> {
    let pos = at.offset();
    let left = len - pos;
    let torn = |detail: String| Damage { torn: true, detail };
    if left < BEGIN_FRAME_BYTES as u64 {
        return Err(torn("a batch header cut short".into()));
    }
    buf.clear();
    buf.resize(BEGIN_FRAME_BYTES, 0);
    file.read_exact_at(buf, pos)
        .map_err(|e| torn(format!("unreadable: {e}")))?;
    let (batch, length) = match frame::decode(buf) {
        Ok((Record::Begin { batch, length }, _)) => (batch, length),
        Ok((other, _)) => {
            return Err(torn(format!("a batch starts with {other:?}")));
        }
        Err(b) => return Err(torn(format!("batch header: {}", describe(&b)))),
    };
    if length > BATCH_BYTES_MAX {
        return Err(torn(format!("batch {batch} claims {length} bytes")));
    }
    let whole = BEGIN_FRAME_BYTES as u64 + length;
    if whole > left {
        return Err(torn(format!("batch {batch} is cut short")));
    }
    buf.resize(whole as usize, 0);
    file.read_exact_at(
        &mut buf[BEGIN_FRAME_BYTES..],
        pos + BEGIN_FRAME_BYTES as u64,
    )
    .map_err(|e| torn(format!("unreadable: {e}")))?;
    // A whole batch that is the last thing in the file (or followed only by a prepared room's
    // zeros) may still be an unfinished write whose pages did not all reach the disk; one with
    // more after it was synced before the next began.
    // Asked only of a damaged batch: reading what follows every batch would make the scan read
    // the log many times over.
    let last_in_file = || {
        whole == left
            || zeros_in(
                file,
                pos + whole,
                (pos + TORN_BYTES_MAX + ROOM_CHECKED_BYTES).min(pos + left),
            )
            .unwrap_or(false)
    };
    let mut off = BEGIN_FRAME_BYTES;
    let mut ended = false;
    while off < buf.len() {
        match frame::decode(&buf[off..]) {
            Ok((Record::End { batch: b, .. }, n)) => {
                if b != batch {
                    return Err(Damage {
                        torn: last_in_file(),
                        detail: format!("batch {batch} closed as batch {b}"),
                    });
                }
                off += n;
                ended = off == buf.len();
                break;
            }
            Ok((_, n)) => off += n,
            Err(b) => {
                return Err(Damage {
                    torn: last_in_file(),
                    detail: format!(
                        "batch {batch}, frame at {}: {}",
                        pos + off as u64,
                        describe(&b)
                    ),
                })
            }
        }
    }
    if !ended {
        return Err(Damage {
            torn: last_in_file(),
            detail: format!("batch {batch} does not end with its End frame"),
        });
    }
    Ok(())
}

/// Applies a checked batch (`buf`, found at `pos`) to the index.
fn apply_batch(buf: &[u8], segment: u32, pos: u64, index: &mut Index) -> Result<(), Error> {
    let mut off = 0usize;
    while off < buf.len() {
        let loc = Loc::new(segment, pos + off as u64);
        let (record, n) = frame::decode(&buf[off..]).map_err(|b| corrupt(loc, describe(&b)))?;
        if let Record::Begin { batch, .. } = &record {
            if *batch != index.batch + 1 {
                return Err(corrupt(
                    loc,
                    format!("batch {batch} follows batch {}", index.batch),
                ));
            }
        }
        index.apply(&record, loc).map_err(|e| corrupt(loc, e.0))?;
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` zeros (sparse) with `bytes` written at `at`.
    fn file_with(len: u64, writes: &[(u64, &[u8])]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("t.seg"))
            .unwrap();
        file.set_len(len).unwrap();
        for (at, bytes) in writes {
            file.write_all_at(bytes, *at).unwrap();
        }
        (dir, file)
    }

    fn begin_frame(batch: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        frame::encode(&Record::Begin { batch, length: 9 }, &mut buf);
        buf
    }

    #[test]
    fn what_follows_the_end_of_a_prepared_segment_is_told_apart() {
        let pos = 1000;
        let len = pos + TORN_BYTES_MAX + 2 * ROOM_CHECKED_BYTES;
        // Only zeros: the room, kept.
        let (_d, f) = file_with(len, &[]);
        assert_eq!(tail_after(&f, pos, len).unwrap(), Some(Tail::Clean));
        // A torn write, then zeros: cut off.
        let (_d, f) = file_with(len, &[(pos, &[7u8; 300])]);
        assert_eq!(tail_after(&f, pos, len).unwrap(), Some(Tail::Torn));
        // A whole Begin frame after the torn bytes: damage followed by a batch.
        let (_d, f) = file_with(len, &[(pos, &[7u8; 3]), (pos + 3, &begin_frame(5))]);
        assert_eq!(tail_after(&f, pos, len).unwrap(), None);
        // Data past one batch of the end, where only a room's zeros can be: damage.
        let far = pos + TORN_BYTES_MAX + 10;
        let (_d, f) = file_with(len, &[(far, &[1u8])]);
        assert_eq!(tail_after(&f, pos, len).unwrap(), None);
        // Beyond what is checked, not read (see the module's note).
        let beyond = pos + TORN_BYTES_MAX + ROOM_CHECKED_BYTES + 10;
        let (_d, f) = file_with(len, &[(beyond, &[1u8])]);
        assert_eq!(tail_after(&f, pos, len).unwrap(), Some(Tail::Clean));
    }
}
