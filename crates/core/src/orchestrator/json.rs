//! A customer decision's result and its effects as JSON, written by hand: the same bytes the
//! serde derives of [`EventResult`] and [`Effect`] give (every debug build checks it on every
//! result and effect, and the property test over any sequence of inputs does too), in a sixth of
//! the instructions (2,100 instead of 13,500 per event in the bench, docs/PERFORMANCE.md).
//!
//! Why by hand: the result is serialized for every event (it is the answer and part of the log
//! entry), and in the profile serde_json spent most of that time scanning text for characters
//! to escape one byte at a time, keys and state names included, and going through serde's
//! flattening of each effect. Here the keys are literals, text is checked for such characters
//! in one pass the compiler can vectorize (and escaped by serde_json only when it has any), and
//! the effects are the outbox bodies already serialized for the commit, so each is serialized
//! once instead of twice. What is rare or nested (timers, conflicts, the proration quote, a
//! rejection) is still written by serde_json.

use serde::Serialize;

use super::{Effect, EventResult, GovernorReport};
use crate::governor::EffectKind;

type Error = serde_json::Error;

/// Room for a result: 600-1,600 bytes in the bench's workload, so the buffer is not grown (and
/// copied) by doublings on the way.
const RESULT_BYTES: usize = 2048;

/// `result` as its derive serializes it, with `effect_bodies[i]` the JSON of `result.effects[i]`
/// as [`serde_json`] writes it (the outbox bodies of a commit).
pub fn result_json(result: &EventResult, effect_bodies: &[Vec<u8>]) -> Result<String, Error> {
    if effect_bodies.len() != result.effects.len() {
        return Err(encoding(format!(
            "{} effect bodies for {} effects",
            effect_bodies.len(),
            result.effects.len()
        )));
    }
    let mut out = Vec::with_capacity(RESULT_BYTES);
    out.extend_from_slice(b"{\"event_id\":");
    text(&mut out, &result.event_id)?;
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(result.status.name().as_bytes());
    out.extend_from_slice(b"\",\"phases\":[");
    for (i, phase) in result.phases.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(phase.name().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"],\"governors\":[");
    for (i, report) in result.governors.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        governor_report(&mut out, report)?;
    }
    out.extend_from_slice(b"],\"effects\":[");
    for (i, body) in effect_bodies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"],\"timers\":");
    serde(&mut out, &result.timers)?;
    out.extend_from_slice(b",\"conflicts\":");
    serde(&mut out, &result.conflicts)?;
    if let Some(quote) = &result.proration {
        out.extend_from_slice(b",\"proration\":");
        serde(&mut out, quote)?;
    }
    if let Some(reason) = &result.review_reason {
        out.extend_from_slice(b",\"review_reason\":");
        text(&mut out, reason)?;
    }
    out.push(b'}');
    let json = String::from_utf8(out).map_err(encoding)?;
    debug_assert_eq!(
        Some(&json),
        serde_json::to_string(result).ok().as_ref(),
        "the hand-written result differs from its derive"
    );
    Ok(json)
}

/// An effect as its derive serializes it (the flattened kind tagged `kind`), for its outbox body.
pub fn effect_json(e: &Effect) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(EFFECT_BYTES);
    out.extend_from_slice(b"{\"idempotency_key\":");
    text(&mut out, &e.idempotency_key)?;
    out.extend_from_slice(b",\"governor\":\"");
    out.extend_from_slice(e.governor.name().as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(e.kind.name().as_bytes());
    out.push(b'"');
    match &e.kind {
        EffectKind::Charge {
            amount,
            currency,
            invoice_id,
            attempt,
        } => {
            number(&mut out, b"amount", *amount)?;
            field(&mut out, b"currency", currency.as_str())?;
            field(&mut out, b"invoice_id", invoice_id)?;
            number(&mut out, b"attempt", i64::from(*attempt))?;
        }
        EffectKind::Refund {
            amount,
            currency,
            reason,
        } => {
            number(&mut out, b"amount", *amount)?;
            field(&mut out, b"currency", currency.as_str())?;
            field(&mut out, b"reason", reason)?;
        }
        EffectKind::Void {
            invoice_id,
            amount,
            currency,
        } => {
            field(&mut out, b"invoice_id", invoice_id)?;
            number(&mut out, b"amount", *amount)?;
            field(&mut out, b"currency", currency.as_str())?;
        }
        EffectKind::Notify { topic, message } => {
            field(&mut out, b"topic", topic)?;
            field(&mut out, b"message", message)?;
        }
        EffectKind::Provision { sku } | EffectKind::Revoke { sku } => {
            field(&mut out, b"sku", sku.as_str())?;
        }
        EffectKind::Escalate {
            level,
            queue,
            reason,
        } => {
            number(&mut out, b"level", i64::from(*level))?;
            field(&mut out, b"queue", queue)?;
            field(&mut out, b"reason", reason)?;
        }
    }
    out.push(b'}');
    debug_assert_eq!(
        Some(&out),
        serde_json::to_vec(e).ok().as_ref(),
        "the hand-written effect differs from its derive"
    );
    Ok(out)
}

/// Room for an effect: 100-250 bytes in the bench's workload.
const EFFECT_BYTES: usize = 256;

/// `,"name":` and a JSON string.
fn field(out: &mut Vec<u8>, name: &[u8], value: &str) -> Result<(), Error> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
    text(out, value)
}

/// `,"name":` and a number.
fn number(out: &mut Vec<u8>, name: &[u8], value: i64) -> Result<(), Error> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
    serde(out, &value)
}

fn governor_report(out: &mut Vec<u8>, r: &GovernorReport) -> Result<(), Error> {
    out.extend_from_slice(b"{\"governor\":\"");
    out.extend_from_slice(r.governor.name().as_bytes());
    out.extend_from_slice(b"\",\"outcome\":\"");
    out.extend_from_slice(r.outcome.name().as_bytes());
    out.extend_from_slice(b"\",\"from\":");
    optional_text(out, r.from.as_deref())?;
    if !r.via.is_empty() {
        out.extend_from_slice(b",\"via\":[");
        for (i, state) in r.via.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            text(out, state)?;
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"to\":");
    optional_text(out, r.to.as_deref())?;
    out.extend_from_slice(b",\"message\":");
    text(out, &r.message)?;
    if let Some(rejection) = &r.rejection {
        out.extend_from_slice(b",\"rejection\":");
        serde(out, rejection)?;
    }
    out.push(b'}');
    Ok(())
}

fn optional_text(out: &mut Vec<u8>, s: Option<&str>) -> Result<(), Error> {
    match s {
        Some(s) => text(out, s),
        None => {
            out.extend_from_slice(b"null");
            Ok(())
        }
    }
}

/// A JSON string: copied between quotes when nothing in it needs escaping (checked without
/// stopping early, so the check runs many bytes at a time), else escaped by serde_json.
fn text(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    let escapes = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escapes {
        return serde(out, s);
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

fn serde(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) -> Result<(), Error> {
    serde_json::to_writer(out, value).map_err(encoding)
}

fn encoding(e: impl std::fmt::Display) -> Error {
    <Error as serde::ser::Error>::custom(e)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::orchestrator::{Outcome, Phase};

    #[test]
    fn names_are_the_derives() {
        for phase in Phase::ALL {
            assert_eq!(
                serde_json::to_string(&phase).unwrap(),
                format!("\"{}\"", phase.name())
            );
        }
        for outcome in [
            Outcome::Success,
            Outcome::ConflictDetected,
            Outcome::Failed,
            Outcome::NotApplicable,
        ] {
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{}\"", outcome.name())
            );
        }
    }

    #[test]
    fn text_needing_escapes_is_escaped_as_serde_json_does() {
        for s in [
            "plain",
            "",
            "a \"quoted\" word",
            "back\\slash",
            "line\nfeed\t\u{1}",
            "é ü 名",
        ] {
            let mut out = Vec::new();
            text(&mut out, s).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
