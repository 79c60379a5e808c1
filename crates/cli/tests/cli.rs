//! The real binary: help, diagrams, docs and the demo, with meaningful exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::process::Command;

fn marketgov(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn help_lists_the_commands_and_bad_usage_exits_2() {
    let out = marketgov(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("demo") && text.contains("governors"),
        "{text}"
    );
    assert_eq!(marketgov(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(
        marketgov(&["governors", "diagram", "--format", "png"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn diagrams_cover_all_eight_governors_in_both_formats() {
    for (format, marker) in [("mermaid", "stateDiagram-v2"), ("dot", "digraph")] {
        let out = marketgov(&["governors", "diagram", "--format", format]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches(marker).count(), 8, "{format}");
        for governor in [
            "entitlement",
            "billing",
            "product_catalog",
            "subscription",
            "customer_account",
            "quota_sla",
            "compliance",
            "multi_tenant",
        ] {
            assert!(text.contains(governor), "{format}: {governor}");
        }
    }
}

#[test]
fn docs_are_written_where_asked() {
    let dir = std::env::temp_dir().join(format!("marketgov-docs-{}", std::process::id()));
    let out = marketgov(&["governors", "docs", "--out-dir", dir.to_str().unwrap()]);
    assert!(out.status.success());
    let written = std::fs::read_to_string(dir.join("governors.md")).unwrap();
    assert_eq!(written, marketgov_core::diagram::governors_markdown());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_demo_runs_on_a_durable_store_shows_each_kind_of_outcome_and_verifies() {
    let out = marketgov(&["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "-> compensated",
        "-> conflict_resolved",
        "-> rejected",
        "payment_amount_mismatch",
        "escalate to the manager queue",
        "escalate to the director queue",
        "approved automatically after 72 h",
        "proration: credit",
        "rebuilds the same state: yes",
        "audit log verified: yes",
        "(sandbox connector)",
        "timer approval_escalation fired",
    ] {
        assert!(text.contains(needle), "demo output lacks {needle:?}");
    }
    let json = marketgov(&["demo", "--json"]);
    assert!(json.status.success());
    let lines = String::from_utf8_lossy(&json.stdout);
    for line in lines.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(
            value.get("status").is_some() && value.get("ctx").is_some(),
            "{line}"
        );
    }
}

#[test]
fn the_demo_keeps_its_store_when_asked_and_the_store_verifies_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let out = marketgov(&["demo", "--data-dir", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = marketgov(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(r#""ok":true"#));
}

#[test]
fn the_bench_runs_a_tiny_workload_and_checks_every_answer() {
    let out = marketgov(&["bench", "--customers", "30", "--concurrency", "4", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert!(report["events"].as_u64().unwrap() >= 30 * 9, "{report}");
    assert_eq!(report["mode"], "inproc");
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "every answer as expected"
    );
    for field in [
        "events_per_second",
        "peak_rss_mib",
        "store_bytes_per_event",
        "commit_batch_size_mean",
        "coordination_compute_ratio",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert!(report["latency_us"]["p99"].as_u64().is_some());
    // Every event but the 30 replays (answered from the log) was decided and committed, and the
    // engine timed each from its decision to its synced commit.
    let durable = &report["decision_to_durable_us"];
    assert_eq!(
        durable["count"].as_u64(),
        report["events"].as_u64().map(|e| e - 30),
        "{report}"
    );
    let q = |k: &str| durable[k].as_u64().unwrap();
    assert!(
        q("p50") > 0 && q("p50") <= q("p99") && q("p99") <= q("max"),
        "{report}"
    );
    assert_eq!(report["decision_to_durable_scope"], "this run");
    // Each replay follows its first request closely: all 30 are answered from memory.
    assert_eq!(report["replays_answered_from_memory"], 30, "{report}");
    // On a fresh store every customer is new and every key but the replayed one is new: the
    // filters answer all of those without a read (a false "maybe" is about 1e-20 this empty).
    assert_eq!(report["stream_reads_saved"], 30, "{report}");
    assert_eq!(
        report["idempotency_reads_saved"].as_u64(),
        report["requests"].as_u64().map(|e| e - 30),
        "{report}"
    );
    // Failed payments climbed the retry ladder through the engine's timers (the bench checks
    // that each reached collections, which only every rung leads to).
    assert_eq!(report["retry_ladder"], true);
    let firings = report["timer_firings"].as_u64().unwrap();
    assert!(firings >= 3, "{report}");
    assert_eq!(
        report["events"].as_u64(),
        report["requests"].as_u64().map(|r| r + firings)
    );
}

/// The JSON report of the bench's tiny workload (30 customers, 4 at a time) run with `extra`.
fn tiny_bench(extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["bench", "--customers", "30", "--concurrency", "4", "--json"];
    args.extend_from_slice(extra);
    let out = marketgov(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

/// The same seeded workload on the log-structured store: every answer as expected, the same
/// events as on SQLite, and the store it leaves verifies with `audit verify`.
#[test]
fn the_bench_runs_on_the_log_store_with_the_same_answers_and_the_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("log-data");
    let log = tiny_bench(&["--store", "log", "--data-dir", data.to_str().unwrap()]);
    let sqlite = tiny_bench(&[]);
    assert_eq!(log["errors"], serde_json::json!({}), "{log}");
    for field in ["events", "requests", "timer_firings"] {
        assert_eq!(log[field], sqlite[field], "{field}: {log} / {sqlite}");
    }
    assert!(data.join("log").is_dir() && !data.join("marketgov.db").exists());
    let verify = marketgov(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(r#""ok":true"#));
}

/// With a stream cache of two streams and a snapshot every two events, nearly every event
/// reloads its customer from a snapshot and the events after it: the answers are still all as
/// expected, and the same as with the defaults, on both stores.
#[test]
fn the_bench_answers_the_same_when_every_customer_reloads_from_snapshots() {
    let defaults = tiny_bench(&[]);
    let tight = [
        "--streams-in-memory-max",
        "2",
        "--snapshot-every-events",
        "2",
    ];
    for store in ["sqlite", "log"] {
        let mut args = tight.to_vec();
        args.extend_from_slice(&["--store", store]);
        let report = tiny_bench(&args);
        assert_eq!(report["errors"], serde_json::json!({}), "{store}: {report}");
        assert_eq!(report["snapshot_every_events"], 2, "{report}");
        assert_eq!(report["streams_in_memory_max"], 2, "{report}");
        for field in ["events", "requests", "timer_firings"] {
            assert_eq!(report[field], defaults[field], "{store} {field}: {report}");
        }
    }
}
