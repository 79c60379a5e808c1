//! The timer service: stored deadlines fired through the ordinary decision path.
//!
//! A firing is an event like any other (written to the log); the core refuses one that does not
//! match a pending timer, and the commit that applies it removes the stored row, so each timer's
//! transition happens once. Timers due while the process was down fire at once on start.

use jiff::Timestamp;
use marketgov_core::ids::{CustomerId, Sku};
use marketgov_core::timers::TimerKind;
use marketgov_core::{CatalogCommand, CustomerEvent, EventKind};
use marketgov_store::{Store, TimerRow};

use crate::{App, Error};

/// Timers read from the store per round.
pub const TIMERS_PER_ROUND_MAX: usize = 256;
/// Firings one call may make at most: a bound against a timer that re-arms itself at once.
pub const FIRINGS_PER_CALL_MAX: usize = 100_000;

impl App {
    /// Fires every timer due at or before the clock's now, earliest first. Returns how many fired.
    pub async fn fire_due_timers(&self) -> Result<usize, Error> {
        let now = self.clock().now();
        self.fire_until(now, false).await
    }

    /// Moves a manual clock to `to`, firing every timer due on the way at its own deadline, and
    /// returns once all of them are committed. Refused for the system clock.
    pub async fn advance_clock_to(&self, to: Timestamp) -> Result<usize, Error> {
        if !self.clock().set_to(self.clock().now()) {
            return Err(Error::Setup("the clock is not manual".into()));
        }
        let fired = self.fire_until(to, true).await?;
        self.clock().set_to(to);
        Ok(fired)
    }

    async fn fire_until(&self, until: Timestamp, step_clock: bool) -> Result<usize, Error> {
        let _one_round = self.inner().timers_running.lock().await;
        let mut fired = 0;
        while fired < FIRINGS_PER_CALL_MAX {
            let due = self
                .store()
                .due_timers(until.as_millisecond(), TIMERS_PER_ROUND_MAX)?;
            if due.is_empty() {
                break;
            }
            let mut progressed = false;
            // Rows come ordered by deadline, then stream: the timers of one deadline fire
            // together (one task per stream, its timers in order), deadlines one after another.
            let mut rows = due.into_iter().peekable();
            while let Some(first) = rows.next() {
                let Ok(due_at) = Timestamp::from_millisecond(first.due_at_ms) else {
                    continue;
                };
                let mut group = vec![first];
                while let Some(row) = rows.next_if(|r| r.due_at_ms == due_at.as_millisecond()) {
                    group.push(row);
                }
                if step_clock && due_at > self.clock().now() {
                    // Fire at the deadline, like a process that was running all along.
                    self.clock().set_to(due_at);
                }
                fired += group.len();
                if self.fire_together(group, due_at).await? {
                    progressed = true;
                }
            }
            if !progressed {
                // Nothing could be fired (all refused and removed, or unknown): stop, never spin.
                break;
            }
        }
        Ok(fired)
    }

    /// Fires timers of one deadline (at most [`TIMERS_PER_ROUND_MAX`]) concurrently, one task per
    /// stream, so their commits share batches like any other events; answers whether the store
    /// changed. Every task is awaited before an error is returned.
    async fn fire_together(&self, group: Vec<TimerRow>, due_at: Timestamp) -> Result<bool, Error> {
        debug_assert!(group.len() <= TIMERS_PER_ROUND_MAX);
        let mut by_stream: Vec<Vec<TimerRow>> = Vec::new();
        for row in group {
            match by_stream.last_mut() {
                Some(rows) if rows.first().is_some_and(|r| r.stream == row.stream) => {
                    rows.push(row)
                }
                _ => by_stream.push(vec![row]),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for rows in by_stream {
            let app = self.clone();
            tasks.spawn(async move {
                let mut changed = false;
                for row in rows {
                    changed |= app.fire(&row, due_at).await?;
                }
                Ok::<bool, Error>(changed)
            });
        }
        let mut changed = false;
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(c)) => changed |= c,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(Error::Setup(format!("a timer task failed: {e}")));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// Fires one stored timer; answers whether the store changed.
    async fn fire(&self, row: &TimerRow, due_at: Timestamp) -> Result<bool, Error> {
        let Some(timer) = TimerKind::ALL.into_iter().find(|k| k.name() == row.kind) else {
            return self.drop_timer(row).await;
        };
        if let Some((tenant, id)) = row
            .stream
            .strip_prefix("customer:")
            .and_then(|s| s.split_once('/'))
        {
            let Ok(customer_id) = CustomerId::new(id) else {
                return self.drop_timer(row).await;
            };
            let event = CustomerEvent {
                customer_id,
                occurred_at: None,
                kind: EventKind::TimerFired { timer, due_at },
            };
            self.submit_event(tenant, None, event).await?;
            return Ok(true);
        }
        if let Some((tenant, sku)) = row
            .stream
            .strip_prefix("product:")
            .and_then(|s| s.split_once('/'))
        {
            let Ok(sku) = Sku::new(sku) else {
                return self.drop_timer(row).await;
            };
            self.submit_catalog(
                tenant,
                None,
                CatalogCommand::TimerFired { sku, timer, due_at },
            )
            .await?;
            return Ok(true);
        }
        self.drop_timer(row).await
    }

    /// Removes a stored timer nothing can fire (an unknown kind or stream): logged as refused by
    /// nobody, it would otherwise stay due forever.
    async fn drop_timer(&self, row: &TimerRow) -> Result<bool, Error> {
        let commit = marketgov_store::Commit {
            timers: vec![marketgov_store::TimerWrite::Cancel {
                stream: row.stream.clone(),
                kind: row.kind.clone(),
            }],
            ..Default::default()
        };
        let ack = self.store().commit(commit)?;
        ack.await.map_err(|_| Error::ShuttingDown)??;
        Ok(true)
    }
}
