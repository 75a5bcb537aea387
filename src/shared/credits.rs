//! Credit balances, reservations and their transaction log in Redis (`state.backend: redis`): every
//! replica draws on one balance, decided by one server-side script per movement, so the fleet is
//! never overdrawn.
//!
//! Keys under one hash tag per account (`{acct:<hex id>}`, one cluster slot): the account hash (`balance`: what is left after open reservations, `seq`: one more
//! per movement, `granted`: the month of the last monthly grant), `:res` (open reservation id ->
//! micros, model, request id), `:leases` (reservation id by lease expiry, Unix ms), `:log` (the
//! account's transactions as JSON, oldest first: the fleet's one transaction log), `:charged` (ids of
//! charges replayed after an outage, so a replay never charges twice). The `epoch` key, outside any
//! account, is raised by each reseed; every script reads it, so these scripts need one Redis (with
//! its replicas), not a cluster.
//!
//! Every script first compares the account's `(epoch, seq)` with the high-water mark the calling
//! replica passes (what it last saw): a Redis behind it (restored from an old snapshot, or emptied)
//! moves nothing and answers `Behind` until an operator reseeds. Each script also gives back, once,
//! the reservations of that account whose lease has run out (a replica killed mid-request).

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

/// What every credit script starts with: helpers, the high-water check, seeding, the lease sweep.
/// KEYS: account hash, reservations, leases, log, epoch. ARGV[1..4]: mark epoch, mark seq, seed
/// balance (a cold account starts from it, set only if absent: never added), account id.
const PRELUDE: &str = r#"
local acct, res, leases, log = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local function fmt(n) return string.format('%d', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = tonumber(redis.call('GET', KEYS[5]) or '0')
local seq = tonumber(redis.call('HGET', acct, 'seq') or '0')
local my_epoch, my_seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local account = ARGV[4]
local function answer(code, extra)
  local bal = tonumber(redis.call('HGET', acct, 'balance') or '0')
  return {fmt(code), fmt(epoch), fmt(seq), fmt(bal), extra or ''}
end
if epoch < my_epoch or (epoch == my_epoch and seq < my_seq) then
  return answer(2)
end
local function move(kind, amount, fields)
  local bal = redis.call('HINCRBY', acct, 'balance', amount)
  seq = redis.call('HINCRBY', acct, 'seq', 1)
  local id = 'tx_' .. string.format('%013d', now) .. '_' .. fmt(seq)
  local e = '{"id":"' .. id .. '","ts_ms":' .. fmt(now) .. ',"account":' .. cjson.encode(account)
    .. ',"kind":"' .. kind .. '","amount_micros":' .. fmt(amount) .. ',"balance_micros":' .. fmt(bal)
  for _, k in ipairs({'request_id', 'model', 'note', 'reservation'}) do
    if fields[k] and fields[k] ~= '' then e = e .. ',"' .. k .. '":' .. cjson.encode(fields[k]) end
  end
  redis.call('RPUSH', log, e .. '}')
  return id, bal
end
if redis.call('HEXISTS', acct, 'balance') == 0 then
  redis.call('HSET', acct, 'balance', 0)
  local seed = tonumber(ARGV[3])
  if seed > 0 then move('seed', seed, {note = 'balance this replica held before the state was shared'}) end
end
local function parse(v)
  local m, model, rid = string.match(v, '^(%d+)|([^|]*)|(.*)$')
  return tonumber(m), rid, model
end
for _, r in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
  local v = redis.call('HGET', res, r)
  if v then
    local m, rid, model = parse(v)
    redis.call('HDEL', res, r)
    move('lease_expired', m, {request_id = rid, model = model, reservation = r,
      note = 'reservation ' .. r .. ' left open by a replica that stopped; released after its lease'})
  end
  redis.call('ZREM', leases, r)
end
"#;

/// ARGV[5..]: micros, request id, model, lease ms, monthly grant (-1 none), this month (`2026-11`).
/// Tops up to the monthly grant once a month, then sets the micros aside or refuses (code 1).
const RESERVE: &str = r#"
local micros, monthly, month = tonumber(ARGV[5]), tonumber(ARGV[9]), ARGV[10]
if monthly >= 0 and redis.call('HGET', acct, 'granted') ~= month then
  local bal = tonumber(redis.call('HGET', acct, 'balance'))
  if monthly > bal then move('grant', monthly - bal, {note = 'monthly credits for ' .. month}) end
  redis.call('HSET', acct, 'granted', month)
end
if tonumber(redis.call('HGET', acct, 'balance')) < micros then return answer(1) end
local id = move('reserve', -micros, {request_id = ARGV[6], model = ARGV[7]})
redis.call('HSET', res, id, fmt(micros) .. '|' .. ARGV[7] .. '|' .. ARGV[6])
redis.call('ZADD', leases, now + tonumber(ARGV[8]), id)
return answer(0, id)
"#;

/// ARGV[5..]: reservation id, cost (micros; -1 releases in full). Settles to the cost (a refund, or
/// the excess as far as the balance goes), or answers 3 when the reservation is already closed
/// (settled, released or expired): a second settle changes nothing. Extra: micros charged.
const CLOSE: &str = r#"
local r, cost = ARGV[5], tonumber(ARGV[6])
local v = redis.call('HGET', res, r)
if not v then return answer(3) end
local m, rid, model = parse(v)
redis.call('HDEL', res, r)
redis.call('ZREM', leases, r)
if cost < 0 then
  move('release', m, {request_id = rid, model = model, reservation = r})
  return answer(0, '0')
end
local bal = tonumber(redis.call('HGET', acct, 'balance'))
local extra = math.min(math.max(cost - m, 0), bal)
local amount = math.max(m - cost, 0) - extra
move('settle', amount, {request_id = rid, model = model, reservation = r,
  note = 'cost ' .. fmt(cost) .. ' micro-USD'})
return answer(0, fmt(m - amount))
"#;

/// ARGV[5..]: signed micros, kind, note, charge id ('' for none). An adjustment (a debit beyond the
/// balance refused, code 1), or with a charge id a debit capped at the balance and applied once per
/// id (code 3 for a replay). Extra: the transaction's JSON.
const ADJUST: &str = r#"
local amount, kind, note, charge = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local bal = tonumber(redis.call('HGET', acct, 'balance'))
if charge ~= '' then
  if redis.call('HSETNX', KEYS[6], charge, fmt(now)) == 0 then return answer(3) end
  amount = -math.min(-amount, bal)
elseif amount < 0 and -amount > bal then
  return answer(1)
end
move(kind, amount, {note = note})
return answer(0, redis.call('LINDEX', log, -1))
"#;

/// ARGV[5..]: the balance wanted. A reseed: sets the balance and forgets open reservations (they
/// belong to a history Redis lost).
const SET: &str = r#"
local want = tonumber(ARGV[5])
redis.call('DEL', res, leases)
local bal = tonumber(redis.call('HGET', acct, 'balance'))
move('reseed', want - bal, {note = ARGV[6]})
return answer(0)
"#;

/// The prelude alone: the balance after seeding and the lease sweep.
const READ: &str = "return answer(0)";

/// KEYS: the epoch. ARGV: the lowest acceptable new epoch. Raises the epoch past both.
const RAISE_EPOCH: &str = r"
local e = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%d', e))
return string.format('%d', e)
";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

static RESERVE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| script(RESERVE));
static CLOSE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| script(CLOSE));
static ADJUST_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| script(ADJUST));
static SET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| script(SET));
static READ_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| script(READ));
static EPOCH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RAISE_EPOCH));

/// The high-water mark a replica passes: the newest `(epoch, seq)` of the account it has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    pub epoch: u64,
    pub seq: u64,
}

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The balance cannot cover it.
    Insufficient,
    /// Redis is behind the mark: nothing was moved.
    Behind,
    /// The reservation (or charge id) was already closed: nothing was moved.
    Closed,
}

/// A script's answer: how it ended, the account's mark and balance after it, and its extra value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditAnswer {
    pub outcome: Outcome,
    pub mark: Mark,
    pub balance: u64,
    /// The reservation id (reserve), the micros charged (settle), the transaction JSON (adjust).
    pub extra: String,
}

/// One movement's request, besides its account and mark.
pub enum Movement<'a> {
    /// Micros, request id, model, lease ms, monthly grant, this month.
    Reserve {
        micros: u64,
        request_id: &'a str,
        model: &'a str,
        lease_ms: u64,
        monthly: Option<u64>,
        month: &'a str,
    },
    /// Settles to `cost`, or with `None` releases in full.
    Close {
        reservation: &'a str,
        cost: Option<u64>,
    },
    /// An adjustment, or with `charge` a once-only debit capped at the balance.
    Adjust {
        micros: i64,
        kind: &'a str,
        note: &'a str,
        charge: Option<&'a str>,
    },
    /// A reseed to this balance.
    Set { micros: u64, note: &'a str },
    /// Nothing: the balance, after seeding and the lease sweep.
    Read,
}

/// An account's keys' common start, `cr:{acct:<hex id>}` (before the prefix): account ids are
/// client-chosen text, and hex keeps a `}` in one from breaking the hash tag.
pub fn account_tag(account: &str) -> String {
    let hex: String = account.bytes().map(|b| format!("{b:02x}")).collect();
    format!("cr:{{acct:{hex}}}")
}

impl Shared {
    /// Loads the credit scripts and the token budget's settle (at a worker's start), so that no request pays
    /// for `SCRIPT LOAD` after a `NOSCRIPT`.
    pub(super) async fn load_credit_scripts(&self) -> Result<(), SharedError> {
        self.call(Resource::Credits, |mut c| async move {
            for s in [
                &*RESERVE_SCRIPT,
                &*CLOSE_SCRIPT,
                &*ADJUST_SCRIPT,
                &*SET_SCRIPT,
                &*READ_SCRIPT,
                &*EPOCH_SCRIPT,
                &*super::budget::SETTLE_SCRIPT,
            ] {
                s.prepare_invoke().load_async(&mut c).await?;
            }
            Ok(())
        })
        .await
    }

    fn account_keys(&self, account: &str) -> [String; 6] {
        let base = self.key(&account_tag(account));
        [
            base.clone(),
            format!("{base}:res"),
            format!("{base}:leases"),
            format!("{base}:log"),
            self.epoch_key(),
            format!("{base}:charged"),
        ]
    }

    fn epoch_key(&self) -> String {
        self.key("cr:epoch")
    }

    /// Runs one movement on `account`'s credits: one round trip.
    pub async fn credit_move(
        &self,
        account: &str,
        mark: Mark,
        seed: u64,
        movement: Movement<'_>,
    ) -> Result<CreditAnswer, SharedError> {
        let keys = self.account_keys(account);
        let (script, args): (&redis::Script, Vec<String>) = match movement {
            Movement::Reserve {
                micros,
                request_id,
                model,
                lease_ms,
                monthly,
                month,
            } => (
                &RESERVE_SCRIPT,
                vec![
                    micros.to_string(),
                    request_id.to_owned(),
                    model.to_owned(),
                    lease_ms.to_string(),
                    monthly.map_or("-1".to_owned(), |m| m.to_string()),
                    month.to_owned(),
                ],
            ),
            Movement::Close { reservation, cost } => (
                &CLOSE_SCRIPT,
                vec![
                    reservation.to_owned(),
                    cost.map_or("-1".to_owned(), |c| c.to_string()),
                ],
            ),
            Movement::Adjust {
                micros,
                kind,
                note,
                charge,
            } => (
                &ADJUST_SCRIPT,
                vec![
                    micros.to_string(),
                    kind.to_owned(),
                    note.to_owned(),
                    charge.unwrap_or_default().to_owned(),
                ],
            ),
            Movement::Set { micros, note } => {
                (&SET_SCRIPT, vec![micros.to_string(), note.to_owned()])
            }
            Movement::Read => (&READ_SCRIPT, Vec::new()),
        };
        let raw: Vec<String> = self
            .call(Resource::Credits, |mut c| async move {
                let mut call = script.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                call.arg(mark.epoch).arg(mark.seq).arg(seed).arg(account);
                for a in &args {
                    call.arg(a);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        parse_answer(raw)
    }

    /// The account's transactions, oldest first, as the scripts logged them (raw JSON).
    pub async fn credit_log(&self, account: &str) -> Result<Vec<String>, SharedError> {
        let [_, _, _, log, _, _] = self.account_keys(account);
        self.call(Resource::Credits, |mut c| async move {
            redis::cmd("LRANGE")
                .arg(&log)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Raises the reseed epoch to at least `at_least` (and past the current one); returns it.
    pub async fn raise_credit_epoch(&self, at_least: u64) -> Result<u64, SharedError> {
        let key = self.epoch_key();
        let raw: String = self
            .call(Resource::Credits, |mut c| async move {
                EPOCH_SCRIPT
                    .key(&key)
                    .arg(at_least)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        raw.parse()
            .map_err(|_| SharedError::Answer("the epoch script's number"))
    }
}

fn parse_answer(raw: Vec<String>) -> Result<CreditAnswer, SharedError> {
    let bad = || SharedError::Answer("the credit script's list");
    let [code, epoch, seq, balance, extra]: [String; 5] = raw.try_into().map_err(|_| bad())?;
    let outcome = match code.as_str() {
        "0" => Outcome::Done,
        "1" => Outcome::Insufficient,
        "2" => Outcome::Behind,
        "3" => Outcome::Closed,
        _ => return Err(bad()),
    };
    Ok(CreditAnswer {
        outcome,
        mark: Mark {
            epoch: epoch.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        },
        // Never below zero: the scripts refuse or cap every debit.
        balance: balance.parse().map_err(|_| bad())?,
        extra,
    })
}
