//! Small typed accessors over `serde_json` values that name the offending field in their errors, so every
//! translation error tells the client where its body went wrong (`messages[2].tool_calls[0].id: ...`).

use serde_json::{Map, Value};

use super::TranslateError;

pub(super) type Obj = Map<String, Value>;

/// A client's request body: anything but a JSON object is `InvalidJson`.
pub(super) fn parse_request(body: &[u8]) -> Result<Obj, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(TranslateError::InvalidJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(TranslateError::InvalidJson(e.to_string())),
    }
}

/// An upstream's answer (body or one stream event): anything but a JSON object is `BadUpstream`.
pub(super) fn parse_upstream(body: &[u8]) -> Result<Obj, TranslateError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(TranslateError::BadUpstream("expected a JSON object".into())),
        Err(e) => Err(TranslateError::BadUpstream(format!("not JSON: {e}"))),
    }
}

/// A field that is present and not `null`.
pub(super) fn field<'a>(o: &'a Obj, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn path_of(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Type problems are reported as plain strings; the caller decides whose fault they are.
pub(super) fn opt_str<'a>(o: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{}: must be a string", path_of(path, key))),
    }
}

pub(super) fn req_str<'a>(o: &'a Obj, key: &str, path: &str) -> Result<&'a str, String> {
    opt_str(o, key, path)?.ok_or_else(|| format!("{}: is required", path_of(path, key)))
}

pub(super) fn opt_obj<'a>(o: &'a Obj, key: &str, path: &str) -> Result<Option<&'a Obj>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(format!("{}: must be an object", path_of(path, key))),
    }
}

pub(super) fn req_obj<'a>(o: &'a Obj, key: &str, path: &str) -> Result<&'a Obj, String> {
    opt_obj(o, key, path)?.ok_or_else(|| format!("{}: is required", path_of(path, key)))
}

pub(super) fn opt_arr<'a>(
    o: &'a Obj,
    key: &str,
    path: &str,
) -> Result<Option<&'a Vec<Value>>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(format!("{}: must be an array", path_of(path, key))),
    }
}

pub(super) fn opt_u64(o: &Obj, key: &str, path: &str) -> Result<Option<u64>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{}: must be a non-negative integer", path_of(path, key))),
    }
}

pub(super) fn opt_bool(o: &Obj, key: &str, path: &str) -> Result<Option<bool>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{}: must be a boolean", path_of(path, key))),
    }
}

/// A number passed through unchanged (`temperature`, `top_p`).
pub(super) fn opt_number<'a>(
    o: &'a Obj,
    key: &str,
    path: &str,
) -> Result<Option<&'a Value>, String> {
    match field(o, key) {
        None => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v)),
        Some(_) => Err(format!("{}: must be a number", path_of(path, key))),
    }
}

/// An array element that must be an object.
pub(super) fn as_obj<'a>(v: &'a Value, path: &str) -> Result<&'a Obj, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: must be an object"))
}

/// Token counts are read leniently: a missing or odd value counts as zero rather than failing an answer.
pub(super) fn count(o: Option<&Obj>, key: &str) -> u64 {
    o.and_then(|o| o.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}
