//! The ledger's bytes on the request path, written by hand where serde_json and `format!` cost
//! thousands of instructions a movement: a transaction's JSON line (byte for byte serde_json's), its id,
//! and the keys of accounts and batches.

use super::TX_PREFIX;

/// A movement's request id, model and note.
pub(super) type Meta<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// A transaction's fields, borrowed: what the request path encodes without building a `Transaction`.
pub(super) struct TxFields<'a> {
    pub(super) id: &'a str,
    pub(super) ts_ms: u64,
    pub(super) account: &'a str,
    pub(super) kind: &'a str,
    pub(super) amount_micros: i64,
    pub(super) balance_micros: u64,
    pub(super) meta: Meta<'a>,
    pub(super) reservation: Option<&'a str>,
}

/// A transaction's JSON line, byte for byte what serde_json makes of `Transaction` (same fields, same
/// order, same escapes), written by hand: serde_json's derive cost ~3,900 instructions a transaction.
/// The id, the kind and the reservation are the request path's own (`json_ascii`); what is read back
/// goes through serde_json (`Queued::new`).
pub(super) fn encode(t: &TxFields<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let (request_id, model, note) = t.meta;
    let text = [t.id, t.account, t.kind, request_id.unwrap_or_default()];
    let more = [model, note, t.reservation].map(|s| s.map_or(0, str::len));
    let mut out = Vec::with_capacity(
        160 + text.iter().map(|s| s.len()).sum::<usize>() + more.iter().sum::<usize>(),
    );
    out.extend_from_slice(b"{\"id\":");
    json_ascii(&mut out, t.id);
    out.extend_from_slice(b",\"ts_ms\":");
    push_decimal(&mut out, t.ts_ms, 1);
    out.extend_from_slice(b",\"account\":");
    json_str(&mut out, t.account)?;
    out.extend_from_slice(b",\"kind\":");
    json_ascii(&mut out, t.kind);
    out.extend_from_slice(b",\"amount_micros\":");
    if t.amount_micros < 0 {
        out.push(b'-');
    }
    push_decimal(&mut out, t.amount_micros.unsigned_abs(), 1);
    out.extend_from_slice(b",\"balance_micros\":");
    push_decimal(&mut out, t.balance_micros, 1);
    for (name, value) in [
        (&b",\"request_id\":"[..], request_id),
        (b",\"model\":", model),
        (b",\"note\":", note),
    ] {
        out.extend_from_slice(name);
        match value {
            Some(v) => json_str(&mut out, v)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    if let Some(r) = t.reservation {
        out.extend_from_slice(b",\"reservation\":");
        json_ascii(&mut out, r);
    }
    out.push(b'}');
    Ok(out)
}

/// A JSON string: copied as is when nothing in it needs an escape, else serde_json's.
fn json_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// A lease's fields, borrowed (see `Lease`).
pub(super) struct LeaseFields<'a> {
    pub(super) tx: &'a str,
    pub(super) account: &'a str,
    pub(super) micros: u64,
    pub(super) request_id: &'a str,
    pub(super) model: &'a str,
    pub(super) created_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) boot: &'a str,
}

/// A lease's JSON, byte for byte what serde_json makes of `Lease`, by hand: serde_json's derive cost
/// ~3,400 instructions a lease, and under load about every other call's reserve is still open when
/// its batch is written. Every string is escape-checked: a replayed reserve's id comes from the
/// journal, and this runs on the recorder's thread, not the request's.
pub(super) fn encode_lease(l: &LeaseFields<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let text = [l.tx, l.account, l.request_id, l.model, l.boot];
    let mut out = Vec::with_capacity(140 + text.iter().map(|s| s.len()).sum::<usize>());
    out.extend_from_slice(b"{\"tx\":");
    json_str(&mut out, l.tx)?;
    out.extend_from_slice(b",\"account\":");
    json_str(&mut out, l.account)?;
    out.extend_from_slice(b",\"micros\":");
    push_decimal(&mut out, l.micros, 1);
    out.extend_from_slice(b",\"request_id\":");
    json_str(&mut out, l.request_id)?;
    out.extend_from_slice(b",\"model\":");
    json_str(&mut out, l.model)?;
    out.extend_from_slice(b",\"created_ms\":");
    push_decimal(&mut out, l.created_ms, 1);
    out.extend_from_slice(b",\"expires_ms\":");
    push_decimal(&mut out, l.expires_ms, 1);
    out.extend_from_slice(b",\"boot\":");
    json_str(&mut out, l.boot)?;
    out.push(b'}');
    Ok(out)
}

/// A JSON string of text the request path made itself (a transaction id from `tx_id`, a kind), which
/// is letters, digits and `_` and needs no escape, so it is not scanned. Checked in debug builds.
fn json_ascii(out: &mut Vec<u8>, s: &str) {
    debug_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `n` in decimal, zero-padded to at least `width` digits (itoa's two digits a step: a digit at a
/// time cost ~1,800 instructions a call's two movements).
pub(super) fn push_decimal(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(n).as_bytes();
    out.resize(out.len() + width.saturating_sub(digits.len()), b'0');
    out.extend_from_slice(digits);
}

/// `tx_<ts_ms, 13 digits>_<seq, at least 6>`: a transaction's id (`format!` cost ~1,000 instructions).
pub(super) fn tx_id(ts_ms: u64, seq: u64) -> String {
    let mut id = Vec::with_capacity(3 + 13 + 1 + 20);
    id.extend_from_slice(b"tx_");
    push_decimal(&mut id, ts_ms, 13);
    id.push(b'_');
    push_decimal(&mut id, seq, 6);
    String::from_utf8(id).unwrap_or_default()
}

/// `bytes` as lower-case hex.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

/// Account ids are client-chosen text; hex keeps one account's key range from containing another's.
pub(super) fn hex(account: &str) -> String {
    let mut out = Vec::with_capacity(account.len() * 2);
    push_hex(&mut out, account.as_bytes());
    String::from_utf8(out).unwrap_or_default()
}

/// A batch's key, `v1/tx/<hex account>/<016x ts>/<016x seq>`, without `format!` (it runs per batch).
pub(super) fn batch_key(account: &str, ts_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(TX_PREFIX.len() + account.len() * 2 + 34);
    key.extend_from_slice(TX_PREFIX.as_bytes());
    push_hex(&mut key, account.as_bytes());
    for n in [ts_ms, seq] {
        key.push(b'/');
        push_hex(&mut key, &n.to_be_bytes());
    }
    key
}
