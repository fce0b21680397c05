//! Arguments and replies of the stream commands, as fred `Value`s.
//!
//! Replies are parsed by hand (RESP2 arrays; RESP3 maps accepted too) so
//! field values stay raw bytes: the MAC covers the exact stored bytes, and
//! nothing here may re-encode them.

use fred::types::Value;

use crate::backend::{BackendError, Result};
use crate::envelope::StreamEntry;

/// One stream entry as read: its id and fields, `None` when the entry was
/// deleted while pending (Redis 6.2 `XAUTOCLAIM` replies so).
pub(super) type RawEntry = (String, Option<StreamEntry>);

/// `XADD … * v <v> k <k> m <m> s <s>`: the field/value arguments.
pub(super) fn entry_args(entry: &StreamEntry) -> impl Iterator<Item = Value> + '_ {
    entry
        .fields()
        .flat_map(|(name, value)| [Value::from(name), Value::Bytes(value.clone())])
}

fn unexpected(what: &str) -> BackendError {
    BackendError::Unavailable(format!("redis: unexpected reply to {what}"))
}

/// The elements of an array reply; a map reply (RESP3) as key, value, ….
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Null => vec![],
        other => other.into_array(),
    }
}

/// A bulk-string reply as text (entry ids, consumer names).
pub(super) fn text(v: &Value) -> Option<String> {
    v.as_bytes()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

/// An array reply of bulk strings as texts (an empty or nil reply: none).
pub(super) fn texts(v: &Value) -> Vec<String> {
    items(v.clone()).iter().filter_map(text).collect()
}

/// `[id, [field, value, …]]`, or `[id, nil]` for a deleted entry.
fn entry(v: Value, what: &str) -> Result<RawEntry> {
    let mut parts = items(v).into_iter();
    let id = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| unexpected(what))?;
    let fields = match parts.next() {
        None | Some(Value::Null) => return Ok((id, None)),
        Some(f) => items(f),
    };
    let (mut names, mut values) = (vec![], vec![]);
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        names.push(name.into_bytes().ok_or_else(|| unexpected(what))?);
        values.push(value.into_bytes().ok_or_else(|| unexpected(what))?);
    }
    let e = StreamEntry::from_fields(names.iter().map(|n| n.as_ref()).zip(values));
    Ok((id, Some(e)))
}

/// A list of entries: `[[id, fields], …]`.
fn entries(v: Value, what: &str) -> Result<Vec<RawEntry>> {
    items(v).into_iter().map(|e| entry(e, what)).collect()
}

/// `XREAD`/`XREADGROUP` with one stream: nil on timeout, else
/// `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3).
pub(super) fn read_reply(v: Value, what: &str) -> Result<Vec<RawEntry>> {
    let per_stream = match v {
        Value::Null => return Ok(vec![]),
        // RESP3: a map whose values are the entry lists.
        Value::Map(m) => m.inner().into_values().collect::<Vec<_>>(),
        other => items(other)
            .into_iter()
            .map(|s| items(s).into_iter().nth(1).unwrap_or(Value::Null))
            .collect(),
    };
    let mut out = vec![];
    for list in per_stream {
        out.extend(entries(list, what)?);
    }
    Ok(out)
}

/// `XAUTOCLAIM`: `[cursor, entries, deleted-ids]` (the last since Redis 7).
pub(super) fn autoclaim_reply(v: Value) -> Result<(String, Vec<RawEntry>, Vec<String>)> {
    let mut parts = items(v).into_iter();
    let cursor = parts
        .next()
        .as_ref()
        .and_then(text)
        .ok_or_else(|| unexpected("XAUTOCLAIM"))?;
    let claimed = entries(parts.next().unwrap_or(Value::Null), "XAUTOCLAIM")?;
    let deleted = parts
        .next()
        .map(|d| items(d).iter().filter_map(text).collect())
        .unwrap_or_default();
    Ok((cursor, claimed, deleted))
}

/// `XPENDING key group start end count`: `[[id, consumer, idle, count], …]`;
/// the delivery count of the first row, if any.
pub(super) fn pending_count(v: Value) -> Result<Option<u32>> {
    let Some(row) = items(v).into_iter().next() else {
        return Ok(None);
    };
    let count = items(row)
        .get(3)
        .and_then(Value::as_u64)
        .ok_or_else(|| unexpected("XPENDING"))?;
    Ok(Some(u32::try_from(count).unwrap_or(u32::MAX)))
}

/// `XPENDING key group` summary: `[count, min, max, consumers]`.
pub(super) fn pending_total(v: Value) -> Result<u64> {
    items(v)
        .first()
        .and_then(Value::as_u64)
        .ok_or_else(|| unexpected("XPENDING"))
}

/// An integer reply, nil counting as 0 (e.g. `MEMORY USAGE` of no key).
pub(super) fn integer(v: &Value, what: &str) -> Result<u64> {
    match v {
        Value::Null => Ok(0),
        v => v.as_u64().ok_or_else(|| unexpected(what)),
    }
}

/// The integer under `name` in a field/value reply (`XINFO STREAM`): a
/// flat array in RESP2, a map in RESP3.
pub(super) fn field_integer(v: Value, name: &str, what: &str) -> Result<u64> {
    let mut it = items(v).into_iter();
    while let (Some(k), Some(val)) = (it.next(), it.next()) {
        if text(&k).as_deref() == Some(name) {
            return integer(&val, what);
        }
    }
    Err(unexpected(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_integer_finds_its_field() {
        let reply = Value::Array(vec![
            Value::from("length"),
            Value::from(3i64),
            Value::from("entries-added"),
            Value::from(42i64),
        ]);
        assert_eq!(
            field_integer(reply.clone(), "entries-added", "X").unwrap(),
            42
        );
        assert_eq!(field_integer(reply, "length", "X").unwrap(), 3);
        assert!(field_integer(Value::Array(vec![]), "entries-added", "X").is_err());
    }

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    fn fields(m: &[u8]) -> Value {
        Value::Array(vec![
            s("v"),
            s("1"),
            s("k"),
            s("kid"),
            s("m"),
            Value::Bytes(bytes::Bytes::copy_from_slice(m)),
            s("s"),
            s("sig"),
        ])
    }

    #[test]
    fn read_reply_keeps_raw_bytes_and_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("stream"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), fields(b"\xff\x00")]),
                Value::Array(vec![s("2-0"), fields(b"two")]),
            ]),
        ])]);
        let got = read_reply(reply, "XREAD").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "1-0");
        let e = got[0].1.clone().unwrap();
        assert_eq!(e.m, b"\xff\x00".to_vec(), "non-UTF-8 bytes survive");
        assert_eq!(e.v, b"1".to_vec());
        assert_eq!(got[1].1.as_ref().unwrap().m, b"two".to_vec());
    }

    #[test]
    fn read_reply_nil_is_empty() {
        assert!(read_reply(Value::Null, "XREAD").unwrap().is_empty());
    }

    #[test]
    fn autoclaim_reply_separates_claimed_deleted_and_nil_entries() {
        let reply = Value::Array(vec![
            s("7-0"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), fields(b"x")]),
                Value::Array(vec![s("2-0"), Value::Null]),
            ]),
            Value::Array(vec![s("3-0")]),
        ]);
        let (cursor, claimed, deleted) = autoclaim_reply(reply).unwrap();
        assert_eq!(cursor, "7-0", "where the next scan starts");
        assert_eq!(claimed.len(), 2);
        assert!(claimed[0].1.is_some());
        assert!(claimed[1].1.is_none(), "a nil entry is reported as deleted");
        assert_eq!(deleted, vec!["3-0".to_string()]);
    }

    #[test]
    fn pending_rows_and_summary_parse() {
        let row = Value::Array(vec![Value::Array(vec![
            s("1-0"),
            s("c"),
            Value::Integer(5),
            Value::Integer(3),
        ])]);
        assert_eq!(pending_count(row).unwrap(), Some(3));
        assert_eq!(pending_count(Value::Array(vec![])).unwrap(), None);
        let summary = Value::Array(vec![Value::Integer(2), s("1-0"), s("2-0"), Value::Null]);
        assert_eq!(pending_total(summary).unwrap(), 2);
    }
}
