//! `POST /v1/integrations/gcp-marketplace`: Google Cloud Marketplace procurement notifications,
//! pushed by Pub/Sub, mapped onto the customer lifecycle.
//!
//! Each entitlement is a customer stream (routed by `entitlement.id`; one account may hold
//! several); each account has its own stream for its account governor. Deduplication is by
//! `eventId` (Pub/Sub delivers at least once): the lifecycle event is submitted with the key
//! `gcp:<eventId>`, so a redelivery replays the first result. An entitlement event naming an
//! account that is not active yet is parked, and retried automatically when `ACCOUNT_ACTIVE`
//! arrives. Unknown types, and known ones that mean nothing here, are acknowledged and recorded as
//! ignored. Decided outcomes (even refusals) answer 200, so Pub/Sub does not redeliver forever;
//! only failures of the server answer 5xx, which Pub/Sub retries.
//!
//! Mapping: `ACCOUNT_ACTIVE` -> `account_verified` (account stream); `ACCOUNT_DELETED` ->
//! `account_closed` (account stream); `ENTITLEMENT_CREATION_REQUESTED` -> `customer_subscribes` to
//! the SKU named by `newPlan` (or `plan`); `ENTITLEMENT_ACTIVE` -> `entitlement_approved` when the
//! entitlement waits for approval; `ENTITLEMENT_PLAN_CHANGE_REQUESTED` and `ENTITLEMENT_PLAN_CHANGED`
//! -> `customer_upgrades` to `newPlan` (once: the second finds the plan already current);
//! `ENTITLEMENT_PENDING_CANCELLATION` -> `customer_cancels` at period end;
//! `ENTITLEMENT_CANCELLATION_REVERTED` -> `cancellation_reverted`; `ENTITLEMENT_CANCELLED` and
//! `ENTITLEMENT_DELETED` -> `customer_cancels` now (unless already ended); `ENTITLEMENT_OFFER_ACCEPTED`,
//! `ENTITLEMENT_PLAN_CHANGE_CANCELLED` and `ENTITLEMENT_CANCELLING` are recorded as ignored.
//!
//! Subscriptions created here carry `marketplace: gcp` with the provider and account ids; the
//! engine then writes the partner's answers to Google as effects in the same commit as the
//! decision that calls for them (approve a granted entitlement, reject a refused one, approve a
//! plan change with `pendingPlanName`), carried out by the `gcp_procurement` connector at
//! `--gcp-procurement-url`. The account's `signup` approval is not sent: `ACCOUNT_ACTIVE` already
//! means the account is approved.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use marketgov_core::ids::CustomerId;
use marketgov_core::{CustomerEvent, EventKind, Input};
use serde_json::{json, Value};

use crate::{body_json, caller, Problem, ServerState};

/// What a notification becomes.
enum Mapped {
    Event(CustomerEvent),
    Ignored(String),
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

pub(crate) async fn post_gcp(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let push = body_json(body).await?;
    let bad = |detail: &str| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_pubsub_push",
            detail.to_owned(),
        )
    };
    let data = push["message"]["data"]
        .as_str()
        .ok_or_else(|| bad("`message.data` (base64) is required"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| bad("`message.data` is not base64"))?;
    let notification: Value =
        serde_json::from_slice(&decoded).map_err(|_| bad("`message.data` is not JSON"))?;
    let event_id = notification["eventId"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .ok_or_else(|| bad("`eventId` is required"))?
        .to_owned();
    let event_type = notification["eventType"].as_str().unwrap_or("").to_owned();
    let event_type = event_type.as_str();
    let key = format!("gcp:{event_id}");
    let app = &state.app;

    let mapped = map(&state, &who.tenant, event_type, &notification).await?;
    match mapped {
        Mapped::Ignored(reason) => {
            app.record_ignored(
                &who.tenant,
                "gcp-marketplace",
                &event_id,
                notification,
                &reason,
            )
            .await?;
            Ok(
                axum::Json(json!({"status": "ignored", "event_id": event_id, "reason": reason}))
                    .into_response(),
            )
        }
        Mapped::Event(event) => {
            // An entitlement event for an account not active yet waits for the account.
            let account = notification["entitlement"]["account"]
                .as_str()
                .map(last_segment)
                .map(str::to_owned);
            if let Some(account) = account.filter(|_| event_type.starts_with("ENTITLEMENT_")) {
                let active = app
                    .customer(&who.tenant, &account)
                    .await?
                    .is_some_and(|c| c.account.state.as_str() == "active");
                if !active {
                    let input = Input::Customer(event);
                    let id = app
                        .park_input(
                            &who.tenant,
                            &input,
                            "the entitlement's account is not active yet",
                            json!({"gcp_account": account, "gcp_key": key}),
                        )
                        .await?;
                    return Ok(axum::Json(
                        json!({"status": "parked", "event_id": event_id, "review_id": id}),
                    )
                    .into_response());
                }
            }
            let is_account_active = event_type == "ACCOUNT_ACTIVE";
            let account_id = event.customer_id.to_string();
            let reply = app.submit_event(&who.tenant, Some(&key), event).await?;
            if is_account_active {
                // Entitlement events parked for this account go now.
                for item in app.review_queue(&who.tenant)? {
                    if item["item"]["gcp_account"] == account_id.as_str() {
                        if let Some(id) = item["id"].as_str() {
                            app.resolve_review(&who.tenant, id, "retry", "gcp-account-active")
                                .await?;
                        }
                    }
                }
            }
            let mut response = (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                reply.json(),
            )
                .into_response();
            if reply.replayed {
                response.headers_mut().insert(
                    "Idempotent-Replayed",
                    axum::http::HeaderValue::from_static("true"),
                );
            }
            Ok(response)
        }
    }
}

async fn map(
    state: &ServerState,
    tenant: &str,
    event_type: &str,
    n: &Value,
) -> Result<Mapped, Problem> {
    let invalid = |detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_notification",
            detail,
        )
    };
    let id_of = |field: &str| -> Result<CustomerId, Problem> {
        let raw = n[field]["id"]
            .as_str()
            .ok_or_else(|| invalid(format!("`{field}.id` is required")))?;
        CustomerId::new(last_segment(raw)).map_err(|e| invalid(e.to_string()))
    };
    let event = |customer_id: CustomerId, kind: EventKind| {
        Mapped::Event(CustomerEvent {
            customer_id,
            occurred_at: None,
            kind,
        })
    };
    let plan = || {
        n["entitlement"]["newPlan"]
            .as_str()
            .or_else(|| n["entitlement"]["plan"].as_str())
            .map(last_segment)
    };
    let sku = |name: &str| marketgov_core::ids::Sku::new(name).map_err(|e| invalid(e.to_string()));
    Ok(match event_type {
        "ACCOUNT_ACTIVE" => event(id_of("account")?, EventKind::AccountVerified {}),
        "ACCOUNT_DELETED" => event(
            id_of("account")?,
            EventKind::AccountClosed {
                reason: Some("deleted in Google Cloud Marketplace".into()),
            },
        ),
        "ENTITLEMENT_CREATION_REQUESTED" => match plan() {
            Some(p) => event(
                id_of("entitlement")?,
                EventKind::CustomerSubscribes {
                    sku: sku(p)?,
                    marketplace: Some(marketgov_core::input::MarketplaceRef {
                        name: "gcp".into(),
                        provider_id: n["providerId"]
                            .as_str()
                            .map(last_segment)
                            .map(str::to_owned),
                        account_id: n["entitlement"]["account"]
                            .as_str()
                            .map(last_segment)
                            .map(str::to_owned),
                    }),
                },
            ),
            None => Mapped::Ignored("no plan named".into()),
        },
        "ENTITLEMENT_ACTIVE" => {
            let id = id_of("entitlement")?;
            let waiting = state
                .app
                .customer(tenant, id.as_str())
                .await?
                .and_then(|c| c.entitlement)
                .is_some_and(|e| matches!(e.state.as_str(), "pending_approval" | "escalated"));
            if waiting {
                event(
                    id,
                    EventKind::EntitlementApproved {
                        actor: Some("google-cloud-marketplace".into()),
                    },
                )
            } else {
                Mapped::Ignored("the entitlement is not waiting for approval".into())
            }
        }
        "ENTITLEMENT_PLAN_CHANGE_REQUESTED" | "ENTITLEMENT_PLAN_CHANGED" => {
            let id = id_of("entitlement")?;
            let Some(new) = plan() else {
                return Ok(Mapped::Ignored("no plan named".into()));
            };
            let current = state
                .app
                .customer(tenant, id.as_str())
                .await?
                .and_then(|c| c.subscription)
                .map(|s| s.current_sku().to_string());
            match current {
                Some(old) if old != new => event(
                    id,
                    EventKind::CustomerUpgrades {
                        old_sku: sku(&old)?,
                        new_sku: sku(new)?,
                    },
                ),
                Some(_) => Mapped::Ignored("the plan is already current".into()),
                None => Mapped::Ignored("no subscription for this entitlement".into()),
            }
        }
        "ENTITLEMENT_PENDING_CANCELLATION" => event(
            id_of("entitlement")?,
            EventKind::CustomerCancels {
                reason: Some("cancelled in Google Cloud Marketplace".into()),
                at_period_end: true,
            },
        ),
        "ENTITLEMENT_CANCELLATION_REVERTED" => {
            event(id_of("entitlement")?, EventKind::CancellationReverted {})
        }
        "ENTITLEMENT_CANCELLED" | "ENTITLEMENT_DELETED" => {
            let id = id_of("entitlement")?;
            let ended = state
                .app
                .customer(tenant, id.as_str())
                .await?
                .and_then(|c| c.subscription)
                .is_none_or(|s| s.is_ended());
            if ended {
                Mapped::Ignored("the subscription has ended already".into())
            } else {
                event(
                    id,
                    EventKind::CustomerCancels {
                        reason: Some(format!("{event_type} in Google Cloud Marketplace")),
                        at_period_end: false,
                    },
                )
            }
        }
        "ENTITLEMENT_OFFER_ACCEPTED"
        | "ENTITLEMENT_PLAN_CHANGE_CANCELLED"
        | "ENTITLEMENT_CANCELLING" => {
            Mapped::Ignored(format!("{event_type} needs no decision here"))
        }
        other => Mapped::Ignored(format!(
            "unknown event type `{}`",
            other.chars().take(64).collect::<String>()
        )),
    })
}
