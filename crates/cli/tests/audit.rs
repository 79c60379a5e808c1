//! `marketgov audit verify` on a real data directory: an untouched log verifies; changing a byte
//! of an entry, deleting an entry, swapping two entries or forging a checkpoint makes it fail
//! (exit 1) and name the first bad position.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn marketgov(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_marketgov"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// A data directory with a few dozen committed events and a signed log.
fn populated(dir: &Path) {
    let mut lines = vec![
        r#"{"key":"a","input":{"type":"product_submitted","sku":"pro","name":"Pro","price":2000,"currency":"USD","billing_period_days":30}}"#.to_owned(),
        r#"{"key":"b","input":{"type":"product_published","sku":"pro","expected_version":1}}"#.to_owned(),
    ];
    let out = marketgov(
        &[
            "ingest",
            "--data-dir",
            dir.to_str().unwrap(),
            "--concurrency",
            "1",
        ],
        Some(&(lines.join("\n") + "\n")),
    );
    assert!(out.status.success());
    lines.clear();
    for i in 0..10 {
        lines.push(format!(r#"{{"key":"s{i}","input":{{"type":"customer_subscribes","customer_id":"c{i}","sku":"pro"}}}}"#));
    }
    let out = marketgov(
        &["ingest", "--data-dir", dir.to_str().unwrap()],
        Some(&(lines.join("\n") + "\n")),
    );
    assert!(out.status.success());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn verify(dir: &Path) -> (bool, String) {
    let out = marketgov(
        &["audit", "verify", "--data-dir", dir.to_str().unwrap()],
        None,
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn tampered(base: &Path, name: &str, sql: &str) -> (bool, String) {
    let dir = base.parent().unwrap().join(name);
    copy_dir(base, &dir);
    let conn = rusqlite::Connection::open(dir.join("marketgov.db")).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    verify(&dir)
}

#[test]
fn audit_verify_names_the_first_bad_position() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    populated(&base);
    let (ok, text) = verify(&base);
    assert!(ok, "{text}");
    assert!(
        text.contains(r#""ok":true"#) && text.contains(r#""unsigned_tail":0"#),
        "a cleanly stopped store is fully signed: {text}"
    );

    let (ok, text) = tampered(&base, "byte", "UPDATE events SET body = CAST(REPLACE(CAST(body AS TEXT), 'completed', 'c0mpleted') AS BLOB) WHERE seq = 3;");
    assert!(!ok && text.contains("entry 3: hash_mismatch"), "{text}");

    let (ok, text) = tampered(&base, "deleted", "DELETE FROM events WHERE seq = 5;");
    assert!(!ok && text.contains("entry 5: missing"), "{text}");

    let (ok, text) = tampered(
        &base,
        "swapped",
        "UPDATE events SET seq = -1 WHERE seq = 6; UPDATE events SET seq = 6 WHERE seq = 7; UPDATE events SET seq = 7 WHERE seq = -1;",
    );
    assert!(!ok && text.contains("entry 6:"), "{text}");

    let (ok, text) = tampered(
        &base,
        "forged",
        "UPDATE checkpoints SET signature = substr('0000', 1, 4) || substr(signature, 5) WHERE seq = (SELECT MAX(seq) FROM checkpoints);",
    );
    assert!(!ok && text.contains("bad_signature"), "{text}");

    assert!(
        !verify(&root.path().join("nothing-here")).0,
        "a directory without data is an error, not an empty success"
    );
}
