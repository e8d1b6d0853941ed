//! Dead letters: a record that failed for good, as one JSON line of the spool's
//! `dead-letters.jsonl`, with what is needed to send it again by hand.
//!
//! ```text
//! {"spool_id":7,"partition_key":"k","explicit_hash_key":null,"dedup_id":"00000000000000ff1",
//!  "data_base64":"aGVsbG8=","reason":"...","failed_at_unix_ms":1700000000000}
//! ```

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::segment::StoredRecord;

/// The JSON line (with its newline) for `record`, failed for `reason` at `now`.
pub(crate) fn line(record: &StoredRecord, reason: &str, now: SystemTime) -> String {
    let mut out = String::with_capacity(128 + record.record.data.len() * 4 / 3);
    let _ = write!(out, "{{\"spool_id\":{},\"partition_key\":", record.id);
    push_json_string(&mut out, &record.record.partition_key);
    out.push_str(",\"explicit_hash_key\":");
    match record.record.explicit_hash_key {
        Some(key) => {
            let _ = write!(out, "\"{key}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"dedup_id\":");
    match record.dedup_id {
        Some(id) => {
            let _ = write!(out, "\"{id}\"");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"data_base64\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(&record.record.data, &mut out);
    out.push_str("\",\"reason\":");
    push_json_string(&mut out, reason);
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let _ = writeln!(out, ",\"failed_at_unix_ms\":{ms}}}");
    out
}

/// `s` as a JSON string literal (RFC 8259 escapes).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserRecord;
    use crate::dedup::DedupId;
    use crate::hash::HashKey;

    #[test]
    fn a_dead_letter_is_one_parseable_json_line() {
        let record = StoredRecord {
            id: 7,
            record: UserRecord::new("k\"e\\y\n\u{1}é", &b"\x00\xffhello"[..])
                .with_explicit_hash_key(HashKey(12345)),
            dedup_id: Some(DedupId {
                producer: 0xff,
                seq: 1,
            }),
        };
        let text = line(&record, "stream \"s\" deleted\n", UNIX_EPOCH);
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["spool_id"], 7);
        assert_eq!(v["partition_key"], "k\"e\\y\n\u{1}é");
        assert_eq!(v["explicit_hash_key"], "12345");
        assert_eq!(v["dedup_id"], "00000000000000ff1");
        assert_eq!(v["reason"], "stream \"s\" deleted\n");
        assert_eq!(v["failed_at_unix_ms"], 0);
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, b"\x00\xffhello");
        let plain = StoredRecord {
            id: 1,
            record: UserRecord::new("k", &b""[..]),
            dedup_id: None,
        };
        let v: serde_json::Value = serde_json::from_str(&line(&plain, "r", UNIX_EPOCH)).unwrap();
        assert!(v["explicit_hash_key"].is_null() && v["dedup_id"].is_null());
    }
}
