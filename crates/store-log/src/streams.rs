//! The streams: per stream, only its last version, where its last event is and where its latest
//! snapshot is (24 bytes), under a keyed hash of its name (102 of its 128 bits are used: 6
//! choose one of 64 maps, 64 are the key, 32 are checked). Each event frame points back
//! at the stream's previous one, so a stream's events are found by walking back from the last
//! (a load walks back to its snapshot; a snapshot is written every few dozen events).
//!
//! Why a hash and not the name: 1,000,000 customers' names would take more memory than the
//! SPEC's whole budget. Two different names with the same 102 bits of SipHash under the
//! store's keys are not expected in the life of any store (about 10^-17 for ten million
//! streams); two that share the 70 bits that place a slot but not the 32 checked (about
//! 10^-7) are told apart, the second kept by its whole name in a small map of its own; and a
//! read never trusts the index alone: every frame read names its stream, and a frame of another
//! stream is answered as corruption, not served.
//!
//! Names are kept for listing by prefix (`Store::streams`), on disk: each closed segment's new
//! streams, sorted, in a name run file beside it (`0000000001.names`), with the first name and
//! CRC32C of each 4 KiB page in memory; the open segment's new names are in memory.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use marketgov_store::Error;

use crate::frame::{Bad, In, Out, Sink};
use crate::hash_keys::KeyedHash128;
use crate::index::Loc;
use crate::keys::write_run_file;
use crate::prehashed::PrehashedMap;

/// Maps the slots are spread over.
const SLOT_MAPS: usize = 64;
/// Bytes per page of a name run (a page holds whole names).
const NAME_PAGE_BYTES: usize = 4096;

/// What the index keeps of a stream (24 bytes).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamSlot {
    /// 32 more bits of the name's hash, beyond the 70 that place the slot.
    check: u32,
    /// Its last version (0: no events yet). A stream holds at most `u32::MAX` events.
    pub version: u32,
    /// Where its last event is (`raw() == 0`: none; no event is at the log's first byte).
    pub last: Loc,
    /// Where its latest snapshot is (`raw() == 0`: none).
    pub snapshot: Loc,
}

impl StreamSlot {
    pub fn last_event(&self) -> Option<Loc> {
        (self.last.raw() != 0).then_some(self.last)
    }
    pub fn latest_snapshot(&self) -> Option<Loc> {
        (self.snapshot.raw() != 0).then_some(self.snapshot)
    }
}

#[derive(Debug)]
struct NamePage {
    first: String,
    offset: u64,
    len: u32,
    crc: u32,
}

/// One closed segment's new stream names, sorted, on disk.
#[derive(Debug)]
struct NameRun {
    segment: u32,
    path: PathBuf,
    file: File,
    pages: Vec<NamePage>,
}

/// A name run file ends with its page table (per page: its first name, `u16` length and bytes;
/// its offset, `u64`; its length and CRC32C, `u32` each) and this footer: magic, the page count,
/// the page table's bytes, and a CRC32C of the table and the footer before it, so that the run
/// reopens without reading its names ([`StreamTable::reopen_runs`]).
const NAME_FOOTER_BYTES: usize = 8 + 8 + 8 + 4 + 4;
const NAME_MAGIC: &[u8; 8] = b"MGNRUN01";

impl NameRun {
    /// Reopens the name run of `segment` from its footer (the names are not read).
    fn open(dir: &Path, segment: u32) -> Result<Self, Error> {
        let path = dir.join(format!("{:010}.names", segment + 1));
        let corrupt = |detail: String| Error::Corrupt {
            location: path.display().to_string(),
            detail,
        };
        let unreadable = |e: std::io::Error| corrupt(format!("unreadable: {e}"));
        let file = File::open(&path).map_err(unreadable)?;
        let len = file.metadata().map_err(unreadable)?.len();
        let footer_at = len
            .checked_sub(NAME_FOOTER_BYTES as u64)
            .ok_or_else(|| corrupt("shorter than its footer".into()))?;
        let mut footer = [0u8; NAME_FOOTER_BYTES];
        file.read_exact_at(&mut footer, footer_at)
            .map_err(unreadable)?;
        if &footer[..8] != NAME_MAGIC {
            return Err(corrupt("not a name run of this version".into()));
        }
        let field = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&footer[8 + i * 8..16 + i * 8]);
            u64::from_le_bytes(b)
        };
        let (count, table_bytes) = (field(0), field(1));
        let table_at = footer_at
            .checked_sub(table_bytes)
            .ok_or_else(|| corrupt("its page table does not fit".into()))?;
        let mut table =
            vec![0u8; usize::try_from(table_bytes).map_err(|_| corrupt("too big".into()))?];
        file.read_exact_at(&mut table, table_at)
            .map_err(unreadable)?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&table), &footer[..24]);
        if crc.to_le_bytes() != footer[24..28] {
            return Err(corrupt(
                "the name run's footer does not match its checksum".into(),
            ));
        }
        let mut pages = Vec::new();
        let mut at = 0usize;
        let short = || corrupt("its page table is cut short".into());
        while at < table.len() {
            let n = table
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                .ok_or_else(short)?;
            let first = table
                .get(at + 2..at + 2 + n)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(short)?
                .to_owned();
            let rest = table.get(at + 2 + n..at + 2 + n + 16).ok_or_else(short)?;
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&rest[..8]);
            let page = NamePage {
                first,
                offset: u64::from_le_bytes(offset),
                len: u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]),
                crc: u32::from_le_bytes([rest[12], rest[13], rest[14], rest[15]]),
            };
            if page.offset + u64::from(page.len) > table_at {
                return Err(corrupt("a page lies past the names".into()));
            }
            pages.push(page);
            at += 2 + n + 16;
        }
        if pages.len() as u64 != count {
            return Err(corrupt(format!(
                "{} pages, the footer says {count}",
                pages.len()
            )));
        }
        Ok(Self {
            segment,
            path,
            file,
            pages,
        })
    }

    fn page(&self, p: &NamePage) -> Result<Vec<String>, Error> {
        let mut buf = vec![0u8; p.len as usize];
        let corrupt = |detail: String| Error::Corrupt {
            location: format!("{} offset {}", self.path.display(), p.offset),
            detail,
        };
        self.file
            .read_exact_at(&mut buf, p.offset)
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        if crc32c::crc32c(&buf) != p.crc {
            return Err(corrupt("the name page does not match its checksum".into()));
        }
        let mut names = Vec::new();
        let mut at = 0usize;
        while at < buf.len() {
            let len = buf
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                .ok_or_else(|| corrupt("a name is cut short".into()))?;
            let name = buf
                .get(at + 2..at + 2 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| corrupt("a name is cut short or not UTF-8".into()))?;
            names.push(name.to_owned());
            at += 2 + len;
        }
        Ok(names)
    }

    /// Names from `from` on that start with `prefix`, at most `limit`, in order.
    fn list(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        out: &mut Vec<String>,
    ) -> Result<(), Error> {
        let start = self
            .pages
            .partition_point(|p| p.first.as_str() < from)
            .saturating_sub(1);
        let mut taken = 0;
        for p in &self.pages[start..] {
            if p.first.as_str() > from && !p.first.starts_with(prefix) {
                return Ok(());
            }
            for name in self.page(p)? {
                if name.as_str() < from {
                    continue;
                }
                if !name.starts_with(prefix) || taken >= limit {
                    return Ok(());
                }
                out.push(name);
                taken += 1;
            }
        }
        Ok(())
    }
}

/// A 128-bit SipHash of names under the store's keys (hash_keys.rs; see the module doc for why
/// that stands in for the name).
#[derive(Debug, Clone, Copy)]
pub struct NameHash(pub KeyedHash128);

impl NameHash {
    pub fn of<T: std::hash::Hash + ?Sized>(&self, name: &T) -> u128 {
        self.0.one(name)
    }
}

/// Every stream of the log.
#[derive(Debug)]
pub struct StreamTable {
    dir: PathBuf,
    hash: NameHash,
    /// The slots, in [`SLOT_MAPS`] maps by 6 bits of the hash (so that no map's growth ever
    /// doubles the memory of all of them at once), keyed by 64 more.
    slots: Vec<PrehashedMap<u64, StreamSlot>>,
    /// Streams whose slot's place was taken by another name, by name.
    overflow: HashMap<String, StreamSlot>,
    /// The open segment's new streams.
    open_names: BTreeSet<String>,
    open_segment: u32,
    runs: Vec<NameRun>,
}

impl StreamTable {
    pub fn new(dir: &Path, hash: NameHash) -> Self {
        Self {
            dir: dir.to_owned(),
            hash,
            slots: (0..SLOT_MAPS).map(|_| PrehashedMap::default()).collect(),
            overflow: HashMap::new(),
            open_names: BTreeSet::new(),
            open_segment: 0,
            runs: Vec::new(),
        }
    }

    /// Which map, the key in it, and the check bits.
    fn place(&self, name: &str) -> (usize, u64, u32) {
        let h = self.hash.of(name);
        (
            (h as usize) % SLOT_MAPS,
            (h >> 64) as u64,
            ((h >> 32) & 0xffff_ffff) as u32,
        )
    }

    pub fn get(&self, name: &str) -> Option<&StreamSlot> {
        let (map, key, check) = self.place(name);
        match self.slots[map].get(&key) {
            Some(slot) if slot.check == check => Some(slot),
            Some(_) => self.overflow.get(name),
            None => None,
        }
    }

    /// The stream's slot, created (and its name recorded for listing) if new. One lookup for a
    /// stream already known (this runs per event applied).
    pub fn get_or_insert(&mut self, name: &str) -> &mut StreamSlot {
        let (map, key, check) = self.place(name);
        let slot = StreamSlot {
            check,
            ..StreamSlot::default()
        };
        let open_names = &mut self.open_names;
        match self.slots[map].entry(key) {
            Entry::Occupied(o) if o.get().check == check => o.into_mut(),
            Entry::Occupied(_) => self.overflow.entry(name.to_owned()).or_insert_with(|| {
                open_names.insert(name.to_owned());
                slot
            }),
            Entry::Vacant(v) => {
                open_names.insert(name.to_owned());
                v.insert(slot)
            }
        }
    }

    /// Bytes of memory held, estimated from capacities: the slots, and the names of the open
    /// segment's new streams and the first name of each page of the runs.
    pub fn memory_bytes(&self) -> u64 {
        let slots: usize = self.slots.iter().map(|m| m.capacity() * (8 + 24 + 1)).sum();
        let overflow: usize = self.overflow.keys().map(|k| k.len() + 24 + 24 + 1).sum();
        let open: usize = self.open_names.iter().map(|n| n.len() + 24 + 16).sum();
        let pages: usize = self
            .runs
            .iter()
            .flat_map(|r| r.pages.iter())
            .map(|p| p.first.len() + 24 + 16)
            .sum();
        (slots + overflow + open + pages) as u64
    }

    /// Names after `after` that start with `prefix`, in order, at most `limit`.
    pub fn list(&self, prefix: &str, after: &str, limit: usize) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        // The least name to consider: the prefix itself, or just after `after`.
        let from = if after >= prefix {
            format!("{after}\0")
        } else {
            prefix.to_owned()
        };
        for run in &self.runs {
            run.list(prefix, &from, limit, &mut out)?;
        }
        out.extend(
            self.open_names
                .range::<str, _>((
                    std::ops::Bound::Included(from.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|n| n.starts_with(prefix))
                .take(limit)
                .cloned(),
        );
        out.sort_unstable();
        out.truncate(limit);
        Ok(out)
    }

    /// The open segment is closed: its new names go to their run file.
    pub fn close_segment(&mut self) -> Result<(), Error> {
        let segment = self.open_segment;
        if !self.open_names.is_empty() {
            let names = std::mem::take(&mut self.open_names);
            let run = self.write_run(segment, names)?;
            self.runs.push(run);
        }
        self.open_segment = segment + 1;
        Ok(())
    }

    fn write_run(&self, segment: u32, names: BTreeSet<String>) -> Result<NameRun, Error> {
        let mut buf = Vec::new();
        let mut pages: Vec<NamePage> = Vec::new();
        let mut page_start = 0usize;
        let mut first: Option<String> = None;
        let close = |buf: &[u8], start: usize, first: String, pages: &mut Vec<NamePage>| {
            pages.push(NamePage {
                first,
                offset: start as u64,
                len: (buf.len() - start) as u32,
                crc: crc32c::crc32c(&buf[start..]),
            });
        };
        for name in names {
            let len = u16::try_from(name.len())
                .map_err(|_| Error::Storage(format!("stream name of {} bytes", name.len())))?;
            if buf.len() - page_start + 2 + name.len() > NAME_PAGE_BYTES {
                if let Some(f) = first.take() {
                    close(&buf, page_start, f, &mut pages);
                }
                page_start = buf.len();
            }
            if first.is_none() {
                first = Some(name.clone());
            }
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
        }
        if let Some(f) = first.take() {
            close(&buf, page_start, f, &mut pages);
        }
        let table_at = buf.len();
        for p in &pages {
            // A name is at most `u16::MAX` bytes (checked above), so its length fits.
            buf.extend_from_slice(&(p.first.len() as u16).to_le_bytes());
            buf.extend_from_slice(p.first.as_bytes());
            buf.extend_from_slice(&p.offset.to_le_bytes());
            buf.extend_from_slice(&p.len.to_le_bytes());
            buf.extend_from_slice(&p.crc.to_le_bytes());
        }
        let table_bytes = (buf.len() - table_at) as u64;
        let footer_at = buf.len();
        buf.extend_from_slice(NAME_MAGIC);
        buf.extend_from_slice(&(pages.len() as u64).to_le_bytes());
        buf.extend_from_slice(&table_bytes.to_le_bytes());
        let crc =
            crc32c::crc32c_append(crc32c::crc32c(&buf[table_at..footer_at]), &buf[footer_at..]);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        let (path, file) = write_run_file(&self.dir, segment, "names", &buf)?;
        Ok(NameRun {
            segment,
            path,
            file,
            pages,
        })
    }

    /// Writes what the table holds in memory, for the index kept at a clean stop
    /// (index_at_close.rs): every slot, the side map, the open segment's new names, and which
    /// closed segments have a name run.
    pub(crate) fn save<S: Sink>(&self, o: &mut Out<S>) {
        for map in &self.slots {
            o.u64(map.len() as u64);
            for (key, slot) in map {
                o.u64(*key);
                save_slot(o, slot);
            }
        }
        o.u64(self.overflow.len() as u64);
        for (name, slot) in &self.overflow {
            o.str(name);
            save_slot(o, slot);
        }
        o.u64(self.open_names.len() as u64);
        for name in &self.open_names {
            o.str(name);
        }
        o.u32(self.open_segment);
        let runs = self.name_run_segments();
        o.u64(runs.len() as u64);
        for segment in runs {
            o.u32(segment);
        }
    }

    /// Reads what [`StreamTable::save`] wrote into this empty table, and reopens its name
    /// runs from their files.
    pub(crate) fn restore(&mut self, i: &mut In) -> Result<(), Error> {
        let bad = crate::index_at_close::damaged("the stream slots");
        for map in &mut self.slots {
            let n = i.count(8 + SLOT_BYTES).map_err(bad)?;
            map.reserve(n);
            for _ in 0..n {
                let key = i.u64().map_err(bad)?;
                map.insert(key, restore_slot(i).map_err(bad)?);
            }
        }
        let n = i.count(4 + SLOT_BYTES).map_err(bad)?;
        for _ in 0..n {
            let name = i.str().map_err(bad)?;
            self.overflow.insert(name, restore_slot(i).map_err(bad)?);
        }
        let n = i.count(4).map_err(bad)?;
        let mut open_names = BTreeSet::new();
        for _ in 0..n {
            open_names.insert(i.str().map_err(bad)?);
        }
        let open_segment = i.u32().map_err(bad)?;
        let n = i.count(4).map_err(bad)?;
        let runs = (0..n)
            .map(|_| i.u32())
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        self.reopen_runs(&runs, open_segment)?;
        self.open_names = open_names;
        Ok(())
    }

    /// The closed segments that have a name run, oldest first (for reopening them).
    pub fn name_run_segments(&self) -> Vec<u32> {
        self.runs.iter().map(|r| r.segment).collect()
    }

    /// Puts back the name runs of `segments` from their files, in a table that has none yet;
    /// new names go on to the segment `open_segment`. A missing or damaged file is named and
    /// nothing is kept.
    pub fn reopen_runs(&mut self, segments: &[u32], open_segment: u32) -> Result<(), Error> {
        if !self.runs.is_empty() || !self.open_names.is_empty() {
            return Err(Error::Storage(
                "name runs are put back only into an empty table".into(),
            ));
        }
        let runs = segments
            .iter()
            .map(|s| NameRun::open(&self.dir, *s))
            .collect::<Result<Vec<_>, _>>()?;
        self.runs = runs;
        self.open_segment = open_segment;
        Ok(())
    }
}

/// A slot's bytes in the index kept at close: check, version, last event, latest snapshot.
const SLOT_BYTES: usize = 4 + 4 + 8 + 8;

fn save_slot<S: Sink>(o: &mut Out<S>, slot: &StreamSlot) {
    o.u32(slot.check);
    o.u32(slot.version);
    o.u64(slot.last.raw());
    o.u64(slot.snapshot.raw());
}

fn restore_slot(i: &mut In) -> Result<StreamSlot, Bad> {
    Ok(StreamSlot {
        check: i.u32()?,
        version: i.u32()?,
        last: Loc::from_raw(i.u64()?),
        snapshot: Loc::from_raw(i.u64()?),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn test_hash(dir: &Path) -> NameHash {
        let (keys, _) = crate::hash_keys::HashKeys::load_or_create(dir).unwrap();
        NameHash(keys.hash128("streams"))
    }

    #[test]
    fn names_are_listed_by_prefix_in_order_across_runs_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = StreamTable::new(dir.path(), test_hash(dir.path()));
        let mut all = Vec::new();
        for segment in 0..4 {
            for i in 0..700 {
                let name = format!("customer:t/c{:05}", i * 4 + segment);
                t.get_or_insert(&name).version = 1;
                all.push(name);
            }
            t.get_or_insert(&format!("product:t/p{segment}"));
            if segment < 3 {
                t.close_segment().unwrap();
            }
        }
        all.sort();
        assert_eq!(t.slots.iter().map(HashMap::len).sum::<usize>(), 2804);
        assert_eq!(t.list("customer:", "", 10_000).unwrap(), all);
        assert_eq!(
            t.list("product:t/", "", 10).unwrap(),
            vec![
                "product:t/p0",
                "product:t/p1",
                "product:t/p2",
                "product:t/p3"
            ]
        );
        // Paging by `after` gives every name once.
        let mut paged = Vec::new();
        let mut after = String::new();
        loop {
            let page = t.list("customer:", &after, 333).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().unwrap().clone();
            paged.extend(page);
        }
        assert_eq!(paged, all);
        assert!(t.list("nothing:", "", 10).unwrap().is_empty());
        assert_eq!(t.get("customer:t/c00007").map(|s| s.version), Some(1));
        assert!(t.get("customer:t/c99999").is_none());
    }

    #[test]
    fn name_runs_reopened_from_their_files_list_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = StreamTable::new(dir.path(), test_hash(dir.path()));
        for segment in 0..5u32 {
            if segment == 2 {
                t.close_segment().unwrap(); // a segment with no new names has no run
                continue;
            }
            for i in 0..900 {
                t.get_or_insert(&format!("customer:t/c{:05}-{segment}", i * 7 % 900));
            }
            t.close_segment().unwrap();
        }
        let segments = t.name_run_segments();
        assert_eq!(segments, vec![0, 1, 3, 4]);
        let listed = t.list("customer:", "", 10_000).unwrap();
        assert_eq!(listed.len(), 3_600);
        let mut again = StreamTable::new(dir.path(), test_hash(dir.path()));
        again.reopen_runs(&segments, 5).unwrap();
        assert_eq!(again.list("customer:", "", 10_000).unwrap(), listed);
        assert_eq!(
            again.list("customer:", "customer:t/c00450-3", 5).unwrap(),
            t.list("customer:", "customer:t/c00450-3", 5).unwrap()
        );
        // A changed byte of a page table is named.
        let path = dir.path().join("0000000002.names");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - NAME_FOOTER_BYTES - 5;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut damaged = StreamTable::new(dir.path(), test_hash(dir.path()));
        assert!(matches!(
            damaged.reopen_runs(&segments, 5),
            Err(Error::Corrupt { .. })
        ));
        assert!(damaged.runs.is_empty());
    }

    #[test]
    fn a_name_whose_place_is_taken_by_another_is_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = StreamTable::new(dir.path(), test_hash(dir.path()));
        t.get_or_insert("a").version = 1;
        // Forge the collision: give "a"'s slot the place of "b", with "a"'s check bits.
        let (map_a, key_a, _) = t.place("a");
        let (map_b, key_b, _) = t.place("b");
        let slot = t.slots[map_a].remove(&key_a).unwrap();
        t.slots[map_b].insert(key_b, slot);
        assert!(t.get("b").is_none());
        t.get_or_insert("b").version = 7;
        assert_eq!(t.get("b").map(|s| s.version), Some(7));
        assert_eq!(t.overflow.len(), 1);
        assert_eq!(t.list("", "", 10).unwrap(), vec!["a", "b"]);
    }
}
