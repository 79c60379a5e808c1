//! Tamper tests: changing a byte of an entry, deleting, swapping or inserting entries, rewriting
//! the chain, truncating it, or forging a checkpoint each make verification fail and name the
//! first bad position.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

use marketgov_audit::{entry_hash, verify, CheckpointSigner, Entry, Fault, Head, Report};

const SECRET: [u8; 32] = [7; 32];

/// A log of 20 entries with a checkpoint every 5.
fn log() -> (
    CheckpointSigner,
    Vec<Entry>,
    Vec<marketgov_audit::Checkpoint>,
) {
    let signer = CheckpointSigner::from_secret(&SECRET);
    let mut head = Head::default();
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for i in 1..=20u64 {
        let e = head.append(format!(r#"{{"event":"evt-{i}","status":"completed"}}"#).into_bytes());
        if i % 5 == 0 {
            checkpoints.push(signer.sign(e.seq, &e.hash));
        }
        entries.push(e);
    }
    (signer, entries, checkpoints)
}

fn check(
    signer: &CheckpointSigner,
    entries: &[Entry],
    checkpoints: &[marketgov_audit::Checkpoint],
) -> Report {
    verify(&signer.public_key(), entries, checkpoints).unwrap()
}

fn first_bad(report: &Report) -> (u64, Fault) {
    assert!(!report.ok, "{report:?}");
    let bad = report.first_bad.expect("a bad position");
    (bad.seq, bad.reason)
}

#[test]
fn an_intact_log_verifies() {
    let (signer, entries, checkpoints) = log();
    let r = check(&signer, &entries, &checkpoints);
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.entries, r.checkpoints, r.unsigned_tail, r.first_bad),
        (20, 4, 0, None)
    );
}

#[test]
fn a_changed_byte_is_named() {
    let (signer, mut entries, checkpoints) = log();
    entries[6].bytes[3] ^= 0x01;
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (7, Fault::HashMismatch)
    );
}

#[test]
fn a_rewritten_chain_is_caught_by_the_next_checkpoint() {
    // The attacker changes entry 7 and recomputes every hash after it: the chain is consistent,
    // but the signed checkpoint at 10 no longer matches.
    let (signer, mut entries, checkpoints) = log();
    entries[6].bytes = b"{\"event\":\"evt-7\",\"status\":\"rejected\"}".to_vec();
    let mut prev = entries[5].hash;
    for e in entries.iter_mut().skip(6) {
        e.prev_hash = prev;
        e.hash = entry_hash(&prev, e.seq, &e.bytes);
        prev = e.hash;
    }
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (10, Fault::CheckpointMismatch)
    );
}

#[test]
fn a_deleted_entry_is_named() {
    let (signer, mut entries, checkpoints) = log();
    entries.remove(6);
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (7, Fault::Missing)
    );
}

#[test]
fn swapped_entries_are_named() {
    // Swapping the contents of two positions.
    let (signer, mut entries, checkpoints) = log();
    let (a, b) = (entries[6].bytes.clone(), entries[7].bytes.clone());
    entries[6].bytes = b;
    entries[7].bytes = a;
    assert_eq!(first_bad(&check(&signer, &entries, &checkpoints)).0, 7);
    // Swapping whole rows in storage order.
    let (signer, mut entries, checkpoints) = log();
    entries.swap(6, 7);
    assert_eq!(first_bad(&check(&signer, &entries, &checkpoints)).0, 7);
}

#[test]
fn an_inserted_entry_is_named() {
    let (signer, mut entries, checkpoints) = log();
    // A well-formed entry chained after 7, slipped in before the real 8.
    let forged_bytes = b"{\"event\":\"forged\"}".to_vec();
    let forged = Entry {
        seq: 8,
        prev_hash: entries[6].hash,
        hash: entry_hash(&entries[6].hash, 8, &forged_bytes),
        bytes: forged_bytes,
    };
    entries.insert(7, forged);
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (8, Fault::Unexpected)
    );
}

#[test]
fn a_truncated_log_is_named() {
    let (signer, mut entries, checkpoints) = log();
    entries.truncate(15);
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (16, Fault::Missing)
    );
}

#[test]
fn a_forged_checkpoint_is_named() {
    let (signer, entries, mut checkpoints) = log();
    let mut sig = checkpoints[1].signature.clone().into_bytes();
    sig[0] = if sig[0] == b'a' { b'b' } else { b'a' };
    checkpoints[1].signature = String::from_utf8(sig).unwrap();
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (10, Fault::BadSignature)
    );

    // Signed by another key.
    let (signer, entries, mut checkpoints) = log();
    let other = CheckpointSigner::from_secret(&[9; 32]);
    checkpoints[2] = other.sign(15, &entries[14].hash);
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (15, Fault::BadSignature)
    );

    // Unparseable.
    let (signer, entries, mut checkpoints) = log();
    checkpoints[0].hash = "zz".into();
    assert_eq!(
        first_bad(&check(&signer, &entries, &checkpoints)),
        (5, Fault::BadSignature)
    );
}

#[test]
fn entries_after_the_last_checkpoint_are_reported_as_unsigned() {
    let (signer, entries, checkpoints) = log();
    let r = check(&signer, &entries, &checkpoints[..2]);
    assert!(r.ok);
    assert_eq!(r.unsigned_tail, 10);
}

#[test]
fn the_hash_covers_the_sequence_number_and_the_previous_hash() {
    let a = entry_hash(&[0; 32], 1, b"x");
    assert_ne!(a, entry_hash(&[0; 32], 2, b"x"));
    assert_ne!(a, entry_hash(&[1; 32], 1, b"x"));
    assert_ne!(a, entry_hash(&[0; 32], 1, b"y"));
    assert!(marketgov_audit::Verifier::public_key_from_hex("abc").is_err());
}
