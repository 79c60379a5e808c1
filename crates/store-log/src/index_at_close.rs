//! The index kept at a clean stop: `log/index.at-close`, written when the store closes cleanly
//! (its last batch synced and applied, the writer gone), read by the next open instead of
//! scanning every segment. A restart after a crash still scans; checkpoints at each segment's
//! close, which would cover that too, are the next step (docs/store-log.md, "Not built yet",
//! item 1).
//!
//! It stands for the log as it was closed: it records the segments' count, the last one's
//! length and a CRC32C of the bytes before that length, and the id of the hash keys it was built
//! under. The log only grows, so the kept index stays good for every later open of the same log:
//! an open checks that the log still holds those bytes where they were, reads the index, and
//! scans only what was written after it (nothing after a clean stop; after a crash, what the
//! process wrote since its open). The run files it refers to are synced before it is written
//! and each is checked against its footer when reopened. Anything that does not check out (no
//! file, a damaged one, another log, a run removed or damaged since) means the full scan, as
//! before; a file that cannot be used is removed.
//!
//! Layout: magic, the body, a CRC32C of the body. The body: the checks above, then the index
//! part by part (`Index` less what follows from the rest: the timers by deadline and the
//! pending effects by next attempt are rebuilt from the timers and the pending effects).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::Path;

use marketgov_audit::{Checkpoint, Head};
use marketgov_store::Error;

use crate::frame::{Bad, In, Out, Sink};
use crate::hash_keys::HashKeys;
use crate::index::{EffectIndex, Index, Loc};

/// The file's name in the segments' directory.
pub const FILE: &str = "index.at-close";
const MAGIC: &[u8; 8] = b"MGIDXC02";
/// The last segment's bytes whose CRC32C the file records (fewer if the segment is shorter).
const TAIL_BYTES: u64 = 4096;

/// Where the log ended when the index was kept, to be found again in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogShape {
    pub segments: u32,
    pub last_len: u64,
    /// CRC32C of the last segment's bytes before `last_len` (at most [`TAIL_BYTES`] of them).
    pub tail_crc: u32,
}

impl LogShape {
    /// The shape of the log whose last segment is `last` (`segments` in all), its last batch
    /// ending at `last_len` (a prepared segment's file goes on with zeros).
    pub fn of(segments: u32, last: &File, last_len: u64) -> Result<Self, Error> {
        Ok(Self {
            segments,
            last_len,
            tail_crc: tail_crc(last, last_len)?,
        })
    }

    /// Whether the log whose segment number `self.segments` is `file` (the log having at
    /// least that many) still holds this shape's bytes where they were.
    pub fn is_prefix_of(&self, file: &File) -> Result<bool, Error> {
        let len = file
            .metadata()
            .map_err(|e| Error::Storage(format!("a segment: {e}")))?
            .len();
        Ok(len >= self.last_len && tail_crc(file, self.last_len)? == self.tail_crc)
    }
}

/// CRC32C of `file`'s bytes before `end`, at most [`TAIL_BYTES`] of them.
fn tail_crc(file: &File, end: u64) -> Result<u32, Error> {
    let from = end.saturating_sub(TAIL_BYTES);
    let mut tail = vec![0u8; (end - from) as usize];
    file.read_exact_at(&mut tail, from)
        .map_err(|e| Error::Storage(format!("the end of the log: {e}")))?;
    Ok(crc32c::crc32c(&tail))
}

/// Writes the index kept at close for the log of `shape`, after syncing every run file in
/// `dir`: beside, synced, renamed, the directory synced.
pub fn write(dir: &Path, index: &Index, shape: LogShape, keys: &HashKeys) -> Result<(), Error> {
    let io = |what: &str, e: std::io::Error| Error::Storage(format!("{what}: {e}"));
    for entry in std::fs::read_dir(dir).map_err(|e| io("listing the runs", e))? {
        let path = entry.map_err(|e| io("listing the runs", e))?.path();
        let run = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "idem" | "effect" | "names"));
        if run {
            File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| io(&path.display().to_string(), e))?;
        }
    }
    let tmp = dir.join(format!("{FILE}.tmp"));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io("writing the index kept at close", e))?;
    // The magic, the body, its CRC, written as they are made: at 10^7 events the body is about
    // 91 MB, which as one growing buffer had raised the bench's peak memory by 78 MiB at close.
    let mut out = Spill {
        file,
        buf: Vec::with_capacity(SPILL_BYTES),
        crc: 0,
        error: None,
    };
    out.file
        .write_all(MAGIC)
        .map_err(|e| io("writing the index kept at close", e))?;
    save(&mut Out(&mut out), index, shape, keys.id());
    out.flush();
    let Spill {
        mut file,
        crc,
        error,
        ..
    } = out;
    if let Some(e) = error {
        return Err(io("writing the index kept at close", e));
    }
    file.write_all(&crc.to_le_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, dir.join(FILE)))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| io("writing the index kept at close", e))
}

/// Bytes the index kept at close is written in, at most at a time.
const SPILL_BYTES: usize = 1 << 20;

/// The body of the index kept at close on its way to the file, a chunk at a time, with its
/// CRC32C so far. `Out` cannot fail, so the first write error is kept and answered at the end.
struct Spill {
    file: File,
    buf: Vec<u8>,
    crc: u32,
    error: Option<std::io::Error>,
}

impl Spill {
    fn flush(&mut self) {
        if self.error.is_none() {
            self.crc = crc32c::crc32c_append(self.crc, &self.buf);
            if let Err(e) = self.file.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }
}

impl Sink for Spill {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= SPILL_BYTES {
            self.flush();
        }
    }
}

/// Reads the index kept at close if it stands for a prefix of the log in `dir` (segment
/// numbers `numbers`), and answers it with where the log went on after it (its last segment's
/// number and the length it had), or why it cannot be used (then the caller scans every
/// segment; an unusable file is removed).
pub fn read(
    dir: &Path,
    numbers: &[u32],
    keys: &HashKeys,
    effects_in_memory_max: usize,
) -> Result<(Index, LogShape), String> {
    let path = dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("no index was kept at a clean close".into())
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let kept = parse(dir, &bytes, numbers, keys, effects_in_memory_max);
    if kept.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    kept
}

fn parse(
    dir: &Path,
    bytes: &[u8],
    numbers: &[u32],
    keys: &HashKeys,
    effects_in_memory_max: usize,
) -> Result<(Index, LogShape), String> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("the index kept at close is not of this version".into());
    }
    let (body, crc) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err("the index kept at close does not match its checksum".into());
    }
    let mut i = In::new(body);
    let kept = LogShape {
        segments: i.u32().map_err(describe)?,
        last_len: i.u64().map_err(describe)?,
        tail_crc: i.u32().map_err(describe)?,
    };
    let keys_id = i.u64().map_err(describe)?;
    if keys_id != keys.id() {
        return Err("the index kept at close was built under other hash keys".into());
    }
    let another = || format!("the index kept at close is of another log ({kept:?})");
    let last = numbers
        .get((kept.segments as usize).wrapping_sub(1))
        .filter(|n| **n == kept.segments)
        .ok_or_else(another)?;
    let file =
        File::open(dir.join(crate::segments::file_name(*last))).map_err(|e| e.to_string())?;
    if !kept.is_prefix_of(&file).map_err(|e| e.to_string())? {
        return Err(another());
    }
    let mut index = Index::new(dir, effects_in_memory_max, keys);
    restore(&mut i, &mut index).map_err(|e| e.to_string())?;
    if !i.done() {
        return Err("the index kept at close has bytes past its end".into());
    }
    Ok((index, kept))
}

/// The error for damage found in `part` of the index kept at close (each table reads its own).
pub(crate) fn damaged(part: &str) -> impl Fn(Bad) -> Error + Copy + '_ {
    move |b| Error::Corrupt {
        location: format!("{part} of the index kept at close"),
        detail: match b {
            Bad::Short => "cut short".into(),
            Bad::Invalid(why) => why,
        },
    }
}

fn describe(b: Bad) -> String {
    match b {
        Bad::Short => "the index kept at close is cut short".into(),
        Bad::Invalid(why) => format!("the index kept at close: {why}"),
    }
}

fn save<S: Sink>(o: &mut Out<S>, index: &Index, shape: LogShape, keys_id: u64) {
    o.u32(shape.segments);
    o.u64(shape.last_len);
    o.u32(shape.tail_crc);
    o.u64(keys_id);
    o.u64(index.head.seq);
    o.hash(&index.head.hash);
    o.u64(index.batch);
    o.u64(index.seq_marks.len() as u64);
    for loc in &index.seq_marks {
        o.u64(loc.raw());
    }
    index.streams.save(o);
    index.keys.save(o);
    o.u64(index.keys_live);
    o.u64(index.keys_frontier.raw());
    o.u64(index.keys_removed.len() as u64);
    for loc in &index.keys_removed {
        o.u64(loc.raw());
    }
    debug_assert_eq!(index.timers.len(), index.timers_due.len());
    o.u64(index.timers.len() as u64);
    for (hash, (due, loc)) in index.timers.iter() {
        o.u64((*hash >> 64) as u64);
        o.u64(*hash as u64);
        o.i64(*due);
        o.u64(loc.raw());
    }
    index.effects.save(o);
    debug_assert_eq!(index.pending.len(), index.effects_ready.len());
    o.u64(index.pending.len() as u64);
    for (loc, e) in index.pending.iter() {
        o.u64(loc.raw());
        o.u32(e.attempts);
        o.i64(e.next_attempt_ms);
    }
    o.u64(index.effects_pending);
    match index.spilled_from {
        Some(loc) => {
            o.u8(1);
            o.u64(loc.raw());
        }
        None => o.u8(0),
    }
    o.u64(index.spilled_settled.len() as u64);
    for loc in &index.spilled_settled {
        o.u64(loc.raw());
    }
    o.i64(index.effect_id_max);
    o.u64(index.versioned.len() as u64);
    for ((table, key), (version, loc)) in &index.versioned {
        o.u8(*table);
        o.str(key);
        o.u64(*version);
        o.u64(loc.raw());
    }
    o.u64(index.checkpoints.len() as u64);
    for c in &index.checkpoints {
        o.u64(c.seq);
        o.str(&c.hash);
        o.str(&c.signature);
    }
}

fn restore(i: &mut In, index: &mut Index) -> Result<(), Error> {
    let bad = damaged("the body");
    let loc = |i: &mut In| i.u64().map(Loc::from_raw);
    index.head = Head {
        seq: i.u64().map_err(bad)?,
        hash: i.hash().map_err(bad)?,
    };
    index.batch = i.u64().map_err(bad)?;
    for _ in 0..i.count(8).map_err(bad)? {
        index.seq_marks.push(loc(i).map_err(bad)?);
    }
    index.streams.restore(i)?;
    index.keys.restore(i)?;
    index.keys_live = i.u64().map_err(bad)?;
    index.keys_frontier = loc(i).map_err(bad)?;
    for _ in 0..i.count(8).map_err(bad)? {
        index.keys_removed.insert(loc(i).map_err(bad)?);
    }
    for _ in 0..i.count(32).map_err(bad)? {
        let hash = (u128::from(i.u64().map_err(bad)?) << 64) | u128::from(i.u64().map_err(bad)?);
        let due = i.i64().map_err(bad)?;
        let at = loc(i).map_err(bad)?;
        index.timers.insert(hash, (due, at));
        index.timers_due.insert((due, at));
    }
    index.effects.restore(i)?;
    for _ in 0..i.count(20).map_err(bad)? {
        let at = loc(i).map_err(bad)?;
        let e = EffectIndex {
            attempts: i.u32().map_err(bad)?,
            next_attempt_ms: i.i64().map_err(bad)?,
        };
        index.pending.insert(at, e);
        index.effects_ready.insert((e.next_attempt_ms, at));
    }
    index.effects_pending = i.u64().map_err(bad)?;
    index.spilled_from = match i.u8().map_err(bad)? {
        0 => None,
        _ => Some(loc(i).map_err(bad)?),
    };
    for _ in 0..i.count(8).map_err(bad)? {
        index.spilled_settled.insert(loc(i).map_err(bad)?);
    }
    index.effect_id_max = i.i64().map_err(bad)?;
    for _ in 0..i.count(21).map_err(bad)? {
        let table = i.u8().map_err(bad)?;
        let key = i.str().map_err(bad)?;
        let version = i.u64().map_err(bad)?;
        let at = loc(i).map_err(bad)?;
        index.versioned.insert((table, key), (version, at));
    }
    for _ in 0..i.count(16).map_err(bad)? {
        index.checkpoints.push(Checkpoint {
            seq: i.u64().map_err(bad)?,
            hash: i.str().map_err(bad)?,
            signature: i.str().map_err(bad)?,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_body_spilled_over_many_chunks_is_the_bytes_and_the_crc_of_one_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spilled");
        let mut spill = Spill {
            file: File::create(&path).unwrap(),
            buf: Vec::new(),
            crc: 0,
            error: None,
        };
        // Pieces of every size through the same `Out` as the index, past several chunks.
        let mut whole = Vec::new();
        let mut o = Out(&mut spill);
        for n in 0..40_000u64 {
            let piece: Vec<u8> = (0..n % 300).map(|i| (i * 31 + n) as u8).collect();
            o.u64(n);
            o.bytes(&piece);
            Out(&mut whole).u64(n);
            Out(&mut whole).bytes(&piece);
        }
        spill.flush();
        assert!(whole.len() > 3 * SPILL_BYTES, "{}", whole.len());
        assert!(spill.error.is_none());
        assert_eq!(spill.crc, crc32c::crc32c(&whole));
        drop(spill);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }
}
