//! Decoding of the Kubernetes protobuf envelope (`application/vnd.kubernetes.protobuf`) for
//! the few kinds kubectl's typed generators commonly send — Namespace, ConfigMap, Secret,
//! ServiceAccount (`kubectl create namespace|configmap|secret|serviceaccount`). Other kinds
//! answer `415`; field numbers follow upstream's `generated.proto`.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// Magic prefix of every protobuf-encoded Kubernetes object.
const MAGIC: &[u8] = b"k8s\x00";

fn bad(msg: &str) -> ApiError {
    ApiError::bad_request(format!("invalid protobuf body: {msg}"))
}

/// One decoded field: number and raw value.
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(|| bad("truncated varint"))?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err(bad("varint too long"))
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, ApiError> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let number = u32::try_from(tag >> 3).map_err(|_| bad("field number"))?;
        match tag & 7 {
            0 => out.push(Field::Varint(number, varint(buf, &mut pos)?)),
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| bad("length"))?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or_else(|| bad("truncated field"))?;
                out.push(Field::Bytes(number, &buf[pos..end]));
                pos = end;
            }
            1 => pos += 8,
            5 => pos += 4,
            w => return Err(bad(&format!("unsupported wire type {w}"))),
        }
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
}

/// A `map<string, string|bytes>` entry list.
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => k = string(x)?,
            Field::Bytes(2, x) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(x))
            }
            Field::Bytes(2, x) => v = json!(string(x)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn insert_entry(obj: &mut Map<String, Value>, key: &str, entry: (String, Value)) {
    let m = obj.entry(key.to_string()).or_insert_with(|| json!({}));
    if let Some(m) = m.as_object_mut() {
        m.insert(entry.0, entry.1);
    }
}

fn push(obj: &mut Map<String, Value>, key: &str, v: Value) {
    let a = obj.entry(key.to_string()).or_insert_with(|| json!([]));
    if let Some(a) = a.as_array_mut() {
        a.push(v);
    }
}

fn owner_reference(b: &[u8]) -> Result<Value, ApiError> {
    let mut o = Map::new();
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => {
                o.insert("kind".into(), json!(string(x)?));
            }
            Field::Bytes(3, x) => {
                o.insert("name".into(), json!(string(x)?));
            }
            Field::Bytes(4, x) => {
                o.insert("uid".into(), json!(string(x)?));
            }
            Field::Bytes(5, x) => {
                o.insert("apiVersion".into(), json!(string(x)?));
            }
            Field::Varint(6, v) => {
                o.insert("controller".into(), json!(v != 0));
            }
            Field::Varint(7, v) => {
                o.insert("blockOwnerDeletion".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn object_meta(b: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    for f in fields(b)? {
        match f {
            Field::Bytes(1, x) => {
                m.insert("name".into(), json!(string(x)?));
            }
            Field::Bytes(2, x) => {
                m.insert("generateName".into(), json!(string(x)?));
            }
            Field::Bytes(3, x) => {
                m.insert("namespace".into(), json!(string(x)?));
            }
            Field::Bytes(6, x) => {
                m.insert("resourceVersion".into(), json!(string(x)?));
            }
            Field::Bytes(11, x) => insert_entry(&mut m, "labels", map_entry(x, false)?),
            Field::Bytes(12, x) => insert_entry(&mut m, "annotations", map_entry(x, false)?),
            Field::Bytes(13, x) => push(&mut m, "ownerReferences", owner_reference(x)?),
            Field::Bytes(14, x) => push(&mut m, "finalizers", json!(string(x)?)),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn name_ref(b: &[u8], number: u32) -> Result<Value, ApiError> {
    for f in fields(b)? {
        if let Field::Bytes(n, x) = f {
            if n == number {
                return Ok(json!({"name": string(x)?}));
            }
        }
    }
    Ok(json!({}))
}

fn decode_kind(kind: &str, raw: &[u8]) -> Result<Value, ApiError> {
    let mut o = Map::new();
    for f in fields(raw)? {
        match (kind, f) {
            (_, Field::Bytes(1, x)) => {
                o.insert("metadata".into(), object_meta(x)?);
            }
            ("ConfigMap", Field::Bytes(2, x)) => insert_entry(&mut o, "data", map_entry(x, false)?),
            ("ConfigMap", Field::Bytes(3, x)) => {
                insert_entry(&mut o, "binaryData", map_entry(x, true)?)
            }
            ("ConfigMap", Field::Varint(4, v)) | ("Secret", Field::Varint(5, v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", Field::Bytes(2, x)) => insert_entry(&mut o, "data", map_entry(x, true)?),
            ("Secret", Field::Bytes(3, x)) => {
                o.insert("type".into(), json!(string(x)?));
            }
            ("Secret", Field::Bytes(4, x)) => {
                insert_entry(&mut o, "stringData", map_entry(x, false)?)
            }
            ("Namespace", Field::Bytes(2, x)) => {
                let mut spec = Map::new();
                for sf in fields(x)? {
                    if let Field::Bytes(1, fin) = sf {
                        push(&mut spec, "finalizers", json!(string(fin)?));
                    }
                }
                o.insert("spec".into(), Value::Object(spec));
            }
            ("ServiceAccount", Field::Bytes(2, x)) => push(&mut o, "secrets", name_ref(x, 3)?),
            ("ServiceAccount", Field::Bytes(3, x)) => {
                push(&mut o, "imagePullSecrets", name_ref(x, 1)?)
            }
            ("ServiceAccount", Field::Varint(4, v)) => {
                o.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// `meta.v1.DeleteOptions`: gracePeriodSeconds 1, preconditions 2 (uid 1,
/// resourceVersion 2), orphanDependents 3, propagationPolicy 4, dryRun 5.
fn delete_options(raw: &[u8]) -> Result<Value, ApiError> {
    let mut o = Map::new();
    for f in fields(raw)? {
        match f {
            Field::Varint(1, v) => {
                o.insert("gracePeriodSeconds".into(), json!(v as i64));
            }
            Field::Bytes(2, x) => {
                let mut pre = Map::new();
                for pf in fields(x)? {
                    match pf {
                        Field::Bytes(1, u) => {
                            pre.insert("uid".into(), json!(string(u)?));
                        }
                        Field::Bytes(2, rv) => {
                            pre.insert("resourceVersion".into(), json!(string(rv)?));
                        }
                        _ => {}
                    }
                }
                o.insert("preconditions".into(), Value::Object(pre));
            }
            Field::Varint(3, v) => {
                o.insert("orphanDependents".into(), json!(v != 0));
            }
            Field::Bytes(4, x) => {
                o.insert("propagationPolicy".into(), json!(string(x)?));
            }
            Field::Bytes(5, x) => push(&mut o, "dryRun", json!(string(x)?)),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// Decode a protobuf request body into the JSON object it stands for.
pub(crate) fn decode(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing k8s magic"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for f in fields(rest)? {
        match f {
            Field::Bytes(1, tm) => {
                for t in fields(tm)? {
                    match t {
                        Field::Bytes(1, x) => api_version = string(x)?,
                        Field::Bytes(2, x) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            Field::Bytes(2, x) => raw = x,
            _ => {}
        }
    }
    if kind == "DeleteOptions" {
        // client-go's typed clients (helm's release Secrets among them) send
        // DeleteOptions as protobuf; its apiVersion is v1 or meta.k8s.io/v1.
        let mut obj = delete_options(raw)?;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        return Ok(obj);
    }
    if !matches!(
        kind.as_str(),
        "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
    ) || api_version != "v1"
    {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let mut obj = decode_kind(&kind, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(number << 3 | 2).unwrap_or(0),
            u8::try_from(bytes.len()).unwrap_or(0),
        ];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn config_map_envelope_decodes_to_its_json() {
        let meta = field(1, b"cm");
        let entry = [field(1, b"k"), field(2, b"v")].concat();
        let object = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &object)].concat();
        let v = decode(&body, "application/vnd.kubernetes.protobuf").expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}})
        );
    }
}
