//! A key index kept mostly on disk: where the records of a key (an idempotency key, an effect
//! key) are, for keys far more numerous than memory allows (the SPEC's 1,000,000 customers write
//! about ten million idempotency keys a day).
//!
//! Keys are indexed by a 64-bit hash of the key; several keys may share a hash, so a lookup
//! answers *candidate* locations and the caller reads each record and compares the key itself.
//! The hash is SipHash under a secret key of the store's (hash_keys.rs), so nobody can craft
//! keys that collide (a collision would only cost a read anyway).
//!
//! - The keys of the open segment are in memory (`open`).
//! - When a segment is closed, its keys become a **run**: a file beside the segment
//!   (`0000000001.idem`, ...) holding the `(hash, location)` pairs sorted by hash, then the
//!   `(location, created)` pairs in log order (for the idempotency sweep). Memory keeps, per
//!   run, a Bloom filter (about 11.6 bits per key, stacked: below) and the first entry and
//!   CRC32C of each 4 KiB page (12 bytes per 256 keys); a page read from the file is checked
//!   against its CRC.
//! - The runs' filters are stacked, up to [`RUNS_PER_STACK`] runs of about the same size in one
//!   bit-sliced [`StackedBloom`], so that asking every run of a stack about a key reads its few
//!   bit positions once instead of a cache line in each run's filter (at 10^7 events there are
//!   75 runs per table, and most lookups ask them all: see below).
//! - The idempotency table also keeps one [`ScalableBloom`] over every key inserted since the
//!   open, which readers ask without the index's lock (every request asks for its key) and
//!   which answers "certainly not" for most new keys at one probe, until its memory bound: past
//!   about four million keys it answers "maybe" more and more often. The effect table, asked
//!   only by the writer, has none: past that bound it would only cost memory and a probe.
//! - A lookup goes newest first and stops at the first record its caller accepts, so a key
//!   written recently is found without asking older runs.
//! - Keys that carry their issuer's count ([`Ordinal`]: the engine's effect keys,
//!   `evt-<ms>-<nonce>-<n>:<i>`, are numbered by `(nonce, n)`) are fenced: the open segment and
//!   each run keep, per issuer, the lowest and highest count of the keys they hold
//!   ([`Fence`]), and a lookup that names its key's ordinal skips every run and stack whose
//!   fence cannot hold it, without probing a filter or reading a page. It is exact, whatever
//!   the keys: a fence is made from the keys themselves, so it holds every key its run holds;
//!   a key without an ordinal marks its run unfenced, always asked. A new effect key, counted
//!   past every key of its issuer, skips every run (without fences, every stack's filter was
//!   asked for it: 3-4 % of the CPU at 10^6 events, more at 10^7).
//!
//! Runs are derived data: an open that scans writes them anew, and they are synced only before a
//! clean close keeps the index that refers to them (index_at_close.rs). Each run file ends with
//! what memory keeps of it (its pages and its filter layer, `RUN_FOOTER_BYTES`), so that
//! [`KeyTable::reopen_runs`] puts it back from the kept index's plan without reading its keys.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use marketgov_store::filter::{ScalableBloom, StackedBloom};
use marketgov_store::Error;

use crate::frame::{Bad, In, Out, Sink};
use crate::hash_keys::KeyedHash64;
use crate::index::{Inconsistent, Loc};
use crate::prehashed::PrehashedMap;

/// Entries per page of a run file.
const PAGE_ENTRIES: usize = 256;
/// Bytes per entry: two little-endian `u64`s.
const ENTRY_BYTES: usize = 16;
/// Memory the table's filter over all keys may use (about 10 bits per key for ten million keys;
/// past it the filter fills up and answers "maybe" more often, which costs run probes, not
/// correctness).
pub const KEY_FILTER_BYTES_MAX: u64 = 12 << 20;
/// The false-positive rate of each run's own filter (about 11.6 bits per key): each false
/// positive costs a page read of the run file (about 2 µs), and a new key is asked of every run
/// (at 10^7 events, 75 per table: 0.37 reads per new key; at 1 %, 0.75).
const RUN_FALSE_POSITIVES: f64 = 0.005;
/// Runs whose filters share one [`StackedBloom`] (its most).
pub const RUNS_PER_STACK: usize = marketgov_store::filter::STACKED_LAYERS_MAX;
/// A run joins the newest stack only if its keys are within this factor of what the stack was
/// sized for (above, its filter would answer "maybe" too often; below, it would waste memory).
const STACK_SIZE_SLACK: f64 = 1.25;

/// A run file's last bytes: what memory keeps of the run, so that it reopens without reading
/// its keys (docs/store-log.md, "Not built yet", item 1).
///
/// After the two sections come the pages of both (12 bytes each: first sort key, CRC32C), the
/// run's layer of its stack's filter as a bitmap of the stack's positions
/// ([`StackedBloom::layer_bits`]), and this footer: magic, the id of the hash the keys are
/// under, the key count, the capacity the stack was made for, the bitmap's words, a CRC32C of
/// the page table and the footer's bytes before it, and a CRC32C of the bitmap (so that an open
/// that has the stack's bits whole, from the index kept at close, need not read the bitmap).
const RUN_FOOTER_BYTES: usize = 8 + 8 + 8 + 8 + 8 + 4 + 4;
const RUN_MAGIC: &[u8; 8] = b"MGKRUN02";
/// Bytes per page entry in the footer's page table.
const PAGE_RECORD_BYTES: usize = 8 + 4;

/// Where a closed segment's run sits among the stacked filters: stack by stack, the capacity
/// each was made for and the segment of each layer (`None`: dropped). With the run files, this
/// is all it takes to put the runs back as they were ([`KeyTable::reopen_runs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackPlan {
    pub capacity: u64,
    pub layers: Vec<Option<u32>>,
}

/// What memory keeps of one page of a run file.
#[derive(Debug, Clone, Copy)]
struct Page {
    /// The page's first sort key (a hash, or a location).
    first: u64,
    crc: u32,
}

/// The keys of one closed segment, on disk.
#[derive(Debug)]
struct Run {
    segment: u32,
    path: PathBuf,
    file: File,
    count: usize,
    by_hash: Vec<Page>,
    by_loc: Vec<Page>,
    /// The ordinals of its keys (unknown for a run reopened without the index kept at close).
    fence: Fence,
}

impl Run {
    /// Byte offset of the log-order section.
    fn order_offset(&self) -> u64 {
        (self.count * ENTRY_BYTES) as u64
    }

    /// Reads page `p` of the section at `offset` into `buf`: its pairs' bytes.
    fn page<'b>(
        &self,
        pages: &[Page],
        offset: u64,
        p: usize,
        buf: &'b mut [u8; PAGE_ENTRIES * ENTRY_BYTES],
    ) -> Result<&'b [u8], Error> {
        let entries = PAGE_ENTRIES.min(self.count - p * PAGE_ENTRIES);
        let buf = &mut buf[..entries * ENTRY_BYTES];
        let at = offset + (p * PAGE_ENTRIES * ENTRY_BYTES) as u64;
        let corrupt = |detail: String| Error::Corrupt {
            location: format!("{} page {p}", self.path.display()),
            detail,
        };
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        if pages.get(p).map(|pg| pg.crc) != Some(crc32c::crc32c(buf)) {
            return Err(corrupt("the index page does not match its checksum".into()));
        }
        Ok(buf)
    }

    /// Reopens the run of `segment` from its file: its pages and its filter layer from the
    /// footer, checked against its CRC, the hash id and the stack's capacity it must have been
    /// written under. The keys themselves are not read.
    /// With `with_bits` false the bitmap is neither read nor checked (and answered empty).
    fn open(
        dir: &Path,
        suffix: &str,
        segment: u32,
        hash_id: u64,
        capacity: u64,
        with_bits: bool,
    ) -> Result<(Self, Vec<u64>), Error> {
        let path = run_path(dir, segment, suffix);
        let corrupt = |detail: String| Error::Corrupt {
            location: path.display().to_string(),
            detail,
        };
        let file = File::open(&path).map_err(|e| corrupt(format!("unreadable: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| corrupt(format!("unreadable: {e}")))?
            .len();
        let mut footer = [0u8; RUN_FOOTER_BYTES];
        let footer_at = len
            .checked_sub(RUN_FOOTER_BYTES as u64)
            .ok_or_else(|| corrupt("shorter than its footer".into()))?;
        file.read_exact_at(&mut footer, footer_at)
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        let field = |i: usize| le(&footer[8 + i * 8..16 + i * 8]);
        if &footer[..8] != RUN_MAGIC {
            return Err(corrupt("not a run file of this version".into()));
        }
        let (id, count, stack_capacity, words) = (field(0), field(1), field(2), field(3));
        if id != hash_id || stack_capacity != capacity {
            return Err(corrupt(format!(
                "written under another hash or stack (capacity {stack_capacity}, expected {capacity})"
            )));
        }
        let count = usize::try_from(count).map_err(|_| corrupt("too many keys".into()))?;
        let pages = count.div_ceil(PAGE_ENTRIES);
        let tail = (2 * pages * PAGE_RECORD_BYTES) as u64 + words.saturating_mul(8);
        let sections = (2 * count * ENTRY_BYTES) as u64;
        if sections.checked_add(tail) != Some(footer_at) {
            return Err(corrupt(format!(
                "{len} bytes, which does not fit {count} keys and {words} filter words"
            )));
        }
        let table = 2 * pages * PAGE_RECORD_BYTES;
        let read = if with_bits { tail as usize } else { table };
        let mut rest = vec![0u8; read];
        file.read_exact_at(&mut rest, sections)
            .map_err(|e| corrupt(format!("unreadable: {e}")))?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&rest[..table]),
            &footer[..RUN_FOOTER_BYTES - 8],
        );
        let bits_crc = with_bits.then(|| crc32c::crc32c(&rest[table..]));
        if crc.to_le_bytes() != footer[RUN_FOOTER_BYTES - 8..RUN_FOOTER_BYTES - 4]
            || bits_crc.is_some_and(|c| c.to_le_bytes() != footer[RUN_FOOTER_BYTES - 4..])
        {
            return Err(corrupt(
                "the run's footer does not match its checksum".into(),
            ));
        }
        let page_records = |from: usize| -> Vec<Page> {
            rest[from..from + pages * PAGE_RECORD_BYTES]
                .chunks_exact(PAGE_RECORD_BYTES)
                .map(|r| Page {
                    first: le(&r[..8]),
                    crc: u32::from_le_bytes([r[8], r[9], r[10], r[11]]),
                })
                .collect()
        };
        let by_hash = page_records(0);
        let by_loc = page_records(pages * PAGE_RECORD_BYTES);
        let bits = rest[table..].chunks_exact(8).map(le).collect();
        Ok((
            Self {
                segment,
                path,
                file,
                count,
                by_hash,
                by_loc,
                fence: Fence::unknown(),
            },
            bits,
        ))
    }

    /// Locations of entries with `hash`, in log order.
    fn find(&self, hash: u64, out: &mut Vec<Loc>) -> Result<(), Error> {
        // Entries equal to `hash` may begin in the last page whose first entry is below it.
        let start = self
            .by_hash
            .partition_point(|p| p.first < hash)
            .saturating_sub(1);
        let mut buf = [0u8; PAGE_ENTRIES * ENTRY_BYTES];
        for p in start..self.by_hash.len() {
            if p > start && self.by_hash[p].first > hash {
                break;
            }
            for entry in self
                .page(&self.by_hash, 0, p, &mut buf)?
                .chunks_exact(ENTRY_BYTES)
            {
                let h = le(&entry[..8]);
                if h == hash {
                    out.push(Loc::from_raw(le(&entry[8..])));
                } else if h > hash {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The filters of up to [`RUNS_PER_STACK`] consecutive runs, stacked; `runs[l]` is layer `l`
/// (`None` once dropped).
#[derive(Debug)]
struct RunStack {
    filter: StackedBloom,
    runs: Vec<Option<Run>>,
    /// Everything its runs' fences hold (a dropped run's too).
    fence: Fence,
}

impl RunStack {
    /// Whether a run of `count` keys may join this stack.
    fn takes(&self, count: usize) -> bool {
        let sized = self.filter.capacity() as f64;
        self.runs.len() < RUNS_PER_STACK
            && (count as f64) <= sized * STACK_SIZE_SLACK
            && (count as f64) >= sized / STACK_SIZE_SLACK
    }
}

/// Writes a run file of `segment` (numbered from 0) in `dir` as `<segment + 1>.<suffix>`,
/// replacing any older one; answers its path and the file, open for reading. Not synced: a run
/// is derived from its segment and written again at the next open.
pub(crate) fn write_run_file(
    dir: &Path,
    segment: u32,
    suffix: &str,
    bytes: &[u8],
) -> Result<(PathBuf, File), Error> {
    let path = run_path(dir, segment, suffix);
    let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    Ok((path, file))
}

/// The run file of `segment` (numbered from 0): `<segment + 1>.<suffix>` in `dir`.
fn run_path(dir: &Path, segment: u32, suffix: &str) -> PathBuf {
    dir.join(format!("{:010}.{suffix}", segment + 1))
}

fn le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// Where a key stands in the numbering of whoever issued it: keys of one issuer with counts
/// far apart cannot share a run written when the counts were elsewhere, which lets a lookup
/// skip runs ([`Fence`]). Only a pruning aid: a wrong or missing ordinal costs probes, never
/// an answer, because the same function of the key's text makes the fence and the question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordinal {
    pub issuer: u64,
    pub n: u64,
}

impl Ordinal {
    /// The ordinal of a key `<text>-<issuer>-<n>:<i>` whose `issuer` and `n` are lower-case
    /// hex of at most 16 digits and `i` decimal digits: the engine's effect keys, its event id
    /// (`evt-<ms>-<nonce>-<n>`, `n` counted per process, the nonce drawn at its start) and the
    /// effect's place in the decision. Any other key has none.
    pub fn of_key(key: &str) -> Option<Ordinal> {
        // One pass from the end (it runs twice for every effect: at its check and its apply).
        let b = key.as_bytes();
        let mut at = b.len();
        while at > 0 && b[at - 1].is_ascii_digit() {
            at -= 1;
        }
        if at == b.len() || at == 0 || b[at - 1] != b':' {
            return None;
        }
        at -= 1;
        let n = hex_before(b, &mut at)?;
        let issuer = hex_before(b, &mut at)?;
        Some(Ordinal { issuer, n })
    }
}

/// The lower-case hex number of 1 to 16 digits that ends at `b[..*at]` after a `-`; moves `at`
/// to that `-`.
fn hex_before(b: &[u8], at: &mut usize) -> Option<u64> {
    let end = *at;
    let mut v = 0u64;
    let mut shift = 0;
    while *at > 0 {
        let d = match b[*at - 1] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            b'-' => break,
            _ => return None,
        };
        if shift == u64::BITS {
            return None;
        }
        v |= u64::from(d) << shift;
        shift += 4;
        *at -= 1;
    }
    if *at == end || *at == 0 {
        return None;
    }
    *at -= 1;
    Some(v)
}

/// Issuers a fence keeps ranges for, at most; past it the fence gives up and its run is
/// asked like an unfenced one. A segment's keys come from the processes that wrote it (one,
/// or two across a restart), so the bound is seldom reached.
pub const FENCE_ISSUERS_MAX: usize = 8;

/// The ordinals a run (or the open segment) may hold: per issuer, the lowest and highest count
/// of its keys. Unfenced (it may hold anything) once a key without an ordinal joins, or keys of
/// more than [`FENCE_ISSUERS_MAX`] issuers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    unfenced: bool,
    /// `(issuer, lowest, highest)`.
    ranges: Vec<(u64, u64, u64)>,
}

impl Fence {
    /// A fence that holds anything: for runs whose keys' ordinals are not known.
    pub fn unknown() -> Self {
        Self {
            unfenced: true,
            ranges: Vec::new(),
        }
    }

    /// Takes in a key of ordinal `ordinal` (`None`: a key without one).
    pub fn add(&mut self, ordinal: Option<Ordinal>) {
        if self.unfenced {
            return;
        }
        let Some(o) = ordinal else {
            *self = Self::unknown();
            return;
        };
        if let Some(r) = self.ranges.iter_mut().find(|r| r.0 == o.issuer) {
            r.1 = r.1.min(o.n);
            r.2 = r.2.max(o.n);
        } else if self.ranges.len() < FENCE_ISSUERS_MAX {
            self.ranges.push((o.issuer, o.n, o.n));
        } else {
            *self = Self::unknown();
        }
    }

    /// Takes in everything `other` may hold.
    pub fn merge(&mut self, other: &Fence) {
        if other.unfenced {
            *self = Self::unknown();
            return;
        }
        for (issuer, lo, hi) in &other.ranges {
            self.add(Some(Ordinal {
                issuer: *issuer,
                n: *lo,
            }));
            self.add(Some(Ordinal {
                issuer: *issuer,
                n: *hi,
            }));
        }
    }

    /// Whether a key of ordinal `ordinal` may be behind this fence (`None`: always).
    pub fn may_hold(&self, ordinal: Option<Ordinal>) -> bool {
        let Some(o) = ordinal else {
            return true;
        };
        self.unfenced
            || self
                .ranges
                .iter()
                .any(|(issuer, lo, hi)| *issuer == o.issuer && (*lo..=*hi).contains(&o.n))
    }

    fn save<S: Sink>(&self, o: &mut Out<S>) {
        o.u8(u8::from(self.unfenced));
        o.u64(self.ranges.len() as u64);
        for (issuer, lo, hi) in &self.ranges {
            o.u64(*issuer);
            o.u64(*lo);
            o.u64(*hi);
        }
    }

    fn restore(i: &mut In) -> Result<Self, Bad> {
        let unfenced = i.u8()? != 0;
        let mut ranges = Vec::new();
        for _ in 0..i.count(24)? {
            ranges.push((i.u64()?, i.u64()?, i.u64()?));
        }
        if ranges.len() > FENCE_ISSUERS_MAX || ranges.iter().any(|(_, lo, hi)| lo > hi) {
            return Err(Bad::Invalid("a run's fence is out of shape".into()));
        }
        Ok(Self { unfenced, ranges })
    }
}

/// Whether a [`KeyTable`] keeps a filter over all its keys in front of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// A filter readers may ask without the index's lock ([`KeyGate`]), up to
    /// [`KEY_FILTER_BYTES_MAX`].
    Filter,
    /// None: a lookup asks the open segment's keys and the runs' filters.
    None,
}

/// The hash and the filter over every key of a table. The filter is shared: a key is inserted
/// when its record is applied, under the index's write lock and before its commit is
/// acknowledged, so whoever learned of the commit (through its acknowledgement or anything
/// after it) finds the key's bits set without taking the lock.
#[derive(Debug, Clone)]
pub struct KeyGate {
    hasher: KeyedHash64,
    filter: Option<Arc<ScalableBloom>>,
}

impl KeyGate {
    pub fn hash(&self, parts: &[&str]) -> u64 {
        self.hasher.one(parts)
    }

    /// `false` only when no record of the key was ever applied (always `true` without a
    /// filter).
    pub fn may_contain(&self, hash: u64) -> bool {
        self.filter.as_ref().is_none_or(|f| f.may_contain(hash))
    }
}

/// A key index: the open segment's keys in memory, each closed segment's in a run file.
#[derive(Debug)]
pub struct KeyTable {
    dir: PathBuf,
    /// The run files' extension (`idem`, `effect`).
    suffix: &'static str,
    gate: KeyGate,
    /// The segment whose keys are in memory.
    open_segment: u32,
    /// The open segment's keys: the first location of each hash ...
    open: PrehashedMap<u64, Loc>,
    /// ... and any further location of a hash already in `open` (rare).
    open_more: Vec<(u64, Loc)>,
    /// The open segment's keys in log order, with when each was created.
    open_order: Vec<(Loc, i64)>,
    /// The ordinals of the open segment's keys, for its run.
    open_fence: Fence,
    /// Closed segments' runs, oldest first, their filters stacked.
    stacks: Vec<RunStack>,
}

impl KeyTable {
    /// An empty table whose runs go in `dir` as `<segment>.<suffix>`.
    pub fn new(dir: &Path, suffix: &'static str, gate: Gate, hasher: KeyedHash64) -> Self {
        Self {
            dir: dir.to_owned(),
            suffix,
            gate: KeyGate {
                hasher,
                filter: (gate == Gate::Filter)
                    .then(|| Arc::new(ScalableBloom::new(KEY_FILTER_BYTES_MAX))),
            },
            open_segment: 0,
            open: PrehashedMap::default(),
            open_more: Vec::new(),
            open_order: Vec::new(),
            open_fence: Fence::default(),
            stacks: Vec::new(),
        }
    }

    /// The hash a key is indexed by.
    pub fn hash(&self, parts: &[&str]) -> u64 {
        self.gate.hash(parts)
    }

    /// The filter in front of this table, for readers that ask it before taking the index's
    /// lock.
    pub fn gate(&self) -> KeyGate {
        self.gate.clone()
    }

    /// Indexes the record at `loc` (in the open segment, after every record indexed before) of
    /// a key with `hash` and, if it has one, `ordinal` ([`Ordinal::of_key`]).
    pub fn insert(
        &mut self,
        hash: u64,
        ordinal: Option<Ordinal>,
        loc: Loc,
        created_ms: i64,
    ) -> Result<(), Inconsistent> {
        if loc.segment() != self.open_segment
            || self.open_order.last().is_some_and(|(l, _)| *l >= loc)
        {
            return Err(Inconsistent(format!(
                "a key at segment {} offset {} does not follow the keys indexed before it",
                loc.segment() + 1,
                loc.offset()
            )));
        }
        if let Some(filter) = &self.gate.filter {
            filter.insert(hash);
        }
        match self.open.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => self.open_more.push((hash, loc)),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
            }
        }
        self.open_order.push((loc, created_ms));
        self.open_fence.add(ordinal);
        Ok(())
    }

    /// Offers `found` each location where a record of a key with `hash` and `ordinal` (the
    /// key's [`Ordinal::of_key`], so that fenced runs that cannot hold it are skipped) may be,
    /// newest first, until it answers `Some` (the caller reads the record and compares the key
    /// itself); answers that, or `None` when no location was accepted.
    pub fn find_newest<T>(
        &self,
        hash: u64,
        ordinal: Option<Ordinal>,
        found: impl FnMut(Loc) -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        if !self.gate.may_contain(hash) {
            return Ok(None);
        }
        self.find_newest_past_gate(hash, ordinal, found)
    }

    /// [`Self::find_newest`] for a caller that asked the table's [`KeyGate`] itself and heard
    /// "maybe" (asking it twice costs a probe of each of its stages).
    pub fn find_newest_past_gate<T>(
        &self,
        hash: u64,
        ordinal: Option<Ordinal>,
        mut found: impl FnMut(Loc) -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        // `open_more` holds, in log order, the locations after the first of a hash.
        for (_, loc) in self.open_more.iter().rev().filter(|(h, _)| *h == hash) {
            if let Some(t) = found(*loc)? {
                return Ok(Some(t));
            }
        }
        if let Some(loc) = self.open.get(&hash) {
            if let Some(t) = found(*loc)? {
                return Ok(Some(t));
            }
        }
        let mut locs = Vec::new();
        for stack in self.stacks.iter().rev() {
            if !stack.fence.may_hold(ordinal) {
                continue;
            }
            let mut maybe = stack.filter.may_contain(hash);
            while maybe != 0 {
                let layer = (u64::BITS - 1 - maybe.leading_zeros()) as usize;
                maybe &= !(1 << layer);
                let Some(Some(run)) = stack.runs.get(layer) else {
                    continue;
                };
                if !run.fence.may_hold(ordinal) {
                    continue;
                }
                locs.clear();
                run.find(hash, &mut locs)?;
                for loc in locs.iter().rev() {
                    if let Some(t) = found(*loc)? {
                        return Ok(Some(t));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Every location where records of keys with `hash` may be, newest first. Empty when the
    /// filters are sure.
    #[cfg(test)]
    pub fn candidates(&self, hash: u64) -> Result<Vec<Loc>, Error> {
        self.candidates_of(hash, None)
    }

    /// [`Self::candidates`] of a key with `ordinal`.
    #[cfg(test)]
    pub fn candidates_of(&self, hash: u64, ordinal: Option<Ordinal>) -> Result<Vec<Loc>, Error> {
        let mut out = Vec::new();
        self.find_newest(hash, ordinal, |loc| {
            out.push(loc);
            Ok(None::<()>)
        })?;
        Ok(out)
    }

    /// The runs, oldest first.
    fn runs(&self) -> impl Iterator<Item = &Run> {
        self.stacks.iter().flat_map(|s| s.runs.iter().flatten())
    }

    /// Up to `limit` keys from `from` on, in log order: `(location, created)`.
    pub fn order_from(&self, from: Loc, limit: usize) -> Result<Vec<(Loc, i64)>, Error> {
        let mut out = Vec::new();
        let mut buf = [0u8; PAGE_ENTRIES * ENTRY_BYTES];
        for run in self.runs().filter(|r| r.segment >= from.segment()) {
            let start = run
                .by_loc
                .partition_point(|p| p.first < from.raw())
                .saturating_sub(1);
            for p in start..run.by_loc.len() {
                let page = run.page(&run.by_loc, run.order_offset(), p, &mut buf)?;
                for entry in page.chunks_exact(ENTRY_BYTES) {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    let (loc, created) = (le(&entry[..8]), le(&entry[8..]));
                    if loc >= from.raw() {
                        out.push((Loc::from_raw(loc), created as i64));
                    }
                }
            }
        }
        let start = self.open_order.partition_point(|(l, _)| *l < from);
        out.extend(
            self.open_order[start..]
                .iter()
                .take(limit.saturating_sub(out.len())),
        );
        Ok(out)
    }

    /// The open segment is closed: its keys are written to its run file and leave memory; the
    /// next segment's keys go to memory.
    pub fn close_segment(&mut self) -> Result<(), Error> {
        let segment = self.open_segment;
        if !self.open_order.is_empty() {
            self.write_run(segment)?;
        }
        self.open = PrehashedMap::default();
        self.open_more = Vec::new();
        self.open_order = Vec::new();
        self.open_fence = Fence::default();
        self.open_segment = segment + 1;
        Ok(())
    }

    /// Writes the open segment's keys as its run and stacks its filter.
    fn write_run(&mut self, segment: u32) -> Result<(), Error> {
        let mut by_hash: Vec<(u64, u64)> = self
            .open
            .iter()
            .map(|(h, l)| (*h, l.raw()))
            .chain(self.open_more.iter().map(|(h, l)| (*h, l.raw())))
            .collect();
        by_hash.sort_unstable();
        let by_loc: Vec<(u64, u64)> = self
            .open_order
            .iter()
            .map(|(l, c)| (l.raw(), *c as u64))
            .collect();
        let count = by_loc.len();
        debug_assert_eq!(by_hash.len(), count, "every key is in both sections");
        let mut buf = Vec::with_capacity(2 * count * ENTRY_BYTES);
        let section = |pairs: &[(u64, u64)], buf: &mut Vec<u8>| -> Vec<Page> {
            pairs
                .chunks(PAGE_ENTRIES)
                .map(|chunk| {
                    let start = buf.len();
                    for (a, b) in chunk {
                        buf.extend_from_slice(&a.to_le_bytes());
                        buf.extend_from_slice(&b.to_le_bytes());
                    }
                    Page {
                        first: chunk[0].0,
                        crc: crc32c::crc32c(&buf[start..]),
                    }
                })
                .collect()
        };
        let hash_pages = section(&by_hash, &mut buf);
        let loc_pages = section(&by_loc, &mut buf);
        if !self.stacks.last().is_some_and(|s| s.takes(count)) {
            self.stacks.push(RunStack {
                filter: StackedBloom::new(count as u64, RUN_FALSE_POSITIVES),
                runs: Vec::with_capacity(RUNS_PER_STACK),
                fence: Fence::default(),
            });
        }
        let stack = self
            .stacks
            .last_mut()
            .ok_or_else(|| Error::Storage("no stack for a run".into()))?;
        // `takes` keeps a stack under both its bound and the filter's.
        debug_assert!(stack.runs.len() < RUNS_PER_STACK);
        let layer = stack.runs.len();
        // The layer's bitmap is what the footer keeps; the stack takes the same bits.
        let bits = stack.filter.bitmap_of(by_hash.iter().map(|(h, _)| *h));
        if stack.filter.push_layer_bits(&bits) != Some(layer) {
            return Err(Error::Storage(format!(
                "the filter of run {} could not be stacked",
                run_path(&self.dir, segment, self.suffix).display()
            )));
        }
        let table_from = buf.len();
        for page in hash_pages.iter().chain(&loc_pages) {
            buf.extend_from_slice(&page.first.to_le_bytes());
            buf.extend_from_slice(&page.crc.to_le_bytes());
        }
        let bits_from = buf.len();
        for word in &bits {
            buf.extend_from_slice(&word.to_le_bytes());
        }
        let bits_crc = crc32c::crc32c(&buf[bits_from..]);
        let footer_from = buf.len();
        buf.extend_from_slice(RUN_MAGIC);
        for field in [
            self.gate.hasher.id(),
            count as u64,
            stack.filter.capacity(),
            bits.len() as u64,
        ] {
            buf.extend_from_slice(&field.to_le_bytes());
        }
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&buf[table_from..bits_from]),
            &buf[footer_from..],
        );
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&bits_crc.to_le_bytes());
        let (path, file) = write_run_file(&self.dir, segment, self.suffix, &buf)?;
        let fence = std::mem::take(&mut self.open_fence);
        stack.fence.merge(&fence);
        stack.runs.push(Some(Run {
            segment,
            path,
            file,
            count,
            by_hash: hash_pages,
            by_loc: loc_pages,
            fence,
        }));
        Ok(())
    }

    /// Writes what the table holds in memory, for the index kept at a clean stop
    /// (index_at_close.rs): the open segment's keys, the stacks' plan, and the filter over all
    /// keys (if it has one).
    pub(crate) fn save<S: Sink>(&self, o: &mut Out<S>) {
        o.u32(self.open_segment);
        o.u64(self.open.len() as u64);
        for (hash, loc) in &self.open {
            o.u64(*hash);
            o.u64(loc.raw());
        }
        o.u64(self.open_more.len() as u64);
        for (hash, loc) in &self.open_more {
            o.u64(*hash);
            o.u64(loc.raw());
        }
        o.u64(self.open_order.len() as u64);
        for (loc, created) in &self.open_order {
            o.u64(loc.raw());
            o.i64(*created);
        }
        self.open_fence.save(o);
        let plan = self.stack_plan();
        o.u64(plan.len() as u64);
        for (stack, kept) in plan.iter().zip(&self.stacks) {
            o.u64(stack.capacity);
            o.u64(stack.layers.len() as u64);
            for layer in &stack.layers {
                match layer {
                    Some(segment) => {
                        o.u8(1);
                        o.u32(*segment);
                    }
                    None => o.u8(0),
                }
            }
            // The stack's bits whole: putting them back moves no bit (layer by layer from the
            // runs' footers, an open at 10^7 events spent about a second on it).
            let (width, words) = kept.filter.parts();
            o.u32(width);
            o.u64(words.len() as u64);
            for w in words {
                o.u64(*w);
            }
            // Each kept run's fence, in the order of its layers.
            for run in kept.runs.iter().flatten() {
                run.fence.save(o);
            }
        }
        match &self.gate.filter {
            Some(filter) => {
                let stages = filter.stages();
                o.u8(1);
                o.u64(stages.len() as u64);
                for (inserted, words) in &stages {
                    o.u64(*inserted);
                    o.u64(words.len() as u64);
                    for w in words {
                        o.u64(*w);
                    }
                }
            }
            None => o.u8(0),
        }
    }

    /// Reads what [`KeyTable::save`] wrote into this empty table of the same kind, and
    /// reopens its runs from their files.
    pub(crate) fn restore(&mut self, i: &mut In) -> Result<(), Error> {
        let part = format!("the {} keys", self.suffix);
        let bad = crate::index_at_close::damaged(&part);
        let r = |i: &mut In| -> Result<_, Bad> {
            let open_segment = i.u32()?;
            let mut open = PrehashedMap::default();
            for _ in 0..i.count(16)? {
                open.insert(i.u64()?, Loc::from_raw(i.u64()?));
            }
            let mut open_more = Vec::new();
            for _ in 0..i.count(16)? {
                open_more.push((i.u64()?, Loc::from_raw(i.u64()?)));
            }
            let mut open_order = Vec::new();
            for _ in 0..i.count(16)? {
                open_order.push((Loc::from_raw(i.u64()?), i.i64()?));
            }
            let open_fence = Fence::restore(i)?;
            let mut plan = Vec::new();
            for _ in 0..i.count(16)? {
                let capacity = i.u64()?;
                let mut layers = Vec::new();
                for _ in 0..i.count(1)? {
                    layers.push(match i.u8()? {
                        0 => None,
                        _ => Some(i.u32()?),
                    });
                }
                let width = i.u32()?;
                let words = (0..i.count(8)?)
                    .map(|_| i.u64())
                    .collect::<Result<Vec<_>, _>>()?;
                let fences = (0..layers.iter().flatten().count())
                    .map(|_| Fence::restore(i))
                    .collect::<Result<Vec<_>, _>>()?;
                plan.push((StackPlan { capacity, layers }, width, words, fences));
            }
            let filter = match i.u8()? {
                0 => None,
                _ => {
                    let mut stages = Vec::new();
                    for _ in 0..i.count(16)? {
                        let inserted = i.u64()?;
                        let words = (0..i.count(8)?)
                            .map(|_| i.u64())
                            .collect::<Result<Vec<_>, _>>()?;
                        stages.push((inserted, words));
                    }
                    Some(stages)
                }
            };
            Ok((
                open_segment,
                (open, open_more, open_order, open_fence),
                plan,
                filter,
            ))
        };
        let (open_segment, (open, open_more, open_order, open_fence), plan, filter) =
            r(i).map_err(bad)?;
        if filter.is_some() != self.gate.filter.is_some() {
            return Err(bad(Bad::Invalid("kept for a table of another kind".into())));
        }
        if let Some(stages) = filter {
            let filter = ScalableBloom::from_stages(KEY_FILTER_BYTES_MAX, &stages)
                .ok_or_else(|| bad(Bad::Invalid("its filter does not fit".into())))?;
            self.gate.filter = Some(Arc::new(filter));
        }
        let mut stacks = Vec::with_capacity(plan.len());
        for (p, width, words, fences) in plan {
            let filter = StackedBloom::from_parts(
                p.capacity,
                RUN_FALSE_POSITIVES,
                p.layers.len(),
                width,
                words,
            )
            .ok_or_else(|| {
                bad(Bad::Invalid(
                    "a stack's filter does not fit its shape".into(),
                ))
            })?;
            let mut runs = Vec::with_capacity(p.layers.len());
            let mut fences = fences.into_iter();
            let mut stack_fence = Fence::default();
            for layer in &p.layers {
                runs.push(match layer {
                    Some(segment) if *segment < open_segment => {
                        let id = self.gate.hasher.id();
                        let (mut run, _) =
                            Run::open(&self.dir, self.suffix, *segment, id, p.capacity, false)?;
                        run.fence = fences.next().unwrap_or_else(Fence::unknown);
                        stack_fence.merge(&run.fence);
                        Some(run)
                    }
                    Some(segment) => {
                        return Err(bad(Bad::Invalid(format!(
                            "a run of segment {segment} in a table open at {open_segment}"
                        ))))
                    }
                    None => None,
                });
            }
            stacks.push(RunStack {
                filter,
                runs,
                fence: stack_fence,
            });
        }
        self.stacks = stacks;
        self.open_segment = open_segment;
        self.open = open;
        self.open_more = open_more;
        self.open_order = open_order;
        self.open_fence = open_fence;
        Ok(())
    }

    /// The stacks' plan, for reopening the runs from their files ([`KeyTable::reopen_runs`]).
    pub fn stack_plan(&self) -> Vec<StackPlan> {
        self.stacks
            .iter()
            .map(|s| StackPlan {
                capacity: s.filter.capacity(),
                layers: s
                    .runs
                    .iter()
                    .map(|r| r.as_ref().map(|r| r.segment))
                    .collect(),
            })
            .collect()
    }

    /// Puts back the runs of closed segments from their files as `plan` places them (a dropped
    /// layer stays empty), in a table that has none yet; keys go on to the segment after
    /// `open_segment`. Nothing of a run's keys is read: its pages and filter layer come from
    /// its footer. A missing or damaged file, or one written under another hash or stack, is
    /// named and nothing is kept.
    pub fn reopen_runs(&mut self, plan: &[StackPlan], open_segment: u32) -> Result<(), Error> {
        if !self.stacks.is_empty() || !self.open_order.is_empty() {
            return Err(Error::Storage(
                "runs are put back only into an empty table".into(),
            ));
        }
        let mut stacks = Vec::with_capacity(plan.len());
        for p in plan {
            // The fences are not in the run files: every run reopened so is asked.
            let mut stack = RunStack {
                filter: StackedBloom::new(p.capacity, RUN_FALSE_POSITIVES),
                runs: Vec::with_capacity(p.layers.len()),
                fence: Fence::unknown(),
            };
            stack.filter.reserve_layers(p.layers.len());
            for layer in &p.layers {
                let run = match layer {
                    Some(segment) if *segment < open_segment => {
                        let (run, bits) = Run::open(
                            &self.dir,
                            self.suffix,
                            *segment,
                            self.gate.hasher.id(),
                            p.capacity,
                            true,
                        )?;
                        if stack.filter.push_layer_bits(&bits).is_none() {
                            return Err(Error::Corrupt {
                                location: run.path.display().to_string(),
                                detail: "its filter layer does not fit its stack".into(),
                            });
                        }
                        Some(run)
                    }
                    Some(segment) => {
                        return Err(Error::Storage(format!(
                            "a run of segment {segment} in a plan open at {open_segment}"
                        )))
                    }
                    None => {
                        // A dropped run keeps its place: an empty layer answers "no" always.
                        let empty = vec![0; stack.filter.layer_words()];
                        stack.filter.push_layer_bits(&empty);
                        None
                    }
                };
                stack.runs.push(run);
            }
            stacks.push(stack);
        }
        self.stacks = stacks;
        self.open_segment = open_segment;
        Ok(())
    }

    /// Bytes of memory this table holds, estimated from its structures' capacities: the
    /// filters and pages of its runs, and the open segment's keys.
    pub fn memory_bytes(&self) -> (u64, u64) {
        let runs: u64 = self
            .stacks
            .iter()
            .map(|s| {
                s.filter.bytes()
                    + s.runs
                        .iter()
                        .flatten()
                        .map(|r| ((r.by_hash.capacity() + r.by_loc.capacity()) * 16) as u64)
                        .sum::<u64>()
            })
            .sum();
        let open = self.open.capacity() * (8 + 8 + 1)
            + self.open_more.capacity() * 16
            + self.open_order.capacity() * 16;
        let filter = self.gate.filter.as_ref().map_or(0, |f| f.usage().1);
        (filter, runs + open as u64)
    }

    /// Forgets the runs of segments before `segment` (every key in them is gone) and removes
    /// their files.
    pub fn drop_before(&mut self, segment: u32) {
        for stack in &mut self.stacks {
            for slot in &mut stack.runs {
                if slot.as_ref().is_some_and(|r| r.segment < segment) {
                    if let Some(run) = slot.take() {
                        // A file left behind is rewritten at the next open; nothing reads it.
                        let _ = std::fs::remove_file(&run.path);
                    }
                }
            }
        }
        // A stack's memory goes with its last run.
        self.stacks.retain(|s| s.runs.iter().any(Option::is_some));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn test_hash(dir: &Path) -> KeyedHash64 {
        let (keys, _) = crate::hash_keys::HashKeys::load_or_create(dir).unwrap();
        keys.hash64("test")
    }

    /// Keys spread over three segments, two of them closed into runs.
    fn table(dir: &Path, per_segment: u64) -> KeyTable {
        let mut t = KeyTable::new(dir, "test", Gate::Filter, test_hash(dir));
        for segment in 0..3u32 {
            for i in 0..per_segment {
                let n = u64::from(segment) * per_segment + i;
                let h = t.hash(&["t", &format!("k{n}")]);
                t.insert(h, None, Loc::new(segment, 100 + i * 10), n as i64)
                    .unwrap();
            }
            if segment < 2 {
                t.close_segment().unwrap();
            }
        }
        t
    }

    #[test]
    fn every_key_is_found_where_it_was_put_in_memory_or_in_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path(), 1000);
        assert_eq!(t.runs().count(), 2);
        for n in 0..3000u64 {
            let (segment, i) = ((n / 1000) as u32, n % 1000);
            let found = t.candidates(t.hash(&["t", &format!("k{n}")])).unwrap();
            assert!(found.contains(&Loc::new(segment, 100 + i * 10)), "k{n}");
        }
        let strays = (0..10_000)
            .filter(|n| {
                !t.candidates(t.hash(&["t", &format!("new{n}")]))
                    .unwrap()
                    .is_empty()
            })
            .count();
        assert!(strays < 500, "{strays} of 10000 new keys had candidates");
    }

    #[test]
    fn an_ordinal_is_the_issuer_and_count_of_an_engine_effect_key() {
        assert_eq!(
            Ordinal::of_key("evt-18c2f0a1b2c-0badf00d-1f:3"),
            Some(Ordinal {
                issuer: 0x0bad_f00d,
                n: 0x1f
            })
        );
        assert_eq!(
            Ordinal::of_key("a-b-ffffffffffffffff-0:12"),
            Some(Ordinal {
                issuer: u64::MAX,
                n: 0
            })
        );
        for other in [
            "",
            "k1",
            "evt-1-2-3",
            "evt-1-2-3:",
            "evt-1-2-3:x",
            "evt-1-2-3:-1",
            "2-3:1",
            "evt-1-G-3:1",
            "evt-1-2-A:1",
            "evt-1--3:1",
            "evt-1-2-:1",
            "evt-1-2-10000000000000000:1",
        ] {
            assert_eq!(Ordinal::of_key(other), None, "{other}");
        }
    }

    #[test]
    fn a_fence_holds_every_ordinal_it_took_in_and_gives_up_past_its_bound() {
        let o = |issuer, n| Some(Ordinal { issuer, n });
        let mut f = Fence::default();
        assert!(!f.may_hold(o(1, 1)) && f.may_hold(None));
        for n in [40, 12, 33] {
            f.add(o(1, n));
        }
        f.add(o(2, 7));
        assert!(f.may_hold(o(1, 12)) && f.may_hold(o(1, 40)) && f.may_hold(o(1, 20)));
        assert!(!f.may_hold(o(1, 11)) && !f.may_hold(o(1, 41)));
        assert!(f.may_hold(o(2, 7)) && !f.may_hold(o(2, 8)) && !f.may_hold(o(3, 20)));
        let mut union = Fence::default();
        union.merge(&f);
        assert_eq!(union, f);
        let mut many = Fence::default();
        for issuer in 0..FENCE_ISSUERS_MAX as u64 {
            many.add(o(issuer, 5));
        }
        assert!(!many.may_hold(o(100, 5)));
        many.add(o(100, 5));
        assert!(
            many.may_hold(o(1000, 1)),
            "past its bound it holds anything"
        );
        let mut unordered = f.clone();
        unordered.add(None);
        assert!(unordered.may_hold(o(9, 9)));
        union.merge(&unordered);
        assert!(union.may_hold(o(9, 9)));
    }

    /// Keys that all share one hash, so that every run's filter says "maybe" for each: only
    /// the fences tell the runs apart. Segment `s` < 4 holds counts `10s..10s + 9` of issuer
    /// 1; segment 4 one key without an ordinal; segment 5, open, counts 50-51.
    fn fenced_table(dir: &Path) -> KeyTable {
        let mut t = KeyTable::new(dir, "fenced", Gate::None, test_hash(dir));
        for segment in 0..6u32 {
            let keys: Vec<Option<Ordinal>> = match segment {
                4 => vec![None],
                5 => (50..52).map(|n| Some(Ordinal { issuer: 1, n })).collect(),
                _ => (0..10)
                    .map(|i| {
                        Some(Ordinal {
                            issuer: 1,
                            n: u64::from(segment) * 10 + i,
                        })
                    })
                    .collect(),
            };
            for (i, ordinal) in keys.into_iter().enumerate() {
                t.insert(7, ordinal, Loc::new(segment, 100 + i as u64 * 10), 0)
                    .unwrap();
            }
            if segment < 5 {
                t.close_segment().unwrap();
            }
        }
        t
    }

    #[test]
    fn a_lookup_with_an_ordinal_asks_only_the_runs_whose_fences_may_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = fenced_table(dir.path());
        let saved = {
            let mut buf = Vec::new();
            t.save(&mut Out(&mut buf));
            buf
        };
        let mut kept = KeyTable::new(dir.path(), "fenced", Gate::None, test_hash(dir.path()));
        kept.restore(&mut In::new(&saved)).unwrap();
        let segments_of = |t: &KeyTable, ordinal| {
            let mut segments: Vec<u32> = t
                .candidates_of(7, ordinal)
                .unwrap()
                .iter()
                .map(|l| l.segment())
                .collect();
            segments.dedup();
            segments
        };
        let o = |issuer, n| Some(Ordinal { issuer, n });
        for t in [&t, &kept] {
            // Without an ordinal, or with one of no fence: the open segment and every run.
            assert_eq!(segments_of(t, None), vec![5, 4, 3, 2, 1, 0]);
            // A count inside one run's fence: that run, the unfenced one, the open segment.
            assert_eq!(segments_of(t, o(1, 25)), vec![5, 4, 2]);
            assert_eq!(segments_of(t, o(1, 0)), vec![5, 4, 0]);
            // A count past every fence (a new key), or another issuer's: no fenced run.
            assert_eq!(segments_of(t, o(1, 52)), vec![5, 4]);
            assert_eq!(segments_of(t, o(2, 25)), vec![5, 4]);
            // Every key is found with its own ordinal.
            for segment in 0..4u32 {
                for i in 0..10u64 {
                    let at = Loc::new(segment, 100 + i * 10);
                    let n = u64::from(segment) * 10 + i;
                    assert!(t.candidates_of(7, o(1, n)).unwrap().contains(&at), "{n}");
                }
            }
        }
    }

    #[test]
    fn keys_sharing_a_hash_are_all_candidates_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = KeyTable::new(dir.path(), "test", Gate::Filter, test_hash(dir.path()));
        // 600 entries of one hash span three pages of the run, then two more in memory.
        for i in 0..600 {
            t.insert(7, None, Loc::new(0, i), 0).unwrap();
        }
        t.insert(3, None, Loc::new(0, 600), 0).unwrap();
        t.close_segment().unwrap();
        t.insert(7, None, Loc::new(1, 5), 0).unwrap();
        t.insert(7, None, Loc::new(1, 9), 0).unwrap();
        let found = t.candidates(7).unwrap();
        assert_eq!(found.len(), 602);
        assert_eq!(found[0], Loc::new(1, 9));
        assert_eq!(found[1], Loc::new(1, 5));
        assert_eq!(found[601], Loc::new(0, 0));
        assert_eq!(t.candidates(3).unwrap(), vec![Loc::new(0, 600)]);
    }

    #[test]
    fn the_log_order_is_read_back_from_any_point_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path(), 700);
        let all = t.order_from(Loc::new(0, 0), usize::MAX).unwrap();
        assert_eq!(all.len(), 2100);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(all.iter().enumerate().all(|(n, (_, c))| *c == n as i64));
        let from = Loc::new(1, 100 + 300 * 10);
        let some = t.order_from(from, 500).unwrap();
        assert_eq!(some.len(), 500);
        assert_eq!(some[0], (from, 1000));
        assert_eq!(some[499].1, 1499);
    }

    #[test]
    fn a_changed_byte_in_a_run_is_named_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path(), 1000);
        let path = dir.path().join("0000000001.test");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        // Page 0 of segment 1's run holds the smallest hashes; look every key up.
        let errors = (0..1000u64)
            .filter(|n| t.candidates(t.hash(&["t", &format!("k{n}")])).is_err())
            .count();
        assert!(errors > 0);
        let e = (0..1000u64)
            .find_map(|n| t.candidates(t.hash(&["t", &format!("k{n}")])).err())
            .unwrap();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }

    #[test]
    fn a_key_out_of_log_order_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = KeyTable::new(dir.path(), "test", Gate::Filter, test_hash(dir.path()));
        t.insert(1, None, Loc::new(0, 50), 0).unwrap();
        assert!(t.insert(2, None, Loc::new(0, 40), 0).is_err());
        assert!(t.insert(2, None, Loc::new(1, 60), 0).is_err());
    }

    #[test]
    fn a_lookup_offers_the_newest_first_and_stops_at_the_first_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = KeyTable::new(dir.path(), "test", Gate::Filter, test_hash(dir.path()));
        for segment in 0..4u32 {
            t.insert(7, None, Loc::new(segment, 10), 0).unwrap();
            t.insert(8, None, Loc::new(segment, 20), 0).unwrap();
            if segment < 3 {
                t.close_segment().unwrap();
            }
        }
        let mut offered = Vec::new();
        let accepted = t
            .find_newest(7, None, |loc| {
                offered.push(loc);
                Ok((loc.segment() == 1).then_some(loc))
            })
            .unwrap();
        assert_eq!(accepted, Some(Loc::new(1, 10)));
        // The open segment, then the runs newest first; segment 0's run was never read.
        assert_eq!(
            offered,
            vec![Loc::new(3, 10), Loc::new(2, 10), Loc::new(1, 10)]
        );
        assert_eq!(t.find_newest(7, None, |_| Ok(None::<()>)).unwrap(), None);
    }

    #[test]
    fn runs_of_many_sizes_stack_and_every_key_is_found_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = KeyTable::new(dir.path(), "test", Gate::None, test_hash(dir.path()));
        // 85 segments: 70 runs of 20 keys (more than a stack holds), then 10 of 300 (too many
        // for the first stacks' filters), then 5 of 20 again.
        let sizes: Vec<u64> = (0..85)
            .map(|s| if (70..80).contains(&s) { 300 } else { 20 })
            .collect();
        let mut n = 0u64;
        let mut placed = Vec::new();
        for (segment, size) in sizes.iter().enumerate() {
            for i in 0..*size {
                let loc = Loc::new(segment as u32, 100 + i * 10);
                t.insert(t.hash(&["t", &format!("k{n}")]), None, loc, n as i64)
                    .unwrap();
                placed.push(loc);
                n += 1;
            }
            t.close_segment().unwrap();
        }
        assert_eq!(t.runs().count(), 85);
        let layers: Vec<usize> = t.stacks.iter().map(|s| s.runs.len()).collect();
        assert_eq!(layers, vec![RUNS_PER_STACK, 6, 10, 5]);
        for (n, loc) in placed.iter().enumerate() {
            let h = t.hash(&["t", &format!("k{n}")]);
            let found = t
                .find_newest(h, None, |l| Ok((l == *loc).then_some(l)))
                .unwrap();
            assert_eq!(found, Some(*loc), "k{n}");
        }
        let order = t.order_from(Loc::new(0, 0), usize::MAX).unwrap();
        assert_eq!(order.len(), placed.len());
        assert!(order.iter().zip(&placed).all(|((l, _), p)| l == p));

        // Dropping the runs before segment 66 empties the first stack (its memory goes) and
        // part of the second; their files go, and their keys are no longer offered.
        t.drop_before(66);
        assert_eq!(t.runs().count(), 85 - 66);
        assert_eq!(t.stacks.len(), 3);
        assert!(!dir.path().join("0000000001.test").exists());
        assert!(!dir.path().join("0000000066.test").exists());
        assert!(dir.path().join("0000000067.test").exists());
        for (n, loc) in placed.iter().enumerate() {
            let h = t.hash(&["t", &format!("k{n}")]);
            let found = t
                .find_newest(h, None, |l| Ok((l == *loc).then_some(l)))
                .unwrap();
            assert_eq!(found.is_some(), loc.segment() >= 66, "k{n}");
        }
    }

    #[test]
    fn runs_reopened_from_their_files_answer_as_the_table_that_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let hash = test_hash(dir.path());
        let mut t = KeyTable::new(dir.path(), "test", Gate::None, hash);
        // Stacks of two shapes (runs of 20 and of 300 keys), some runs dropped, two keys
        // sharing a hash across runs, and an open segment whose keys stay in memory.
        let mut n = 0u64;
        let mut keys = Vec::new();
        for segment in 0..40u32 {
            let size = if (30..34).contains(&segment) { 300 } else { 20 };
            for i in 0..size {
                let key = format!("k{n}");
                let loc = Loc::new(segment, 100 + i * 10);
                t.insert(t.hash(&["t", &key]), None, loc, n as i64).unwrap();
                keys.push(key);
                n += 1;
            }
            if segment % 7 == 3 {
                t.insert(
                    t.hash(&["t", "shared"]),
                    None,
                    Loc::new(segment, 100 + size * 10),
                    0,
                )
                .unwrap();
            }
            if segment < 39 {
                t.close_segment().unwrap();
            }
        }
        t.drop_before(5);
        let plan = t.stack_plan();
        assert!(plan.len() >= 3, "{plan:?}");
        assert!(plan[0].layers[..5].iter().all(Option::is_none));
        let answers = |t: &KeyTable| {
            let mut all: Vec<Vec<Loc>> = keys
                .iter()
                .chain(std::iter::once(&"shared".to_owned()))
                .chain(
                    (0..2_000)
                        .map(|i| format!("new{i}"))
                        .collect::<Vec<_>>()
                        .iter(),
                )
                .map(|k| t.candidates(t.hash(&["t", k])).unwrap())
                .collect();
            all.push(
                t.order_from(Loc::new(0, 0), usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|(l, _)| l)
                    .collect(),
            );
            all
        };
        // The open segment's keys are not in runs: compare what the closed ones answer.
        let mut closed = KeyTable::new(dir.path(), "test", Gate::None, hash);
        closed.reopen_runs(&plan, 39).unwrap();
        let mut written = KeyTable::new(dir.path(), "test", Gate::None, hash);
        written.stacks = std::mem::take(&mut t.stacks);
        written.open_segment = 39;
        let expected = answers(&written);
        assert!(expected.iter().filter(|c| !c.is_empty()).count() > 600);
        assert_eq!(answers(&closed), expected);
        assert_eq!(closed.stack_plan(), plan);

        // Another hash, another stack shape, a changed footer byte: named, nothing kept.
        let mut other = KeyTable::new(
            dir.path(),
            "test",
            Gate::None,
            test_hash(&dir.path().join("x")),
        );
        assert!(matches!(
            other.reopen_runs(&plan, 39),
            Err(Error::Corrupt { .. })
        ));
        let mut reshaped = plan.clone();
        reshaped[0].capacity += 1;
        let mut t2 = KeyTable::new(dir.path(), "test", Gate::None, hash);
        assert!(matches!(
            t2.reopen_runs(&reshaped, 39),
            Err(Error::Corrupt { .. })
        ));
        let path = dir.path().join("0000000010.test");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - RUN_FOOTER_BYTES - 3;
        bytes[at] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let mut t3 = KeyTable::new(dir.path(), "test", Gate::None, hash);
        assert!(matches!(
            t3.reopen_runs(&plan, 39),
            Err(Error::Corrupt { .. })
        ));
        assert!(t3.stacks.is_empty());
    }
}
