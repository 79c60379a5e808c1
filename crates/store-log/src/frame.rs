//! The on-disk format: records, each in a checksummed frame, grouped into batches.
//!
//! A frame is `length (u32 LE) | crc32c (u32 LE) | kind (u8) | payload`, where `length` counts
//! the kind byte and the payload and the CRC covers both. A batch is one `Begin` frame (its number
//! and the byte length of everything after it, through its `End`), the records of its commits,
//! and one `End` frame (the audit head after it). A batch is written with one `write` and synced
//! with one `fdatasync`; a batch without its `End` is not part of the log.
//!
//! Payload fields are little-endian integers, 32-byte hashes, and byte strings prefixed by their
//! `u32` length. Nothing here knows what the bytes mean.

use marketgov_audit::{Checkpoint, Hash};
use marketgov_store::VersionedTable;

/// Bytes before a frame's kind: its length and its CRC.
pub const FRAME_HEADER_BYTES: usize = 8;
/// A frame's payload is at most this long (a larger length is corruption, not an allocation).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The `Begin` frame's whole size: header, kind, batch number, length.
pub const BEGIN_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 1 + 8 + 8;

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Opens a batch: its number and the bytes after this frame through its `End`.
    Begin { batch: u64, length: u64 },
    /// A logged event with its audit entry, and where the stream's previous event is
    /// (`prev`, see [`StreamPrev`]).
    Event {
        seq: u64,
        stream: String,
        version: u64,
        prev: u64,
        event_id: String,
        at_ms: i64,
        prev_hash: Hash,
        hash: Hash,
        body: Vec<u8>,
    },
    /// A stream's snapshot (replaces the previous one).
    Snapshot {
        stream: String,
        version: u64,
        body: Vec<u8>,
    },
    /// An idempotency record.
    IdempotencyPut {
        tenant: String,
        key: String,
        operation: String,
        fingerprint: Hash,
        created_at_ms: i64,
        response: Vec<u8>,
    },
    /// An idempotency record removed (expired, and its key used again): the key, and where
    /// the record removed is (a packed location).
    IdempotencyDelete {
        tenant: String,
        key: String,
        at: u64,
    },
    /// Idempotency records swept: every one before the location `before` (packed) is gone;
    /// `passed` records lay between the previous sweep's `before` and this one's.
    IdempotencySwept { before: u64, passed: u64 },
    /// A timer set or moved.
    TimerSet {
        stream: String,
        kind: String,
        due_at_ms: i64,
    },
    /// A timer removed.
    TimerCancel { stream: String, kind: String },
    /// An effect queued.
    OutboxPut {
        id: i64,
        effect_key: String,
        stream: String,
        connector: String,
        not_before_ms: i64,
        body: Vec<u8>,
    },
    /// An effect applied. Updates of an effect name it by key and by where it was queued
    /// (`at`, a packed location).
    OutboxDone { at: u64, effect_key: String },
    /// An effect failed, to be tried again.
    OutboxRetry {
        at: u64,
        effect_key: String,
        attempts: u32,
        next_attempt_ms: i64,
        error: String,
    },
    /// An effect given up.
    OutboxDead {
        at: u64,
        effect_key: String,
        error: String,
    },
    /// A versioned record written.
    Versioned {
        table: VersionedTable,
        key: String,
        version: u64,
        body: Vec<u8>,
    },
    /// A signed checkpoint of the audit chain.
    Checkpoint(Checkpoint),
    /// Closes a batch: the audit head after it.
    End { batch: u64, seq: u64, hash: Hash },
}

/// Where a stream's previous event is, as an event frame stores it: nowhere (the first event),
/// at a location, or earlier in the same batch, so many bytes before this frame (a batch's
/// location is not known while it is built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPrev {
    First,
    At(u64),
    InBatch(u64),
}

impl StreamPrev {
    /// The flag of [`StreamPrev::InBatch`] (packed locations stay below it: segments number
    /// fewer than 2^23).
    const IN_BATCH: u64 = 1 << 63;

    pub fn encode(self) -> u64 {
        match self {
            Self::First => 0,
            Self::At(raw) => raw,
            Self::InBatch(back) => Self::IN_BATCH | back,
        }
    }

    /// The packed location of the previous event (`None`: there is none), for a frame at
    /// `here`; an error when it would not lie before `here`.
    pub fn resolve(stored: u64, here: u64) -> Result<Option<u64>, String> {
        let prev = if stored == 0 {
            return Ok(None);
        } else if stored & Self::IN_BATCH != 0 {
            here.checked_sub(stored & !Self::IN_BATCH)
        } else {
            Some(stored)
        };
        match prev {
            Some(p) if p < here => Ok(Some(p)),
            _ => Err(format!("a stream's previous event is not before {here}")),
        }
    }
}

mod kind {
    pub const BEGIN: u8 = 1;
    pub const EVENT: u8 = 2;
    pub const SNAPSHOT: u8 = 3;
    pub const IDEMPOTENCY_PUT: u8 = 4;
    pub const IDEMPOTENCY_DELETE: u8 = 5;
    pub const TIMER_SET: u8 = 6;
    pub const TIMER_CANCEL: u8 = 7;
    pub const OUTBOX_PUT: u8 = 8;
    pub const OUTBOX_DONE: u8 = 9;
    pub const OUTBOX_RETRY: u8 = 10;
    pub const OUTBOX_DEAD: u8 = 11;
    pub const VERSIONED: u8 = 12;
    pub const CHECKPOINT: u8 = 13;
    pub const END: u8 = 14;
    pub const IDEMPOTENCY_SWEPT: u8 = 15;
}

pub fn table_code(table: VersionedTable) -> u8 {
    match table {
        VersionedTable::Sequences => 1,
        VersionedTable::Cases => 2,
        VersionedTable::Inventory => 3,
        VersionedTable::Review => 4,
        VersionedTable::ApiKeys => 5,
    }
}

fn table_of(code: u8) -> Option<VersionedTable> {
    Some(match code {
        1 => VersionedTable::Sequences,
        2 => VersionedTable::Cases,
        3 => VersionedTable::Inventory,
        4 => VersionedTable::Review,
        5 => VersionedTable::ApiKeys,
        _ => return None,
    })
}

/// Where [`Out`] puts its bytes: a buffer (frames), or a file written as it goes (the index
/// kept at a clean stop, index_at_close.rs, which at 10^7 events would be a 91 MB buffer).
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Appends frames to a buffer (and the index kept at a clean stop: index_at_close.rs).
pub(crate) struct Out<'a, S: Sink = Vec<u8>>(pub &'a mut S);

impl<S: Sink> Out<'_, S> {
    pub fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.put(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.put(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.put(&v.to_le_bytes());
    }
    pub fn hash(&mut self, h: &Hash) {
        self.0.put(h);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        // Bodies are bounded far below 4 GiB by the engine (request bodies are limited); a
        // longer one would not fit the frame anyway and is refused before it gets here.
        self.u32(b.len() as u32);
        self.0.put(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
}

/// Appends `record` as one frame to `buf`; returns the frame's offset in `buf`.
pub fn encode(record: &Record, buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let mut o = Out(buf);
    match record {
        Record::Begin { batch, length } => {
            o.u8(kind::BEGIN);
            o.u64(*batch);
            o.u64(*length);
        }
        Record::Event {
            seq,
            stream,
            version,
            prev,
            event_id,
            at_ms,
            prev_hash,
            hash,
            body,
        } => {
            o.u8(kind::EVENT);
            o.u64(*seq);
            o.str(stream);
            o.u64(*version);
            o.u64(*prev);
            o.str(event_id);
            o.i64(*at_ms);
            o.hash(prev_hash);
            o.hash(hash);
            o.bytes(body);
        }
        Record::Snapshot {
            stream,
            version,
            body,
        } => {
            o.u8(kind::SNAPSHOT);
            o.str(stream);
            o.u64(*version);
            o.bytes(body);
        }
        Record::IdempotencyPut {
            tenant,
            key,
            operation,
            fingerprint,
            created_at_ms,
            response,
        } => {
            o.u8(kind::IDEMPOTENCY_PUT);
            o.str(tenant);
            o.str(key);
            o.str(operation);
            o.hash(fingerprint);
            o.i64(*created_at_ms);
            o.bytes(response);
        }
        Record::IdempotencyDelete { tenant, key, at } => {
            o.u8(kind::IDEMPOTENCY_DELETE);
            o.str(tenant);
            o.str(key);
            o.u64(*at);
        }
        Record::IdempotencySwept { before, passed } => {
            o.u8(kind::IDEMPOTENCY_SWEPT);
            o.u64(*before);
            o.u64(*passed);
        }
        Record::TimerSet {
            stream,
            kind: k,
            due_at_ms,
        } => {
            o.u8(kind::TIMER_SET);
            o.str(stream);
            o.str(k);
            o.i64(*due_at_ms);
        }
        Record::TimerCancel { stream, kind: k } => {
            o.u8(kind::TIMER_CANCEL);
            o.str(stream);
            o.str(k);
        }
        Record::OutboxPut {
            id,
            effect_key,
            stream,
            connector,
            not_before_ms,
            body,
        } => {
            o.u8(kind::OUTBOX_PUT);
            o.i64(*id);
            o.str(effect_key);
            o.str(stream);
            o.str(connector);
            o.i64(*not_before_ms);
            o.bytes(body);
        }
        Record::OutboxDone { at, effect_key } => {
            o.u8(kind::OUTBOX_DONE);
            o.u64(*at);
            o.str(effect_key);
        }
        Record::OutboxRetry {
            at,
            effect_key,
            attempts,
            next_attempt_ms,
            error,
        } => {
            o.u8(kind::OUTBOX_RETRY);
            o.u64(*at);
            o.str(effect_key);
            o.u32(*attempts);
            o.i64(*next_attempt_ms);
            o.str(error);
        }
        Record::OutboxDead {
            at,
            effect_key,
            error,
        } => {
            o.u8(kind::OUTBOX_DEAD);
            o.u64(*at);
            o.str(effect_key);
            o.str(error);
        }
        Record::Versioned {
            table,
            key,
            version,
            body,
        } => {
            o.u8(kind::VERSIONED);
            o.u8(table_code(*table));
            o.str(key);
            o.u64(*version);
            o.bytes(body);
        }
        Record::Checkpoint(c) => {
            o.u8(kind::CHECKPOINT);
            o.u64(c.seq);
            o.str(&c.hash);
            o.str(&c.signature);
        }
        Record::End { batch, seq, hash } => {
            o.u8(kind::END);
            o.u64(*batch);
            o.u64(*seq);
            o.hash(hash);
        }
    }
    seal(buf, start);
    start
}

/// Writes the length and CRC of the frame starting at `start` (its kind and payload follow).
pub fn seal(buf: &mut [u8], start: usize) {
    let body = &buf[start + FRAME_HEADER_BYTES..];
    let length = body.len() as u32;
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&length.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than the frame claims: the end of what was written.
    Short,
    /// The bytes are all there and do not check out.
    Invalid(String),
}

/// The length of the frame whose header is `header`, or why it cannot be one.
pub fn frame_length(header: &[u8]) -> Result<usize, Bad> {
    let Some(len) = header.get(..4) else {
        return Err(Bad::Short);
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(Bad::Invalid(format!("frame length {len}")));
    }
    Ok(FRAME_HEADER_BYTES + len)
}

/// Decodes the frame at the start of `bytes`: the record and the frame's whole length.
pub fn decode(bytes: &[u8]) -> Result<(Record, usize), Bad> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(Bad::Short);
    }
    let total = frame_length(bytes)?;
    let Some(body) = bytes.get(FRAME_HEADER_BYTES..total) else {
        return Err(Bad::Short);
    };
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if crc32c::crc32c(body) != crc {
        return Err(Bad::Invalid("CRC mismatch".into()));
    }
    let mut i = In { b: body, at: 1 };
    let record = match body[0] {
        kind::BEGIN => Record::Begin {
            batch: i.u64()?,
            length: i.u64()?,
        },
        kind::EVENT => Record::Event {
            seq: i.u64()?,
            stream: i.str()?,
            version: i.u64()?,
            prev: i.u64()?,
            event_id: i.str()?,
            at_ms: i.i64()?,
            prev_hash: i.hash()?,
            hash: i.hash()?,
            body: i.bytes()?,
        },
        kind::SNAPSHOT => Record::Snapshot {
            stream: i.str()?,
            version: i.u64()?,
            body: i.bytes()?,
        },
        kind::IDEMPOTENCY_PUT => Record::IdempotencyPut {
            tenant: i.str()?,
            key: i.str()?,
            operation: i.str()?,
            fingerprint: i.hash()?,
            created_at_ms: i.i64()?,
            response: i.bytes()?,
        },
        kind::IDEMPOTENCY_DELETE => Record::IdempotencyDelete {
            tenant: i.str()?,
            key: i.str()?,
            at: i.u64()?,
        },
        kind::IDEMPOTENCY_SWEPT => Record::IdempotencySwept {
            before: i.u64()?,
            passed: i.u64()?,
        },
        kind::TIMER_SET => Record::TimerSet {
            stream: i.str()?,
            kind: i.str()?,
            due_at_ms: i.i64()?,
        },
        kind::TIMER_CANCEL => Record::TimerCancel {
            stream: i.str()?,
            kind: i.str()?,
        },
        kind::OUTBOX_PUT => Record::OutboxPut {
            id: i.i64()?,
            effect_key: i.str()?,
            stream: i.str()?,
            connector: i.str()?,
            not_before_ms: i.i64()?,
            body: i.bytes()?,
        },
        kind::OUTBOX_DONE => Record::OutboxDone {
            at: i.u64()?,
            effect_key: i.str()?,
        },
        kind::OUTBOX_RETRY => Record::OutboxRetry {
            at: i.u64()?,
            effect_key: i.str()?,
            attempts: i.u32()?,
            next_attempt_ms: i.i64()?,
            error: i.str()?,
        },
        kind::OUTBOX_DEAD => Record::OutboxDead {
            at: i.u64()?,
            effect_key: i.str()?,
            error: i.str()?,
        },
        kind::VERSIONED => {
            let code = i.u8()?;
            Record::Versioned {
                table: table_of(code)
                    .ok_or_else(|| Bad::Invalid(format!("versioned table code {code}")))?,
                key: i.str()?,
                version: i.u64()?,
                body: i.bytes()?,
            }
        }
        kind::CHECKPOINT => Record::Checkpoint(Checkpoint {
            seq: i.u64()?,
            hash: i.str()?,
            signature: i.str()?,
        }),
        kind::END => Record::End {
            batch: i.u64()?,
            seq: i.u64()?,
            hash: i.hash()?,
        },
        other => return Err(Bad::Invalid(format!("record kind {other}"))),
    };
    if i.at != body.len() {
        return Err(Bad::Invalid(format!(
            "{} bytes after the record",
            body.len() - i.at
        )));
    }
    Ok((record, total))
}

/// Reads a frame's payload; every read is bounds-checked (a CRC-valid frame of a foreign or
/// future format must still fail cleanly).
pub(crate) struct In<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> In<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    /// Whether every byte was read.
    pub fn done(&self) -> bool {
        self.at == self.b.len()
    }
    /// A count of items that each take at least `min_bytes`: refused when the bytes left
    /// cannot hold them (a damaged count is an error, not an allocation).
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, Bad> {
        let n = usize::try_from(self.u64()?)
            .map_err(|_| Bad::Invalid("a count does not fit".into()))?;
        if n.saturating_mul(min_bytes.max(1)) > self.b.len() - self.at {
            return Err(Bad::Invalid(format!("a count of {n} runs past the end")));
        }
        Ok(n)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| Bad::Invalid("field length overflows".into()))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or_else(|| Bad::Invalid("a field runs past the frame".into()))?;
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Bad> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Bad> {
        let s = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, Bad> {
        Ok(self.u64()? as i64)
    }
    pub fn hash(&mut self) -> Result<Hash, Bad> {
        let s = self.take(32)?;
        let mut h = [0; 32];
        h.copy_from_slice(s);
        Ok(h)
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, Bad> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub fn str(&mut self) -> Result<String, Bad> {
        String::from_utf8(self.bytes()?).map_err(|_| Bad::Invalid("text is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Begin {
                batch: 7,
                length: 99,
            },
            Record::Event {
                seq: 3,
                stream: "customer:t/c1".into(),
                version: 2,
                prev: StreamPrev::InBatch(40).encode(),
                event_id: "evt-1".into(),
                at_ms: -5,
                prev_hash: [1; 32],
                hash: [2; 32],
                body: b"{\"a\":1}".to_vec(),
            },
            Record::Snapshot {
                stream: "s".into(),
                version: 9,
                body: vec![],
            },
            Record::IdempotencyPut {
                tenant: "t".into(),
                key: "k".into(),
                operation: "op".into(),
                fingerprint: [3; 32],
                created_at_ms: 12,
                response: b"r".to_vec(),
            },
            Record::IdempotencyDelete {
                tenant: "t".into(),
                key: "k".into(),
                at: 77,
            },
            Record::IdempotencySwept {
                before: 1 << 41,
                passed: 3,
            },
            Record::TimerSet {
                stream: "s".into(),
                kind: "renewal".into(),
                due_at_ms: 100,
            },
            Record::TimerCancel {
                stream: "s".into(),
                kind: "renewal".into(),
            },
            Record::OutboxPut {
                id: 4,
                effect_key: "e".into(),
                stream: "s".into(),
                connector: "c".into(),
                not_before_ms: 1,
                body: b"b".to_vec(),
            },
            Record::OutboxDone {
                at: 4,
                effect_key: "e".into(),
            },
            Record::OutboxRetry {
                at: 4,
                effect_key: "e".into(),
                attempts: 2,
                next_attempt_ms: 3,
                error: "x".into(),
            },
            Record::OutboxDead {
                at: 4,
                effect_key: "e".into(),
                error: "y".into(),
            },
            Record::Versioned {
                table: VersionedTable::ApiKeys,
                key: "k".into(),
                version: 1,
                body: b"v".to_vec(),
            },
            Record::Checkpoint(Checkpoint {
                seq: 1,
                hash: "ab".into(),
                signature: "cd".into(),
            }),
            Record::End {
                batch: 7,
                seq: 3,
                hash: [2; 32],
            },
        ]
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let mut buf = Vec::new();
        for r in samples() {
            buf.clear();
            encode(&r, &mut buf);
            assert_eq!(decode(&buf), Ok((r, buf.len())));
        }
    }

    #[test]
    fn the_begin_frame_has_its_fixed_size() {
        let mut buf = Vec::new();
        encode(
            &Record::Begin {
                batch: 1,
                length: 2,
            },
            &mut buf,
        );
        assert_eq!(buf.len(), BEGIN_FRAME_BYTES);
    }

    #[test]
    fn any_changed_byte_or_missing_tail_is_refused() {
        let mut buf = Vec::new();
        encode(&samples()[1], &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} changed and accepted");
        }
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "{n} bytes accepted");
        }
    }
}
