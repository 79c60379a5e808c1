//! # marketgov-server
//!
//! The HTTP API of SPEC 3.2 over the engine's `App`: handlers extract, call the `App`, map the
//! result. Errors are `application/problem+json`, mapped in `problem.rs` only. Requests are bounded
//! (body size, JSON depth) before any work.
//!
//! **What it owns:** routes, authentication (bearer keys per tenant, the admin key), request
//! limits, status codes and wire shapes. **What it must not know:** how decisions are made or
//! stored.
//!
//! Built so far: `POST /v1/events`, `POST /v1/events:batch`, `POST /v1/a2a/messages`,
//! `GET /v1/customers/{id}`, `GET /v1/customers/{id}/history`, `GET /v1/products`,
//! `PUT /v1/products/{sku}`, `GET /v1/cases/{id}`, `GET /v1/cases`, `GET /v1/review-queue`,
//! `POST /v1/review-queue/{id}/resolve`, `GET /v1/stats`, `GET /v1/audit/verify`,
//! `GET /v1/audit/public-key`, `POST /v1/admin/keys`, `POST /v1/admin/clock` (manual clock
//! only), `GET /healthz`, `GET /readyz`. `POST /v1/integrations/gcp-marketplace`. `GET /openapi.json`, `GET /metrics` (a first set of counters), and the dashboard at `/`.

mod gcp;
pub mod openapi;
mod problem;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use marketgov_core::orchestrator::EventStatus;
use marketgov_core::{CatalogCommand, Input, InputError};
use marketgov_engine::{constant_time_eq, key_hash, App};
use serde_json::{json, Value};

pub use problem::{Problem, PROBLEM_BASE};

/// Largest request body, in bytes.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Deepest JSON nesting accepted.
pub const JSON_DEPTH_MAX: usize = 32;
/// The tenant the admin key acts for.
pub const ADMIN_TENANT: &str = "default";

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The engine.
    pub app: App,
    /// SHA-256 (hex) of the admin key.
    pub admin_key_hash: String,
    /// Whether `POST /v1/admin/clock` exists.
    pub manual_clock: bool,
}

/// The router of the whole API.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/events:batch", post(post_events_batch))
        .route("/v1/a2a/messages", post(post_a2a))
        .route("/v1/integrations/gcp-marketplace", post(gcp::post_gcp))
        .route("/v1/customers/{id}", get(get_customer))
        .route("/v1/customers/{id}/history", get(get_customer_history))
        .route("/v1/products", get(get_products))
        .route("/v1/cases", get(get_cases))
        .route("/v1/cases/{id}", get(get_case))
        .route("/v1/review-queue", get(get_review_queue))
        .route("/v1/review-queue/{id}/resolve", post(resolve_review))
        .route("/v1/stats", get(get_stats))
        .route("/v1/products/{sku}", put(put_product))
        .route("/v1/audit/verify", get(audit_verify))
        .route("/v1/audit/public-key", get(audit_public_key))
        .route("/v1/admin/keys", post(admin_keys))
        .route("/v1/admin/clock", post(admin_clock))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::openapi()) }),
        )
        .route(
            "/",
            get(|| async { axum::response::Html(include_str!("dashboard.html")) }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::disable()) // bounded in `body_json`, answered as problem+json
        .with_state(Arc::new(state))
}

/// Who is calling.
pub(crate) struct Caller {
    pub(crate) tenant: String,
    pub(crate) admin: bool,
}

pub(crate) fn caller(state: &ServerState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let unauthorized = || {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <key>` is required",
        )
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(unauthorized)?;
    if constant_time_eq(key_hash(key).as_bytes(), state.admin_key_hash.as_bytes()) {
        return Ok(Caller {
            tenant: ADMIN_TENANT.to_owned(),
            admin: true,
        });
    }
    match state.app.tenant_for_key(key) {
        Ok(Some(tenant)) => Ok(Caller {
            tenant,
            admin: false,
        }),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(e.into()),
    }
}

/// The caller, who must hold the admin key.
fn admin(state: &ServerState, headers: &HeaderMap, what: &str) -> Result<Caller, Problem> {
    let who = caller(state, headers)?;
    if !who.admin {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("only the admin key {what}"),
        ));
    }
    Ok(who)
}

/// Reads a bounded JSON body.
pub(crate) async fn body_json(body: Body) -> Result<Value, Problem> {
    let bytes = to_bytes(body, BODY_BYTES_MAX).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {BODY_BYTES_MAX} bytes"),
        )
    })?;
    if json_depth(&bytes) > JSON_DEPTH_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "json_too_deep",
            format!("JSON nests deeper than {JSON_DEPTH_MAX}"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))
}

/// The deepest nesting of arrays and objects, counted without parsing (strings skipped).
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn input_problem(e: InputError) -> Problem {
    let status = match e {
        InputError::Malformed { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(status, "invalid_input", e.to_string())
}

/// The status code of a decided event (SPEC 3.2): a refused transition is 409 with the result.
fn event_status(status: EventStatus) -> StatusCode {
    match status {
        EventStatus::Rejected => StatusCode::CONFLICT,
        EventStatus::NeedsReview => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    }
}

fn reply_response(reply: marketgov_engine::Reply) -> Response {
    let mut response = (
        event_status(reply.status),
        [(header::CONTENT_TYPE, "application/json")],
        reply.json(),
    )
        .into_response();
    if reply.replayed {
        response
            .headers_mut()
            .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn post_event(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let mut value = body_json(body).await?;
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            value
                .get("idempotency_key")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency_key_required",
                "an `Idempotency-Key` header (or `idempotency_key` field) is required",
            )
        })?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("idempotency_key");
    }
    let event = match Input::from_value(value).map_err(input_problem)? {
        Input::Customer(event) => event,
        Input::Catalog(_) => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "catalog commands go to PUT /v1/products/{sku}",
            ))
        }
    };
    let reply = state
        .app
        .submit_event(&who.tenant, Some(&key), event)
        .await?;
    Ok(reply_response(reply))
}

/// Events decided per batch at most.
pub const BATCH_EVENTS_MAX: usize = 1000;

/// `POST /v1/events:batch`: `{"events": [...]}` (or a bare array), each event with its own
/// `idempotency_key`; answers each one's HTTP status and body, in order.
async fn post_events_batch(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let value = body_json(body).await?;
    let events = match value {
        Value::Array(items) => items,
        Value::Object(mut obj) => match obj.remove("events") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_batch",
                    "send {\"events\": [...]}",
                ))
            }
        },
        _ => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed_batch",
                "send {\"events\": [...]}",
            ))
        }
    };
    if events.len() > BATCH_EVENTS_MAX {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("at most {BATCH_EVENTS_MAX} events per batch"),
        ));
    }
    let runs = events.into_iter().map(|mut item| {
        let (app, tenant) = (state.app.clone(), who.tenant.clone());
        async move {
            let key = item.get("idempotency_key").and_then(Value::as_str).map(str::to_owned);
            if let Some(obj) = item.as_object_mut() {
                obj.remove("idempotency_key");
            }
            let outcome: Result<marketgov_engine::Reply, Problem> = async {
                let key = key.clone().ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "idempotency_key_required", "each event needs its `idempotency_key`"))?;
                let Input::Customer(event) = Input::from_value(item).map_err(input_problem)? else {
                    return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", "not a customer event"));
                };
                Ok(app.submit_event(&tenant, Some(&key), event).await?)
            }
            .await;
            match outcome {
                Ok(reply) => json!({"idempotency_key": key, "http_status": event_status(reply.status).as_u16(), "replayed": reply.replayed, "body": reply.body()}),
                Err(p) => json!({"idempotency_key": key, "http_status": p.status.as_u16(), "body": {
                    "type": format!("{PROBLEM_BASE}{}", p.code), "status": p.status.as_u16(), "detail": p.detail}}),
            }
        }
    });
    // Events of one batch run concurrently (different customers in parallel, each customer's in
    // order of arrival at its shard).
    let mut tasks = Vec::new();
    for run in runs {
        tasks.push(tokio::spawn(run));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.map_err(|e| {
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?);
    }
    Ok(axum::Json(json!({"results": results})).into_response())
}

/// `POST /v1/a2a/messages`: an agent envelope (SPEC 2.4).
async fn post_a2a(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let value = body_json(body).await?;
    let envelope: marketgov_core::cases::Envelope = serde_json::from_value(value).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_envelope",
            e.to_string(),
        )
    })?;
    envelope.validate().map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_envelope",
            e.to_string(),
        )
    })?;
    Ok(
        match state.app.submit_envelope(&who.tenant, envelope).await? {
            marketgov_engine::AgentReply::Ack(body) => {
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            marketgov_engine::AgentReply::Refused(body) => {
                (StatusCode::CONFLICT, axum::Json(body)).into_response()
            }
            marketgov_engine::AgentReply::OutOfOrder { last_accepted } => Problem::new(
                StatusCode::CONFLICT,
                "out_of_order",
                format!("sequence not after the last accepted {last_accepted}, and its key was never seen"),
            )
            .with("last_accepted_sequence", json!(last_accepted))
            .into_response(),
        },
    )
}

async fn get_customer(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    marketgov_core::ids::check_id("customer_id", &id).map_err(input_problem)?;
    let Some(c) = state.app.customer(&who.tenant, &id).await? else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no customer `{id}`"),
        ));
    };
    let record = |v: Option<Value>| v.unwrap_or_else(|| json!({"state": null}));
    let body = json!({
        "customer_id": c.customer_id,
        "version": c.version,
        "governors": {
            "entitlement": record(c.entitlement.as_ref().and_then(|e| serde_json::to_value(e).ok())),
            "billing": record(serde_json::to_value(&c.billing).ok()),
            "subscription": record(c.subscription.as_ref().and_then(|s| serde_json::to_value(s).ok())),
            "customer_account": record(serde_json::to_value(&c.account).ok()),
            "quota_sla": record(serde_json::to_value(&c.quota).ok()),
            "compliance": record(serde_json::to_value(&c.compliance).ok()),
            "multi_tenant": record(serde_json::to_value(&c.tenant).ok()),
        },
        "timers": c.pending_timers(),
    });
    Ok(axum::Json(body).into_response())
}

/// `PUT /v1/products/{sku}`: creates or replaces a draft (publishing it when `publish` is true),
/// or changes a published product's price. `If-Match` names the version the caller saw.
async fn put_product(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(sku): Path<String>,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let value = body_json(body).await?;
    let sku_id = marketgov_core::ids::Sku::new(&sku).map_err(input_problem)?;
    let expected: u64 = match headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        Some(v) => v.trim_matches('"').parse().map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_if_match",
                "If-Match must be a version number",
            )
        })?,
        None => state
            .app
            .product(&who.tenant, &sku_id)?
            .map_or(0, |p| p.version),
    };
    let publish = value
        .get("publish")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let current = state.app.product(&who.tenant, &sku_id)?;
    let on_sale = current.as_ref().is_some_and(|p| p.state.on_sale());
    let mut command = value.clone();
    if let Some(obj) = command.as_object_mut() {
        obj.remove("publish");
        obj.insert("sku".into(), json!(sku));
        obj.insert("expected_version".into(), json!(expected));
        obj.insert(
            "type".into(),
            json!(if on_sale {
                "product_price_changed"
            } else {
                "product_submitted"
            }),
        );
        if on_sale {
            obj.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "type" | "sku" | "expected_version" | "price" | "effective_at"
                )
            });
        }
    }
    let Input::Catalog(command) = Input::from_value(command).map_err(input_problem)? else {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "not a product",
        ));
    };
    let mut reply = state.app.submit_catalog(&who.tenant, None, command).await?;
    if reply.status == EventStatus::Completed && publish && !on_sale {
        let version = expected + 1;
        let publish = CatalogCommand::ProductPublished {
            sku: sku_id.clone(),
            expected_version: version,
        };
        reply = state.app.submit_catalog(&who.tenant, None, publish).await?;
    }
    if reply.status == EventStatus::Rejected {
        let body = reply.body();
        let rejection = &body["governor"]["rejection"];
        let code = if rejection["code"] == "concurrent_update" {
            "concurrent_update"
        } else {
            "product_rejected"
        };
        let detail = body["governor"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut problem = Problem::new(StatusCode::CONFLICT, code, detail);
        for field in ["expected", "actual"] {
            if let Some(v) = rejection.get(field) {
                problem = problem.with(field, v.clone());
            }
        }
        return Err(problem);
    }
    let product = state.app.product(&who.tenant, &sku_id)?.ok_or_else(|| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "product vanished",
        )
    })?;
    let mut body = serde_json::to_value(&product).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("state".into(), json!(product.state.as_str()));
    }
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&product.version.to_string()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

type Params = axum::extract::Query<std::collections::HashMap<String, String>>;

fn limit_of(params: &Params) -> Result<usize, Problem> {
    match params.get("limit") {
        None => Ok(100),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=marketgov_engine::PAGE_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit must be 1..={}", marketgov_engine::PAGE_LIMIT_MAX),
                )
            }),
    }
}

async fn get_customer_history(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    marketgov_core::ids::check_id("customer_id", &id).map_err(input_problem)?;
    let after = params
        .get("cursor")
        .map_or(Ok(0), |c| c.parse::<u64>())
        .map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "cursor is a version number",
            )
        })?;
    let page = state
        .app
        .customer_history(&who.tenant, &id, after, limit_of(&params)?)?;
    if page.items.is_empty() && after == 0 {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no customer `{id}`"),
        ));
    }
    Ok(axum::Json(
        json!({"customer_id": id, "entries": page.items, "next_cursor": page.next_cursor}),
    )
    .into_response())
}

async fn get_products(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let products: Vec<Value> = state
        .app
        .products(&who.tenant)?
        .into_iter()
        .map(|p| {
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["state"] = json!(p.state.as_str());
            v
        })
        .collect();
    Ok(axum::Json(json!({"products": products})).into_response())
}

async fn get_case(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    match state.app.case(&who.tenant, &id)? {
        Some(case) => Ok(axum::Json(case).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "case_not_found",
            format!("no case `{id}`"),
        )),
    }
}

async fn get_cases(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let spec = match params.get("spec") {
        Some(s) => Some(marketgov_core::cases::CaseSpec::parse(s).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_spec",
                format!("unknown spec `{s}`"),
            )
        })?),
        None => None,
    };
    let status = match params.get("status") {
        Some(s) => Some(serde_json::from_value(json!(s)).map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                format!("unknown status `{s}`"),
            )
        })?),
        None => None,
    };
    let page = state.app.cases(
        &who.tenant,
        spec,
        status,
        limit_of(&params)?,
        params.get("cursor").map(String::as_str),
    )?;
    Ok(axum::Json(json!({"cases": page.items, "next_cursor": page.next_cursor})).into_response())
}

async fn get_review_queue(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    Ok(axum::Json(json!({"items": state.app.review_queue(&who.tenant)?})).into_response())
}

async fn resolve_review(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, Problem> {
    let who = caller(&state, &headers)?;
    let value = body_json(body).await?;
    let action = value
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("discard");
    let actor = value
        .get("actor")
        .and_then(Value::as_str)
        .unwrap_or(if who.admin { "admin" } else { "tenant" });
    match state
        .app
        .resolve_review(&who.tenant, &id, action, actor)
        .await
    {
        Ok(reply) => Ok(axum::Json(
            json!({"id": id, "resolved": action, "result": reply.map(|r| r.body())}),
        )
        .into_response()),
        Err(marketgov_engine::Error::Replay { detail, .. }) => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "review_item_not_found",
            detail,
        )),
        Err(e) => Err(e.into()),
    }
}

async fn get_stats(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&state, &headers)?;
    Ok(axum::Json(state.app.stats()?).into_response())
}

async fn audit_verify(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&state, &headers)?;
    let report = state.app.audit_verify()?;
    Ok(axum::Json(json!({
        "ok": report.ok,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "first_bad": report.first_bad.map(|b| json!({"seq": b.seq, "reason": b.reason.name()})),
    }))
    .into_response())
}

async fn audit_public_key(State(state): State<Arc<ServerState>>) -> Result<Response, Problem> {
    Ok(
        axum::Json(json!({"algorithm": "ed25519", "public_key": state.app.audit_public_key()?}))
            .into_response(),
    )
}

async fn admin_keys(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    admin(&state, &headers, "creates keys")?;
    let value = body_json(body).await?;
    let tenant = value.get("tenant").and_then(Value::as_str).ok_or_else(|| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "`tenant` is required",
        )
    })?;
    let key = state.app.create_api_key(tenant).await?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"tenant": tenant, "key": key})),
    )
        .into_response())
}

async fn admin_clock(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !state.manual_clock {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the clock is not manual",
        ));
    }
    admin(&state, &headers, "moves the clock")?;
    let value = body_json(body).await?;
    let now = state.app.clock().now();
    let to = match (
        value.get("advance_seconds").and_then(Value::as_i64),
        value.get("set").and_then(Value::as_str),
    ) {
        (Some(seconds), None) if (0..=10 * 366 * 86_400).contains(&seconds) => now
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .map_err(|e| {
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    e.to_string(),
                )
            })?,
        (None, Some(text)) => text.parse::<jiff::Timestamp>().map_err(|e| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                e.to_string(),
            )
        })?,
        _ => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                "send {\"advance_seconds\": N} (0 to ten years) or {\"set\": \"<RFC 3339>\"}",
            ))
        }
    };
    state.app.advance_clock_to(to).await?;
    // Effects of the firings (charges, notifications) are carried out before answering.
    while state.app.run_effects().await? > 0 {}
    Ok(axum::Json(json!({"now": state.app.clock().now().to_string()})).into_response())
}

/// `GET /metrics`: Prometheus text. Aggregates only (no tenant data), so it needs no key.
async fn metrics(State(state): State<Arc<ServerState>>) -> Result<Response, Problem> {
    let s = state.app.stats()?;
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "marketgov_events_total",
        "counter",
        "Events in the log (decided inputs, all statuses).",
        n("events_processed"),
    );
    metric(
        "marketgov_store_commits_total",
        "counter",
        "Commits since start.",
        n("commits"),
    );
    metric(
        "marketgov_store_commit_batches_total",
        "counter",
        "Group-commit transactions since start.",
        n("commit_batches"),
    );
    metric(
        "marketgov_conflicts_total",
        "counter",
        "Conflicts found since start.",
        n("conflicts"),
    );
    metric(
        "marketgov_rejections_total",
        "counter",
        "Events refused or parked since start.",
        n("errors"),
    );
    metric(
        "marketgov_timers_pending",
        "gauge",
        "Stored timers not fired yet.",
        n("pending_timers"),
    );
    metric(
        "marketgov_outbox_depth",
        "gauge",
        "Effects queued and not done.",
        n("pending_effects"),
    );
    metric(
        "marketgov_shard_restarts_total",
        "counter",
        "Shards restarted by their supervisor.",
        n("shard_restarts"),
    );
    let durable = state.app.decision_to_durable();
    out.push_str(
        "# HELP marketgov_decision_to_durable_seconds From the core's decision to the store's acknowledgement that its commit is synced, since start.\n\
         # TYPE marketgov_decision_to_durable_seconds summary\n",
    );
    for (q, label) in [
        (0.5, "0.5"),
        (0.95, "0.95"),
        (0.99, "0.99"),
        (0.999, "0.999"),
    ] {
        out.push_str(&format!(
            "marketgov_decision_to_durable_seconds{{quantile=\"{label}\"}} {}\n",
            micros_as_seconds(durable.quantile(q))
        ));
    }
    out.push_str(&format!(
        "marketgov_decision_to_durable_seconds_sum {}\nmarketgov_decision_to_durable_seconds_count {}\n",
        micros_as_seconds(durable.sum()),
        durable.total()
    ));
    for connector in ["payments", "fulfillment", "notification", "escalation"] {
        let open = u64::from(state.app.breaker_state(connector) != "closed");
        out.push_str(&format!(
            "marketgov_circuit_breaker_open{{connector=\"{connector}\"}} {open}\n"
        ));
    }
    let mut response = (StatusCode::OK, out).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// Microseconds as decimal seconds, exactly (no float rounding).
fn micros_as_seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

async fn readyz(State(state): State<Arc<ServerState>>) -> Response {
    match state.app.store().stopped() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(reason) => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason).into_response()
        }
    }
}

/// Runs the background work of a server: timers, effects, idempotency sweeps.
pub async fn background(app: App, manual_clock: bool, tick: Duration) {
    for n in 0u64.. {
        if !manual_clock {
            let _ = app.fire_due_timers().await;
        }
        let _ = app.run_effects().await;
        if n % 500 == 0 {
            let _ = app.sweep_idempotency().await;
        }
        tokio::time::sleep(tick).await;
    }
}

/// Serves until SIGTERM or Ctrl-C, then stops accepting, finishes what was accepted, and returns.
pub async fn serve(state: ServerState, listen: SocketAddr) -> std::io::Result<()> {
    // TCP_NODELAY: a response is written in more than one segment; with Nagle's algorithm the
    // later ones wait for the client's delayed acknowledgement.
    let listener =
        axum::serve::ListenerExt::tap_io(tokio::net::TcpListener::bind(listen).await?, |stream| {
            let _ = stream.set_nodelay(true);
        });
    let background = tokio::spawn(background(
        state.app.clone(),
        state.manual_clock,
        Duration::from_millis(50),
    ));
    let result = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    background.abort();
    result
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
