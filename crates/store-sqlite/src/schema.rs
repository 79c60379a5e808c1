//! Schema migrations, versioned in code. Each migration runs once, in order, inside one
//! transaction with the version bump; a store written by a newer release is refused.

use rusqlite::Connection;

use marketgov_store::Error;

use crate::storage;

/// The migrations, in order; the schema version is their count.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        stream TEXT NOT NULL,
        stream_version INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        UNIQUE (stream, stream_version)
    );
    CREATE TABLE snapshots (
        stream TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        body BLOB NOT NULL,
        sum BLOB NOT NULL
    );
    CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        key TEXT NOT NULL,
        operation TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        response BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL,
        sum BLOB NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at_ms);
    CREATE TABLE timers (
        stream TEXT NOT NULL,
        kind TEXT NOT NULL,
        due_at_ms INTEGER NOT NULL,
        PRIMARY KEY (stream, kind)
    );
    CREATE INDEX timers_due ON timers (due_at_ms);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        effect_key TEXT NOT NULL UNIQUE,
        stream TEXT NOT NULL,
        connector TEXT NOT NULL,
        body BLOB NOT NULL,
        sum BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error TEXT
    );
    CREATE INDEX outbox_ready ON outbox (state, next_attempt_ms);
    CREATE TABLE versioned (
        tbl TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        body BLOB NOT NULL,
        sum BLOB NOT NULL,
        PRIMARY KEY (tbl, key)
    );
    CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, signature TEXT NOT NULL);
    ",
    // 2: idempotency records age in insertion (rowid) order; the index by time cost an insert
    // per keyed event and only served the sweep.
    r"
    DROP INDEX idempotency_age;
    ",
    // 3: pending timers and effects are counted by the writer as it changes them and kept here,
    // in the same transactions (counting the rows took seconds with millions of them). Counted
    // once, at this upgrade.
    r"
    INSERT OR REPLACE INTO meta (key, value) VALUES
        ('pending_timers', (SELECT COUNT(*) FROM timers)),
        ('pending_outbox', (SELECT COUNT(*) FROM outbox WHERE state = 'pending'));
    ",
    // 4: due timers are read in (deadline, stream, kind) order, a page at a time. Indexed by the
    // deadline alone, every page sorted all the timers sharing the first deadline (110,807 in the
    // bench at 10^7 events: the timer service went quadratic); this index is the order itself.
    r"
    DROP INDEX timers_due;
    CREATE INDEX timers_due ON timers (due_at_ms, stream, kind);
    ",
];

/// The schema version this release writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(storage)?;
        tx.execute_batch(sql).map_err(storage)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
    }
    Ok(())
}
