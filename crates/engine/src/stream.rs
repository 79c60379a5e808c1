//! What the log holds per event, and how a stream is rebuilt from its snapshot and log.
//!
//! Each logged event records everything its decision was a function of: the input, the context
//! (event id and instant) and the products it read. Loading a stream replays every logged event
//! after the snapshot through the core again and checks that it decides what the log says
//! (SPEC 1.8); a difference is an error naming the event, never a silent skip.

use marketgov_core::governors::product_catalog::Product;
use marketgov_core::orchestrator::{decide_catalog, decide_event, EventContext, EventStatus};
use marketgov_core::{Customer, Input};
use marketgov_store::StreamLoad;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The encoding version of logged events and snapshots written by this release.
pub const ENCODING_VERSION: u32 = 1;

/// One logged event: the stored bytes of an audit entry are this, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedDecision {
    /// Encoding version.
    pub v: u32,
    /// The tenant.
    pub tenant: String,
    /// The stream.
    pub stream: String,
    /// The caller's idempotency key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The decision's context.
    pub ctx: EventContext,
    /// The input, as validated.
    pub input: serde_json::Value,
    /// The products the decision read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<Product>,
    /// How it ended.
    pub status: EventStatus,
    /// The full result (phases, governors, effects, timers, conflicts, proration).
    pub result: serde_json::Value,
}

/// Room for a log entry's fields other than the result (tenant, stream, key, context, input,
/// products): about 250-600 bytes in the bench's workload.
const ENTRY_BYTES_BESIDES_RESULT: usize = 768;

/// Room for a decision's result: 600-1,600 bytes in the bench's workload. Serialized into a
/// buffer of about its final size, it is not grown (and copied) by doublings on the way.
const RESULT_BYTES: usize = 2048;

/// A catalog decision's result, serialized once: the same text goes into the log entry
/// ([`LoggedDecisionRef::encode_around`]) and, with the receipt, to the caller (a customer
/// decision's is written by `marketgov_core::orchestrator::result_json`).
pub(crate) fn result_json(result: &impl Serialize) -> Result<String, Error> {
    let mut out = Vec::with_capacity(RESULT_BYTES);
    serde_json::to_writer(&mut out, result).map_err(encoding)?;
    String::from_utf8(out).map_err(encoding)
}

/// An encoding failure (JSON that could not be written).
pub(crate) fn encoding(e: impl std::fmt::Display) -> Error {
    Error::Replay {
        location: "encoding".into(),
        detail: e.to_string(),
    }
}

/// The log entry of one decision made by this release, borrowed from the decision: serialized
/// straight to the stored bytes (the same JSON [`LoggedDecision`] reads, a test compares them),
/// without building an intermediate `serde_json::Value` of the input or the result. The result
/// is not a field here: [`Self::encode`] appends its JSON text as the entry's last member.
#[derive(Serialize)]
pub(crate) struct LoggedDecisionRef<'a, I: Serialize> {
    pub v: u32,
    pub tenant: &'a str,
    pub stream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
    pub ctx: &'a EventContext,
    /// The customer event or catalog command (an [`Input`] serializes as its variant's content).
    pub input: &'a I,
    #[serde(skip_serializing_if = "<[Product]>::is_empty")]
    pub products: &'a [Product],
    pub status: EventStatus,
}

impl<I: Serialize> LoggedDecisionRef<'_, I> {
    /// The stored bytes, with `result` (the result's JSON) as the last member: the reference
    /// [`Self::encode_around`] is checked against.
    pub(crate) fn encode(&self, result: &str) -> Result<Vec<u8>, Error> {
        const MEMBER: &[u8] = b",\"result\":";
        let mut out = Vec::with_capacity(result.len() + MEMBER.len() + ENTRY_BYTES_BESIDES_RESULT);
        serde_json::to_writer(&mut out, self).map_err(encoding)?;
        // `v` is always there, so the object is not empty and its last byte closes it.
        if out.pop() != Some(b'}') {
            return Err(encoding("a log entry is not a JSON object"));
        }
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(result.as_bytes());
        out.push(b'}');
        Ok(out)
    }

    /// The same bytes as [`Self::encode`] (checked in debug builds), with `input_json` (the
    /// input's JSON, as `serde_json::to_vec` writes it) copied in instead of serialized again.
    pub(crate) fn encode_around(&self, input_json: &[u8], result: &str) -> Result<Vec<u8>, Error> {
        let mut out =
            Vec::with_capacity(input_json.len() + result.len() + ENTRY_BYTES_BESIDES_RESULT);
        member(&mut out, b"{\"v\":", &self.v)?;
        member(&mut out, b",\"tenant\":", self.tenant)?;
        member(&mut out, b",\"stream\":", self.stream)?;
        if let Some(key) = self.idempotency_key {
            member(&mut out, b",\"idempotency_key\":", key)?;
        }
        member(&mut out, b",\"ctx\":", self.ctx)?;
        out.extend_from_slice(b",\"input\":");
        out.extend_from_slice(input_json);
        if !self.products.is_empty() {
            member(&mut out, b",\"products\":", self.products)?;
        }
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(self.status.name().as_bytes());
        out.extend_from_slice(b"\",\"result\":");
        out.extend_from_slice(result.as_bytes());
        out.push(b'}');
        debug_assert_eq!(
            self.encode(result).ok().as_ref(),
            Some(&out),
            "the entry written around the input differs from its derive"
        );
        Ok(out)
    }
}

/// `name` (a JSON fragment ending with the member's `:`) and `value` as JSON.
fn member<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &[u8], value: &T) -> Result<(), Error> {
    out.extend_from_slice(name);
    serde_json::to_writer(out, value).map_err(encoding)
}

/// A stream's state in memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamState {
    /// Events logged on the stream (applied or not): the next one is `log_version + 1`.
    pub log_version: u64,
    /// The customer, for a customer stream that exists.
    pub customer: Option<Customer>,
    /// The product, for a product stream that exists.
    pub product: Option<Product>,
    /// The version of the stream's newest snapshot this process wrote or loaded (0: none).
    pub snapshot_version: u64,
}

/// What a snapshot holds.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    v: u32,
    log_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    customer: Option<Customer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product: Option<Product>,
}

/// Serializes a snapshot of `state`.
pub fn snapshot_body(state: &StreamState) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&SnapshotBody {
        v: ENCODING_VERSION,
        log_version: state.log_version,
        customer: state.customer.clone(),
        product: state.product.clone(),
    })
    .map_err(|e| Error::Replay {
        location: "snapshot".into(),
        detail: e.to_string(),
    })
}

/// Rebuilds a stream from what the store returned.
pub fn rebuild(stream: &str, load: StreamLoad) -> Result<StreamState, Error> {
    let mut state = match load.snapshot {
        None => StreamState::default(),
        Some(s) => {
            let body: SnapshotBody =
                serde_json::from_slice(&s.body).map_err(|e| Error::Replay {
                    location: format!("snapshot of {stream}"),
                    detail: e.to_string(),
                })?;
            if body.v > ENCODING_VERSION {
                return Err(Error::Replay {
                    location: format!("snapshot of {stream}"),
                    detail: format!(
                        "encoding version {} is newer than {ENCODING_VERSION}",
                        body.v
                    ),
                });
            }
            StreamState {
                log_version: body.log_version,
                customer: body.customer,
                product: body.product,
                snapshot_version: body.log_version,
            }
        }
    };
    for (version, bytes) in load.events {
        let location = || format!("{stream} event {version}");
        if version != state.log_version + 1 {
            return Err(Error::Replay {
                location: location(),
                detail: format!("expected version {}", state.log_version + 1),
            });
        }
        let logged: ReplayedDecision<'_> =
            serde_json::from_slice(&bytes).map_err(|e| Error::Replay {
                location: location(),
                detail: e.to_string(),
            })?;
        replay_one(&mut state, &logged).map_err(|detail| Error::Replay {
            location: location(),
            detail,
        })?;
        state.log_version = version;
    }
    Ok(state)
}

/// What a replay reads of a [`LoggedDecision`]: what the decision was a function of, and its
/// status. The logged result is skipped unread (the decision is made again and checked against
/// the status): building it as a `serde_json::Value` was most of a stream load's time at 10^7
/// events, where the retry ladder reloads 111,000 evicted customers.
#[derive(Deserialize)]
struct ReplayedDecision<'a> {
    ctx: EventContext,
    #[serde(borrow)]
    input: &'a serde_json::value::RawValue,
    #[serde(default)]
    products: Vec<Product>,
    status: EventStatus,
}

/// Decides a logged event again and applies it; the decision must match the log.
fn replay_one(state: &mut StreamState, logged: &ReplayedDecision<'_>) -> Result<(), String> {
    let input: serde_json::Value =
        serde_json::from_str(logged.input.get()).map_err(|e| e.to_string())?;
    let input = Input::from_value(input).map_err(|e| e.to_string())?;
    match input {
        Input::Customer(event) => {
            let result = decide_event(
                state.customer.as_ref(),
                &event,
                &logged.products,
                &logged.ctx,
            )
            .map_err(|e| e.to_string())?;
            if result.status != logged.status {
                return Err(format!(
                    "replay decided {:?}, the log says {:?}",
                    result.status, logged.status
                ));
            }
            if let Some(next) = result.next {
                state.customer = Some(next);
            }
        }
        Input::Catalog(command) => {
            let result = decide_catalog(state.product.as_ref(), &command, &logged.ctx)
                .map_err(|e| e.to_string())?;
            if result.status != logged.status {
                return Err(format!(
                    "replay decided {:?}, the log says {:?}",
                    result.status, logged.status
                ));
            }
            if let Some(next) = result.next {
                state.product = Some(next);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A logged subscription of `c1` to `basic`, as the engine writes it, with `status` and
    /// `result` as given (a replay reads the status and never the result).
    fn logged_subscription(status: &str, result: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "v": 1,
            "tenant": "t",
            "stream": "customer:t/c1",
            "ctx": {"event_id": "evt-1", "now": "2026-01-01T00:00:00Z"},
            "input": {"type": "customer_subscribes", "customer_id": "c1", "sku": "basic"},
            "products": [{
                "sku": "basic", "state": "published", "version": 2, "name": "basic",
                "price": 1000, "currency": "USD", "billing_period_days": 30, "trial_days": 0,
                "requires_approval": false, "quotas": {"api": 1000}
            }],
            "status": status,
            "result": result,
        }))
        .unwrap()
    }

    fn load(events: Vec<Vec<u8>>) -> StreamLoad {
        StreamLoad {
            snapshot: None,
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i as u64 + 1, e))
                .collect(),
        }
    }

    #[test]
    fn a_load_decides_each_logged_event_again_and_needs_only_its_inputs() {
        // The result is not read back: the decision is made again from what it was a
        // function of.
        let state = rebuild(
            "customer:t/c1",
            load(vec![logged_subscription(
                "completed",
                serde_json::json!({}),
            )]),
        )
        .unwrap();
        assert_eq!(state.log_version, 1);
        let customer = state.customer.expect("the subscription made a customer");
        assert!(customer.subscription.is_some());
    }

    #[test]
    fn a_logged_status_the_replay_does_not_reach_is_an_error_naming_the_event() {
        let err = rebuild(
            "customer:t/c1",
            load(vec![logged_subscription("rejected", serde_json::json!({}))]),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::Replay { location, detail }
                if location == "customer:t/c1 event 1" && detail.contains("the log says")),
            "{err:?}"
        );
        let mut broken = logged_subscription("completed", serde_json::json!({}));
        broken.truncate(broken.len() / 2);
        assert!(matches!(
            rebuild("customer:t/c1", load(vec![broken])),
            Err(Error::Replay { .. })
        ));
    }

    #[test]
    fn an_entry_encoded_from_the_decision_reads_back_as_the_logged_decision_with_its_result_as_written(
    ) {
        let logged = logged_subscription("completed", serde_json::json!({}));
        let read: LoggedDecision = serde_json::from_slice(&logged).unwrap();
        let input: marketgov_core::CustomerEvent =
            serde_json::from_value(read.input.clone()).unwrap();
        let result = decide_event(None, &input, &read.products, &read.ctx).unwrap();
        let text = result_json(&result).unwrap();
        for key in [None, Some("key-1")] {
            let entry = LoggedDecisionRef {
                v: ENCODING_VERSION,
                tenant: &read.tenant,
                stream: &read.stream,
                idempotency_key: key,
                ctx: &read.ctx,
                input: &input,
                products: &read.products,
                status: result.status,
            };
            let bytes = entry.encode(&text).unwrap();
            let around = entry
                .encode_around(&serde_json::to_vec(&input).unwrap(), &text)
                .unwrap();
            assert_eq!(
                around, bytes,
                "written around the input's JSON: the same bytes"
            );
            let back: LoggedDecision = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                back,
                LoggedDecision {
                    idempotency_key: key.map(str::to_owned),
                    status: result.status,
                    result: serde_json::from_str(&text).unwrap(),
                    ..read.clone()
                }
            );
            // The result's text is the entry's last member, byte for byte.
            assert!(bytes.ends_with(format!(",\"result\":{text}}}").as_bytes()));
            // And a load decides it again to the same state.
            let state = rebuild(&read.stream, load(vec![bytes])).unwrap();
            assert_eq!(state.customer, result.next.clone());
        }
    }
}
