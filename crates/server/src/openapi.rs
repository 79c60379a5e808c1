//! `/openapi.json`, generated from the endpoint table below; a test requests every endpoint of
//! the table from the real router, so the document cannot name a route that does not exist.

use serde_json::{json, Map, Value};

/// One documented endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path, with `{param}`s.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The request body's schema, if any (a name in `components.schemas`).
    pub request: Option<&'static str>,
    /// Responses: status and the schema name of the body (`Problem` for errors).
    pub responses: &'static [(u16, &'static str)],
}

/// Every endpoint of the API.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "post",
        path: "/v1/events",
        summary: "Decide one customer-lifecycle event (Idempotency-Key required)",
        request: Some("Event"),
        responses: &[
            (200, "EventResult"),
            (202, "EventResult"),
            (409, "EventResult"),
            (400, "Problem"),
            (401, "Problem"),
            (413, "Problem"),
            (422, "Problem"),
            (429, "Problem"),
            (503, "Problem"),
        ],
    },
    Endpoint {
        method: "post",
        path: "/v1/events:batch",
        summary: "Decide up to 1,000 events, each with its own idempotency_key",
        request: Some("EventBatch"),
        responses: &[(200, "BatchResult"), (400, "Problem"), (413, "Problem")],
    },
    Endpoint {
        method: "post",
        path: "/v1/a2a/messages",
        summary: "An agent envelope: sequence tracking and workflow cases",
        request: Some("Envelope"),
        responses: &[(200, "AgentAck"), (409, "Problem"), (422, "Problem")],
    },
    Endpoint {
        method: "post",
        path: "/v1/integrations/gcp-marketplace",
        summary: "A Google Cloud Marketplace Pub/Sub push",
        request: Some("PubSubPush"),
        responses: &[(200, "Object"), (400, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/customers/{id}",
        summary: "Every governor's state, the version and open timers",
        request: None,
        responses: &[(200, "Customer"), (404, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/customers/{id}/history",
        summary: "The customer's audit entries (cursor paging)",
        request: None,
        responses: &[(200, "Object"), (404, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/products",
        summary: "The tenant's products",
        request: None,
        responses: &[(200, "Object")],
    },
    Endpoint {
        method: "put",
        path: "/v1/products/{sku}",
        summary: "Create, publish or reprice a product (If-Match: version)",
        request: Some("ProductPut"),
        responses: &[(200, "Product"), (409, "Problem"), (422, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/cases",
        summary: "Cases by spec and status (limit, cursor)",
        request: None,
        responses: &[(200, "Object")],
    },
    Endpoint {
        method: "get",
        path: "/v1/cases/{id}",
        summary: "One workflow case",
        request: None,
        responses: &[(200, "Case"), (404, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/review-queue",
        summary: "Open review items",
        request: None,
        responses: &[(200, "Object")],
    },
    Endpoint {
        method: "post",
        path: "/v1/review-queue/{id}/resolve",
        summary: "Resolve a review item: discard or retry",
        request: Some("Object"),
        responses: &[(200, "Object"), (404, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/v1/audit/verify",
        summary: "Verify the hash chain and signed checkpoints",
        request: None,
        responses: &[(200, "AuditReport")],
    },
    Endpoint {
        method: "get",
        path: "/v1/audit/public-key",
        summary: "The Ed25519 key that verifies checkpoints",
        request: None,
        responses: &[(200, "Object")],
    },
    Endpoint {
        method: "get",
        path: "/v1/stats",
        summary: "The orchestrator's statistics",
        request: None,
        responses: &[(200, "Object")],
    },
    Endpoint {
        method: "post",
        path: "/v1/admin/keys",
        summary: "Create a tenant's API key (admin only; shown once)",
        request: Some("Object"),
        responses: &[(201, "Object"), (403, "Problem")],
    },
    Endpoint {
        method: "post",
        path: "/v1/admin/clock",
        summary: "Move the manual clock; timers due by then fire first (--clock manual only)",
        request: Some("ClockMove"),
        responses: &[(200, "Object"), (404, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/healthz",
        summary: "Liveness",
        request: None,
        responses: &[(200, "Text")],
    },
    Endpoint {
        method: "get",
        path: "/readyz",
        summary: "Readiness (the store accepts writes)",
        request: None,
        responses: &[(200, "Text"), (503, "Problem")],
    },
    Endpoint {
        method: "get",
        path: "/openapi.json",
        summary: "This document",
        request: None,
        responses: &[(200, "Object")],
    },
];

fn schemas() -> Value {
    let obj = json!({"type": "object"});
    let money = |extra: Value| json!({"type": "object", "properties": extra});
    json!({
        "Object": obj,
        "Text": {"type": "string"},
        "Problem": {"type": "object", "description": "RFC 9457 problem details; `type` is stable per error",
            "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}},
            "required": ["type", "status"]},
        "Event": {"type": "object", "description": "A customer-lifecycle event; `type` is one of SPEC 2.1's names",
            "properties": {"type": {"type": "string", "enum": marketgov_core::input::KNOWN_EVENT_TYPES},
                "customer_id": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                "occurred_at": {"type": "string", "format": "date-time"},
                "idempotency_key": {"type": "string", "maxLength": 255}},
            "required": ["type", "customer_id"]},
        "EventBatch": {"type": "object", "properties": {"events": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/Event"}}}},
        "BatchResult": {"type": "object", "properties": {"results": {"type": "array", "items": obj}}},
        "EventResult": {"type": "object", "properties": {
            "event_id": {"type": "string"},
            "status": {"type": "string", "enum": ["completed", "rejected", "conflict_resolved", "compensated", "needs_review"]},
            "phases": {"type": "array", "items": {"type": "string"}},
            "governors": {"type": "array", "items": {"type": "object", "properties": {
                "governor": {"type": "string"}, "outcome": {"type": "string", "enum": ["success", "conflict_detected", "failed", "not_applicable"]},
                "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]}, "message": {"type": "string"}}}},
            "effects": {"type": "array", "items": money(json!({"kind": {"type": "string"}, "amount": {"type": "integer"}, "currency": {"type": "string"}, "idempotency_key": {"type": "string"}}))},
            "proration": money(json!({"credit": {"type": "integer"}, "charge": {"type": "integer"}, "net": {"type": "integer"}, "currency": {"type": "string"}})),
            "receipt": {"type": "object", "properties": {"seq": {"type": "integer"}, "hash": {"type": "string"}, "prev_hash": {"type": "string"}}}}},
        "Customer": {"type": "object", "properties": {"customer_id": {"type": "string"}, "version": {"type": "integer"},
            "governors": obj, "timers": {"type": "array", "items": {"type": "object", "properties": {"kind": {"type": "string"}, "due_at": {"type": "string"}}}}}},
        "ProductPut": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "integer", "minimum": 0}, "currency": {"type": "string"},
            "billing_period_days": {"type": "integer"}, "trial_days": {"type": "integer"}, "requires_approval": {"type": "boolean"},
            "quotas": {"type": "object", "additionalProperties": {"type": "integer"}}, "publish": {"type": "boolean"}}},
        "Product": {"type": "object", "properties": {"sku": {"type": "string"}, "state": {"type": "string"}, "version": {"type": "integer"}}},
        "Envelope": {"type": "object", "required": ["event_id", "event_type", "sequence_number", "idempotency_key", "timestamp_utc", "source_agent", "source_region", "event"]},
        "AgentAck": {"type": "object", "properties": {"status": {"type": "string", "enum": ["processed", "duplicate"]}, "sequence_number": {"type": "integer"},
            "case_id": {"type": "string"}, "gap_detected": {"type": "boolean"}, "expected_sequence": {"type": "integer"}, "missing_sequences": {"type": "integer"}}},
        "Case": {"type": "object", "properties": {"case_id": {"type": "string"}, "spec": {"type": "string"}, "state": {"type": "string"},
            "status": {"type": "string", "enum": ["running", "completed", "cancelled", "failed"]}, "data": obj, "history": {"type": "array", "items": obj}}},
        "PubSubPush": {"type": "object", "properties": {"message": {"type": "object", "properties": {"data": {"type": "string", "contentEncoding": "base64"}}}, "subscription": {"type": "string"}}},
        "AuditReport": {"type": "object", "properties": {"ok": {"type": "boolean"}, "entries": {"type": "integer"}, "checkpoints": {"type": "integer"}, "first_bad": obj}},
        "ClockMove": {"type": "object", "properties": {"advance_seconds": {"type": "integer"}, "set": {"type": "string", "format": "date-time"}}},
    })
}

/// The OpenAPI 3.1 document.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let responses: Map<String, Value> = e
            .responses
            .iter()
            .map(|(status, schema)| {
                let media = if *schema == "Problem" { "application/problem+json" } else { "application/json" };
                (status.to_string(), json!({"description": schema, "content": {media: {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}))
            })
            .collect();
        let mut op =
            json!({"summary": e.summary, "responses": responses, "security": [{"bearer": []}]});
        if let Some(schema) = e.request {
            op["requestBody"] = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        }
        let params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(entry) = paths
            .entry(e.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            entry.insert(e.method.to_owned(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "marketgov", "version": env!("CARGO_PKG_VERSION"),
            "description": "A durable governance engine for marketplace customer lifecycles (SPEC 3.2)."},
        "paths": paths,
        "components": {"schemas": schemas(), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}
