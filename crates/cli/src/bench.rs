//! `marketgov bench`: a deterministic (seeded) customer-lifecycle workload (SPEC 5), either in
//! process on a fresh embedded store (`--mode inproc`, the default) or against a running server
//! over keep-alive HTTP (`--target http://HOST:PORT`), every acknowledgement synced either way.
//!
//! Each customer's events run in order (subscribe; payment processed; the same request again
//! with the same idempotency key, which must come back marked as a replay; the same payment
//! again under a new key, which the billing governor must absorb; usage over quota; an upgrade
//! with proration; its payment; a renewal; for one in ten a failed payment that starts the retry
//! schedule; cancel); customers run concurrently. In process, the failed payments then climb the
//! whole retry schedule: the bench moves its manual clock past each wait (1 h, 3 h, 1 day), the
//! engine's timers fire the retries (their firings are counted as events), the processor reports
//! each retry failed until the customer is in collections (checked), then the customer pays and
//! cancels. Over HTTP the server's clock is real and its connectors settle charges themselves, so
//! a failed payment is followed by the cancel there. Every answer is checked against what its step
//! must produce, so speed never hides wrong answers: a wrong one is counted by kind and makes the
//! command fail. Connectors do not run in process: this measures deciding and committing.
//!
//! Load is closed-loop (`--concurrency` customers in flight), or paced (`--rate` events per
//! second over all workers); when paced, latency is measured from each event's scheduled send
//! time, so a server that falls behind shows its queueing in the figures.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use marketgov_core::ids::{CustomerId, PaymentId, Resource, Sku, SubscriptionId};
use marketgov_core::money::Currency;
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::{CustomerEvent, EventKind, Input, InputError};
use marketgov_engine::{App, EngineOptions, Histogram, ManualClock};
use serde_json::{json, Value};

/// What the bench is asked to do.
#[derive(Debug)]
pub struct Settings {
    pub customers: usize,
    pub concurrency: usize,
    pub seed: u64,
    pub json: bool,
    pub data_dir: Option<PathBuf>,
    pub shards: usize,
    pub streams_in_memory_max: usize,
    pub snapshot_every_events: u64,
    pub snapshot_on_eviction_events: u64,
    /// `http://HOST:PORT` of a running server; `None`: in process.
    pub target: Option<String>,
    pub api_key: Option<String>,
    /// Events per second over all workers; `None`: as fast as answers come.
    pub rate: Option<u64>,
    /// The embedded store of an in-process run.
    pub store: marketgov_engine::StoreKind,
    /// The log-structured store writes past the page cache (`EngineOptions::log_direct_writes`).
    pub direct_writes: bool,
}

/// The tenant of the in-process run (over HTTP, the API key's tenant).
const TENANT: &str = "bench";

/// One step of a customer's script and the statuses it may answer.
struct Step {
    event: CustomerEvent,
    allowed: &'static [EventStatus],
    /// Sent with the previous step's idempotency key: must be answered as a replay of it.
    replays_previous: bool,
}

fn rng(seed: u64, customer: usize) -> u64 {
    let mut z = seed.wrapping_add((customer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which part of the workload a pass over the customers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Each customer's lifecycle; with the retry ladder, the customers whose payment fails stop
    /// at that failure (their retry timer pending).
    Lifecycle,
    /// After the clock has moved past the k-th retry's wait (1 h, 3 h, 1 day) and the timer
    /// has fired the retry (`processing`): the processor reports that attempt k+1 failed too.
    Rung(u8),
    /// The customer in collections pays what is due, then cancels.
    Settle,
}

/// Latency records the worker slots share, at most (slot `i` records into `i % this`): few
/// enough to stay in the cache, enough that two runtime threads seldom want the same one.
const LATENCY_RECORDS_MAX: usize = 8;

/// Calls of `advance_clock_to` per rung at most (each fires up to
/// `marketgov_engine::FIRINGS_PER_CALL_MAX` timers).
const LADDER_ADVANCE_CALLS_MAX: usize = 1_000;
/// The waits of the retry ladder the clock is moved through before each [`Pass::Rung`], in
/// seconds (SPEC 2.2: 1 h, 3 h, 1 day).
const LADDER_WAITS_SECONDS: [i64; 3] = [3_600, 3 * 3_600, 24 * 3_600];

/// The passes of a run: with the ladder (in process, on the bench's manual clock), failed
/// payments climb the whole retry schedule through the engine's timers.
fn passes(ladder: bool) -> Vec<Pass> {
    if ladder {
        vec![
            Pass::Lifecycle,
            Pass::Rung(1),
            Pass::Rung(2),
            Pass::Rung(3),
            Pass::Settle,
        ]
    } else {
        vec![Pass::Lifecycle]
    }
}

/// Customer `i`'s steps in `pass`. `connectors_live`: a server's connectors run beside the
/// workload (over HTTP), so the sandbox may settle the renewal invoice before the failed payment
/// arrives, which then refuses it. `ladder`: failed payments go on through the retry passes.
fn script(
    seed: u64,
    c: &str,
    i: usize,
    connectors_live: bool,
    pass: Pass,
    ladder: bool,
) -> Result<Vec<Step>, InputError> {
    use EventStatus as S;
    let r = rng(seed, i);
    let fails = r.is_multiple_of(10);
    if matches!(pass, Pass::Rung(_) | Pass::Settle) && !(ladder && fails) {
        // Most customers have no step in the ladder's passes: nothing to build for them (the
        // ids below were a percent of the run's instructions).
        return Ok(Vec::new());
    }
    let ok: &'static [EventStatus] = &[S::Completed];
    let id = CustomerId::new(c)?;
    let usd = Currency::new("USD")?;
    let (basic, pro) = (Sku::new("basic")?, Sku::new("pro")?);
    // Built typed, as an in-process caller would; sent over HTTP as their JSON.
    let step = |kind: EventKind, allowed: &'static [EventStatus]| Step {
        event: CustomerEvent {
            customer_id: id.clone(),
            occurred_at: None,
            kind,
        },
        allowed,
        replays_previous: false,
    };
    let payment = |amount: i64, n: &str| -> Result<EventKind, InputError> {
        Ok(EventKind::PaymentProcessed {
            amount,
            currency: usd.clone(),
            payment_id: PaymentId::new(format!("{c}-{n}"))?,
        })
    };
    let cancel = || {
        step(
            EventKind::CustomerCancels {
                reason: None,
                at_period_end: false,
            },
            ok,
        )
    };
    match pass {
        Pass::Lifecycle => {}
        Pass::Rung(k) => {
            return Ok(vec![step(
                EventKind::PaymentFailed {
                    reason: "card_declined".into(),
                    payment_id: PaymentId::new(format!("{c}-f{}", k + 1))?,
                    hard_decline: false,
                },
                ok,
            )])
        }
        Pass::Settle => return Ok(vec![step(payment(2000, "p3")?, ok), cancel()]),
    }
    let mut steps = vec![
        step(
            EventKind::CustomerSubscribes {
                sku: basic.clone(),
                marketplace: None,
            },
            ok,
        ),
        step(payment(1000, "p1")?, ok),
        // The client retries the same request (same key): the stored answer, marked a replay.
        Step {
            replays_previous: true,
            ..step(payment(1000, "p1")?, ok)
        },
        // The processor delivers the same payment again (a new request): absorbed, no change.
        step(payment(1000, "p1")?, ok),
        step(
            EventKind::UsageExceedsQuota {
                resource: Resource::new("api")?,
                current_usage: r % 1600,
                limit: 1000,
            },
            &[S::Completed, S::ConflictResolved],
        ),
        step(
            EventKind::CustomerUpgrades {
                old_sku: basic,
                new_sku: pro,
            },
            ok,
        ),
        step(payment(2000, "p2")?, ok),
        step(
            EventKind::RenewalDue {
                subscription_id: SubscriptionId::new("sub-1")?,
            },
            ok,
        ),
    ];
    if fails {
        steps.push(step(
            EventKind::PaymentFailed {
                reason: "card_declined".into(),
                payment_id: PaymentId::new(format!("{c}-f1"))?,
                hard_decline: false,
            },
            if connectors_live {
                &[S::Completed, S::Rejected]
            } else {
                ok
            },
        ));
        if ladder {
            return Ok(steps); // the retry passes go on from here
        }
    }
    steps.push(cancel());
    Ok(steps)
}

/// What the client reads of an answer's body: an event's status, or a problem's type.
#[derive(Default, serde::Deserialize)]
struct AnswerBody {
    /// An event's status (a problem's is its HTTP code, a number: not an event status).
    status: Option<Value>,
    #[serde(rename = "type")]
    problem: Option<String>,
}

/// How an event was answered.
struct Answer {
    status: EventStatus,
    replayed: bool,
}

/// Where the workload goes.
#[derive(Clone)]
enum Client {
    InProc(App),
    Http(Arc<HttpTarget>),
}

/// A running server.
#[derive(Debug)]
struct HttpTarget {
    /// `HOST:PORT`.
    authority: String,
    api_key: String,
}

/// One keep-alive connection to the server.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpTarget {
    fn parse(url: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let authority = url
            .strip_prefix("http://")
            .context("--target must be http://HOST:PORT")?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            anyhow::bail!("--target must be http://HOST:PORT (no path), got {url}");
        }
        let api_key = api_key
            .context("--target needs --api-key (or MARKETGOV_API_KEY): an admin or tenant key")?;
        Ok(Self {
            authority: authority.to_owned(),
            api_key,
        })
    }

    async fn connect(&self) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection { sender })
    }

    /// One request; answers the status, the `Idempotent-Replayed` mark and the body.
    async fn request(
        &self,
        conn: &mut Connection,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<(u16, bool, Bytes), String> {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.api_key));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let bytes = match body {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                json
            }
            None => Bytes::new(),
        };
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| format!("request: {e}"))?;
        conn.sender
            .ready()
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("connection: {e}"))?;
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get("Idempotent-Replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("connection: {e}"))?
            .to_bytes();
        Ok((status, replayed, body))
    }
}

impl Client {
    /// Submits one customer event; an `Err` is the kind of failure, for the report.
    async fn submit(
        &self,
        conn: &mut Option<Connection>,
        key: &str,
        event: CustomerEvent,
    ) -> Result<Answer, String> {
        match self {
            Client::InProc(app) => match app.submit_event(TENANT, Some(key), event).await {
                Ok(reply) => Ok(Answer {
                    status: reply.status,
                    replayed: reply.replayed,
                }),
                Err(e) => Err(format!("{e:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap_or("error")
                    .to_owned()),
            },
            Client::Http(target) => {
                if conn.is_none() {
                    *conn = Some(target.connect().await?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err("connection".into());
                };
                let json = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
                let answer = target
                    .request(
                        c,
                        "POST",
                        "/v1/events",
                        &[("idempotency-key", key)],
                        Some(Bytes::from(json)),
                    )
                    .await;
                let (code, replayed, body) = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        *conn = None; // reconnect for the next event
                        return Err(e.split(':').next().unwrap_or("connection").to_owned());
                    }
                };
                // Only the two members checked are read out of the answer (the rest is
                // skipped, not built into a tree: the client shares the cores with the server).
                let answer: AnswerBody = serde_json::from_slice(&body).unwrap_or_default();
                match code {
                    200 | 202 | 409 => {
                        let status = answer
                            .status
                            .and_then(|s| serde_json::from_value::<EventStatus>(s).ok())
                            .ok_or_else(|| format!("http_{code}_without_a_status"))?;
                        Ok(Answer { status, replayed })
                    }
                    _ => Err(format!(
                        "http_{code}_{}",
                        answer
                            .problem
                            .as_deref()
                            .and_then(|t| t.rsplit('/').next())
                            .unwrap_or("error")
                    )),
                }
            }
        }
    }

    /// The engine's counters (`GET /v1/stats` over HTTP).
    /// The engine's decision-to-durable record, when it runs in this process.
    fn decision_to_durable(&self) -> Option<Histogram> {
        match self {
            Client::InProc(app) => Some(app.decision_to_durable()),
            Client::Http(_) => None,
        }
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        match self {
            Client::InProc(app) => Ok(app.stats()?),
            Client::Http(target) => {
                let mut conn = target.connect().await.map_err(anyhow::Error::msg)?;
                let (code, _, body) = target
                    .request(&mut conn, "GET", "/v1/stats", &[], None)
                    .await
                    .map_err(anyhow::Error::msg)?;
                anyhow::ensure!(
                    code == 200,
                    "GET /v1/stats answered {code}: {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(serde_json::from_slice(&body)?)
            }
        }
    }

    /// Puts the two products of the workload on sale.
    async fn publish_products(&self) -> anyhow::Result<()> {
        for (sku, price) in [("basic", 1000), ("pro", 2000)] {
            match self {
                Client::InProc(app) => {
                    let submit = json!({"type": "product_submitted", "sku": sku, "name": sku, "price": price,
                        "currency": "USD", "billing_period_days": 30, "quotas": {"api": 1000}});
                    let publish =
                        json!({"type": "product_published", "sku": sku, "expected_version": 1});
                    for value in [submit, publish] {
                        let Input::Catalog(c) = Input::from_value(value)? else {
                            anyhow::bail!("the bench's catalog command is not one")
                        };
                        app.submit_catalog(TENANT, None, c).await?;
                    }
                }
                Client::Http(target) => {
                    let mut conn = target.connect().await.map_err(anyhow::Error::msg)?;
                    let body = json!({"name": sku, "price": price, "currency": "USD",
                        "billing_period_days": 30, "quotas": {"api": 1000}, "publish": true});
                    let path = format!("/v1/products/{sku}");
                    let (code, _, answer) = target
                        .request(
                            &mut conn,
                            "PUT",
                            &path,
                            &[],
                            Some(Bytes::from(body.to_string())),
                        )
                        .await
                        .map_err(anyhow::Error::msg)?;
                    // 409: already on sale at this price from an earlier run.
                    anyhow::ensure!(
                        matches!(code, 200 | 201 | 409),
                        "PUT {path} answered {code}: {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }
        Ok(())
    }
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("MARKETGOV_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if let Some(url) = &settings.target {
        let target = HttpTarget::parse(url, settings.api_key.clone())?;
        return runtime.block_on(run_on(&settings, Client::Http(Arc::new(target))));
    }
    let (dir, temporary) = match &settings.data_dir {
        Some(d) => (d.clone(), false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            (
                std::env::temp_dir()
                    .join(format!("marketgov-bench-{}-{nanos}", std::process::id())),
                true,
            )
        }
    };
    let outcome = runtime.block_on(async {
        let mut options = EngineOptions::new(&dir);
        options.clock = Arc::new(ManualClock::starting_at("2026-01-01T00:00:00Z".parse()?));
        options.shards = settings.shards.max(1);
        options.streams_in_memory_max = settings.streams_in_memory_max.max(1);
        options.snapshot_every_events = settings.snapshot_every_events.max(1);
        options.snapshot_on_eviction_events = settings.snapshot_on_eviction_events;
        options.store_kind = settings.store;
        options.log_direct_writes = settings.direct_writes;
        let app = App::open(options).with_context(|| format!("opening {}", dir.display()))?;
        run_on(&settings, Client::InProc(app)).await
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

/// Paces sends at `rate` per second over all workers: the k-th send is due at `start + k/rate`.
struct Pacer {
    start: Instant,
    rate: u64,
    next: AtomicU64,
}

impl Pacer {
    /// Waits for the next slot; answers when it was due (the start of the event's latency).
    async fn slot(&self) -> Instant {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let due = self.start + Duration::from_nanos(k.saturating_mul(1_000_000_000) / self.rate);
        tokio::time::sleep_until(due.into()).await;
        due
    }
}

async fn run_on(settings: &Settings, client: Client) -> anyhow::Result<()> {
    client.publish_products().await?;
    // Over HTTP, customers are named for this run so a second run on the same server is fresh.
    let prefix = match &client {
        Client::InProc(_) => "bench".to_owned(),
        Client::Http(_) => format!(
            "bench-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ),
    };
    // The retry ladder needs the bench's own clock: in process only (a server's clock is real
    // and its connectors settle the retries themselves).
    let ladder = matches!(client, Client::InProc(_));
    let passes = passes(ladder);
    let mut total_events = 0usize;
    for pass in &passes {
        for i in 0..settings.customers {
            total_events += script(settings.seed, "c", i, false, *pass, ladder)?.len();
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    // A few records for the whole run, shared by the worker slots and merged at its end: a
    // fresh 26 KiB record per worker and pass was 1 % of the run's CPU (its pages faulted in,
    // then merged), and one per slot (6.5 MiB at 256) missed the cache at nearly every value.
    let latencies: Arc<Vec<Mutex<Histogram>>> = Arc::new(
        (0..settings.concurrency.clamp(1, LATENCY_RECORDS_MAX))
            .map(|_| Mutex::new(Histogram::new()))
            .collect(),
    );
    let errors: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let stats_before = client.stats().await?;
    let durable_before = client.decision_to_durable();
    let started = Instant::now();
    let progress = {
        let done = done.clone();
        let quiet = settings.json;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !quiet {
                    let n = done.load(Ordering::Relaxed);
                    let width = 30;
                    let filled = (n as usize * width) / total_events.max(1);
                    eprint!(
                        "\r[{}{}] {n}/{total_events} events, {:.0}/s   ",
                        "#".repeat(filled.min(width)),
                        ".".repeat(width - filled.min(width)),
                        n as f64 / started.elapsed().as_secs_f64().max(1e-9)
                    );
                }
            }
        })
    };
    let mut timer_firings = 0usize;
    let mut checking = Duration::ZERO;
    for pass in passes {
        if let (Pass::Rung(k), Client::InProc(app)) = (pass, &client) {
            // The clock moves past the retry's wait; the engine fires every due timer on the way.
            let wait = LADDER_WAITS_SECONDS[usize::from(k.saturating_sub(1)).min(2)];
            let to = app
                .clock()
                .now()
                .checked_add(jiff::SignedDuration::from_secs(wait))?;
            // One call fires at most FIRINGS_PER_CALL_MAX (at 10^7 events a rung has more
            // due): call again until a call fires fewer, within a bound of its own.
            for _ in 0..LADDER_ADVANCE_CALLS_MAX {
                let fired = app.advance_clock_to(to).await?;
                timer_firings += fired;
                if fired < marketgov_engine::FIRINGS_PER_CALL_MAX {
                    break;
                }
            }
        }
        next.store(0, Ordering::Relaxed);
        // Each pass is paced from its own start: the pause between passes (the clock moving,
        // the timers firing) is not counted as lateness of the next pass's events.
        let pacer = settings.rate.filter(|r| *r > 0).map(|rate| {
            Arc::new(Pacer {
                start: Instant::now(),
                rate,
                next: AtomicU64::new(0),
            })
        });
        let mut workers = Vec::new();
        for slot in 0..settings.concurrency.max(1) {
            let (client, next, done, latencies, errors, pacer, prefix) = (
                client.clone(),
                next.clone(),
                done.clone(),
                latencies.clone(),
                errors.clone(),
                pacer.clone(),
                prefix.clone(),
            );
            let (customers, seed) = (settings.customers, settings.seed);
            let live = matches!(client, Client::Http(_));
            workers.push(tokio::spawn(async move {
                let mine = latencies.get(slot % latencies.len().max(1));
                let mut conn = None;
                let mut wrong = std::collections::BTreeMap::<String, u64>::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= customers {
                        break;
                    }
                    let customer = format!("{prefix}-{i}");
                    let mut previous: Option<(String, EventStatus)> = None;
                    let Ok(steps) = script(seed, &customer, i, live, pass, ladder) else {
                        *wrong
                            .entry("bench_built_an_invalid_event".into())
                            .or_default() += 1;
                        continue;
                    };
                    for (n, step) in steps.into_iter().enumerate() {
                        let key = match (&previous, step.replays_previous) {
                            (Some((key, _)), true) => key.clone(),
                            _ => match pass {
                                Pass::Lifecycle => format!("{customer}-{n}"),
                                Pass::Rung(k) => format!("{customer}-retry{k}-{n}"),
                                Pass::Settle => format!("{customer}-settle-{n}"),
                            },
                        };
                        let sent = match &pacer {
                            Some(p) => p.slot().await,
                            None => Instant::now(),
                        };
                        let Step {
                            event,
                            allowed,
                            replays_previous,
                        } = step;
                        let answer = client.submit(&mut conn, &key, event).await;
                        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        if let Some(Ok(mut h)) = mine.map(|m| m.lock()) {
                            h.record(micros);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        let problem = match &answer {
                            Err(kind) => Some(kind.clone()),
                            Ok(a) if replays_previous => match &previous {
                                Some((_, status)) if a.replayed && a.status == *status => None,
                                _ => Some(format!("replay_not_marked_at_step_{n}")),
                            },
                            Ok(a) if a.replayed => Some(format!("unexpected_replay_at_step_{n}")),
                            Ok(a) if allowed.contains(&a.status) => None,
                            Ok(a) => {
                                Some(format!("unexpected_status_{}_at_step_{n}", a.status.name()))
                            }
                        };
                        if let Some(kind) = problem {
                            *wrong.entry(kind).or_default() += 1;
                        }
                        if let Ok(a) = &answer {
                            previous = Some((key, a.status));
                        }
                    }
                }
                if let Ok(mut all) = errors.lock() {
                    for (kind, n) in wrong {
                        *all.entry(kind).or_default() += n;
                    }
                }
            }));
        }
        for w in workers {
            w.await?;
        }
        if let (Pass::Rung(3), Client::InProc(app)) = (pass, &client) {
            // Collections is reachable only through every rung: each timer fired its retry once.
            // (The bench's own reads: not counted in the run's time.)
            let check_started = Instant::now();
            let mut missed = 0u64;
            for i in (0..settings.customers).filter(|i| rng(settings.seed, *i).is_multiple_of(10)) {
                let state = app.customer(TENANT, &format!("{prefix}-{i}")).await?;
                if state.map(|c| c.billing.state.as_str()) != Some("collections") {
                    missed += 1;
                }
            }
            if missed > 0 {
                if let Ok(mut all) = errors.lock() {
                    *all.entry("retry_ladder_did_not_reach_collections".into())
                        .or_default() += missed;
                }
            }
            checking += check_started.elapsed();
        }
    }
    let elapsed = started.elapsed().saturating_sub(checking);
    progress.abort();
    if !settings.json {
        eprintln!();
    }
    let stats = client.stats().await?;
    let durable = client
        .decision_to_durable()
        .zip(durable_before)
        .map(|(now, then)| now.since(&then));
    let mut lat = Histogram::new();
    for record in latencies.iter() {
        if let Ok(h) = record.lock() {
            lat.merge(&h);
        }
    }
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let measured = Measured {
        elapsed,
        timer_firings: timer_firings as u64,
        retry_ladder: ladder,
        latency: lat,
        durable,
        errors,
    };
    let report = report(settings, &client, &measured, &stats_before, &stats);
    let mut out = std::io::stdout().lock();
    if settings.json {
        writeln!(out, "{report}")?;
    } else {
        print_summary(&mut out, &report)?;
    }
    if !measured.errors.is_empty() {
        anyhow::bail!("the bench saw wrong answers: {:?}", measured.errors);
    }
    Ok(())
}

/// What the workers and the engine recorded during one run.
struct Measured {
    elapsed: Duration,
    /// Events the engine's timers fired while the clock moved through the retry ladder.
    timer_firings: u64,
    /// Whether failed payments climbed the whole retry schedule (in process).
    retry_ladder: bool,
    /// From each event's send (or scheduled send, when paced) to its answer.
    latency: Histogram,
    /// The engine's decision-to-durable record of this run (in process only).
    durable: Option<Histogram>,
    /// Wrong answers by kind.
    errors: std::collections::BTreeMap<String, u64>,
}

fn report(
    settings: &Settings,
    client: &Client,
    measured: &Measured,
    before: &Value,
    after: &Value,
) -> Value {
    let Measured {
        elapsed,
        timer_firings,
        retry_ladder,
        latency: lat,
        durable,
        errors,
    } = measured;
    let n = |v: &Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(*k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let delta = |path: &[&str]| n(after, path).saturating_sub(n(before, path));
    // Requests answered, plus the events the engine's timers fired: both are decided and logged.
    let requests = lat.total();
    let events = requests + timer_firings;
    let commits = delta(&["commits"]);
    let batches = delta(&["commit_batches"]).max(1);
    let decide = delta(&["timing_nanos", "decide"]);
    let handle = delta(&["timing_nanos", "handle"]);
    // The engine's process: this one in process, the server's over HTTP.
    let peak = n(after, &["memory", "peak_resident_bytes"]);
    let (mode, target) = match client {
        Client::InProc(_) => ("inproc", Value::Null),
        Client::Http(t) => ("http", json!(format!("http://{}", t.authority))),
    };
    json!({
        "mode": mode,
        "target": target,
        "customers": settings.customers,
        "concurrency": settings.concurrency,
        "rate": settings.rate,
        "shards": if mode == "inproc" { json!(settings.shards) } else { Value::Null },
        "streams_in_memory_max": if mode == "inproc" { json!(settings.streams_in_memory_max) } else { Value::Null },
        "snapshot_every_events": if mode == "inproc" { json!(settings.snapshot_every_events) } else { Value::Null },
        "snapshot_on_eviction_events": if mode == "inproc" { json!(settings.snapshot_on_eviction_events) } else { Value::Null },
        "direct_writes": if mode == "inproc" { json!(settings.direct_writes) } else { Value::Null },
        "snapshots_on_eviction": delta(&["snapshots_on_eviction"]),
        "seed": settings.seed,
        "events": events,
        "requests": requests,
        "timer_firings": timer_firings,
        "retry_ladder": retry_ladder,
        "seconds": elapsed.as_secs_f64(),
        "events_per_second": events as f64 / elapsed.as_secs_f64().max(1e-9),
        "latency_us": {"p50": lat.quantile(0.50), "p95": lat.quantile(0.95), "p99": lat.quantile(0.99),
            "p999": lat.quantile(0.999), "max": lat.max()},
        "errors": errors,
        "peak_rss_mib": peak as f64 / (1024.0 * 1024.0),
        // The log-structured store's index at the end of the run (null for SQLite).
        "store_index_memory": after["store_index_memory"].clone(),
        "store_segments_prepared": after["store_segments_prepared"].clone(),
        "store_batches_written": after["store_batches_written"].clone(),
        "store_bytes_per_event": n(after, &["store_bytes"]) as f64 / n(after, &["events_processed"]).max(1) as f64,
        "commit_batch_size_mean": commits as f64 / batches as f64,
        "coordination_compute_ratio": handle.saturating_sub(decide) as f64 / decide.max(1) as f64,
        "idempotency_reads_saved": delta(&["known_keys", "reads_saved"]),
        "stream_reads_saved": delta(&["known_streams", "reads_saved"]),
        "replays_answered_from_memory": delta(&["recent_replies", "answered"]),
        // The engine's own record, from each decision to its synced commit (SPEC 5's latency):
        // this run's alone in process; over HTTP the server's since it started.
        "decision_to_durable_us": durable.as_ref().map_or_else(
            || after["decision_to_durable_us"]["quantiles"].clone(),
            Histogram::summary_json,
        ),
        // Over HTTP the server's record also holds the bench's product setup, its connectors'
        // feedback events and anything before the run.
        "decision_to_durable_scope": if durable.is_some() { "this run" } else { "the server, since it started" },
    })
}

fn print_summary(out: &mut impl Write, r: &Value) -> std::io::Result<()> {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let l = |k: &str| r["latency_us"][k].as_u64().unwrap_or(0);
    let mode = match r["target"].as_str() {
        Some(t) => format!("over HTTP to {t}"),
        None => "in process, embedded store".to_owned(),
    };
    writeln!(
        out,
        "marketgov bench ({mode}, every acknowledgement synced)"
    )?;
    let pacing = match r["rate"].as_u64() {
        Some(rate) => format!(", paced at {rate} events/s"),
        None => String::new(),
    };
    let shards = match r["shards"].as_u64() {
        Some(s) => format!(", {s} shards"),
        None => String::new(),
    };
    writeln!(
        out,
        "  {} customers, concurrency {}{shards}{pacing}, seed {}",
        r["customers"], r["concurrency"], r["seed"]
    )?;
    writeln!(
        out,
        "  {} events ({} requests, {} timer firings) in {:.2} s: {:.0} events/s",
        r["events"],
        r["requests"],
        r["timer_firings"],
        f("seconds"),
        f("events_per_second")
    )?;
    if r["retry_ladder"] == true {
        writeln!(
            out,
            "  failed payments climbed the retry ladder (1 h, 3 h, 1 day) on the bench's clock"
        )?;
    }
    writeln!(
        out,
        "  latency p50 {} us, p95 {} us, p99 {} us, p99.9 {} us, max {} us",
        l("p50"),
        l("p95"),
        l("p99"),
        l("p999"),
        l("max")
    )?;
    let d = |k: &str| r["decision_to_durable_us"][k].as_u64().unwrap_or(0);
    writeln!(
        out,
        "  decision to durable p50 {} us, p95 {} us, p99 {} us, p99.9 {} us, max {} us{}",
        d("p50"),
        d("p95"),
        d("p99"),
        d("p999"),
        d("max"),
        if r["decision_to_durable_scope"] == "this run" {
            String::new()
        } else {
            format!(
                " ({})",
                r["decision_to_durable_scope"].as_str().unwrap_or_default()
            )
        }
    )?;
    let errors = r["errors"].as_object().filter(|e| !e.is_empty());
    writeln!(
        out,
        "  errors: {}",
        errors.map_or("none".to_owned(), |e| Value::Object(e.clone()).to_string())
    )?;
    writeln!(
        out,
        "  peak memory {:.1} MiB, store {:.0} bytes/event, mean commit batch {:.1}, coordination/compute {:.1}",
        f("peak_rss_mib"),
        f("store_bytes_per_event"),
        f("commit_batch_size_mean"),
        f("coordination_compute_ratio")
    )?;
    writeln!(
        out,
        "  store reads saved in memory: {} idempotency lookups and {} stream loads by the key filters, {} replays by the recent answers",
        r["idempotency_reads_saved"], r["stream_reads_saved"], r["replays_answered_from_memory"]
    )
}
