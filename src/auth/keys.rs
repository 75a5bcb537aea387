//! Gateway API keys: creation (by an admin, or by a signed-in developer for their own account), listing,
//! rotation with a grace period, and revocation. The secret is returned once, at creation or rotation.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_actors::store::now_ms;

use super::secret::{format_key, key_prefix, new_id, new_secret, sha256_hex};
use super::store::{key_status, KeyRecord, PreviousSecret};
use super::{
    rfc3339, AuditEvent, AuthError, AuthService, CachedAccount, Principal, Role, Via, ADMIN_SCOPE,
};
use crate::config::AuthConfig;

/// The default grace period of a rotation: the old secret keeps working this long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);
const MAX_NAME: usize = 100;
const MAX_SCOPES: usize = 100;
const MAX_FIELD: usize = 128;

/// A duration in a request body: seconds, or a humantime string (`"30d"`, `"1h"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationInput {
    Seconds(u64),
    Text(String),
}

impl DurationInput {
    pub fn parse(&self, param: &'static str) -> Result<Duration, AuthError> {
        match self {
            DurationInput::Seconds(s) => Ok(Duration::from_secs(*s)),
            DurationInput::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
                AuthError::invalid(
                    param,
                    format!("`{param}`: invalid duration {t:?}: {e} (e.g. 3600, \"1h\", \"30d\")"),
                )
            }),
        }
    }
}

/// `POST /admin/keys` and `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    /// Model names and/or `admin`; empty: every model.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_in: Option<DurationInput>,
}

/// A key as the API shows it: never its secret or hash.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// `sy_<id>`: what logs and UIs may show.
    pub prefix: String,
    pub account: Option<String>,
    pub tier: Option<String>,
    pub scopes: Vec<String>,
    /// `active`, `revoked` or `expired`.
    pub status: &'static str,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub rotated_at: Option<String>,
    /// Until when the secret replaced by the last rotation still works.
    pub previous_valid_until: Option<String>,
    pub revoked_at: Option<String>,
}

/// A new or rotated key: the only time `key` (the full secret) is shown.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

fn view(rec: &KeyRecord, last_used_ms: u64, now: u64) -> KeyView {
    let last = last_used_ms.max(rec.last_used_ms.unwrap_or(0));
    KeyView {
        id: rec.id.clone(),
        name: rec.name.clone(),
        prefix: key_prefix(&rec.id),
        account: rec.account.clone(),
        tier: rec.tier.clone(),
        scopes: rec.scopes.clone(),
        status: key_status(rec, now),
        created_at: rfc3339(rec.created_ms),
        created_by: rec.created_by.clone(),
        expires_at: rec.expires_ms.map(rfc3339),
        last_used_at: (last > 0).then(|| rfc3339(last)),
        rotated_at: rec.rotated_ms.map(rfc3339),
        previous_valid_until: rec
            .previous
            .as_ref()
            .filter(|p| p.valid_until_ms > now)
            .map(|p| rfc3339(p.valid_until_ms)),
        revoked_at: rec.revoked_ms.map(rfc3339),
    }
}

/// A short identifier (account id, tier): printable, no spaces or `/`.
fn identifier(param: &'static str, value: &str) -> Result<String, AuthError> {
    let v = value.trim();
    if v.is_empty() || v.len() > MAX_FIELD || !v.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
    {
        return Err(AuthError::invalid(
            param,
            format!(
                "`{param}` must be 1 to {MAX_FIELD} printable characters without spaces or `/`."
            ),
        ));
    }
    Ok(v.to_owned())
}

fn name(value: &str) -> Result<String, AuthError> {
    let v = value.trim();
    if v.is_empty() || v.chars().count() > MAX_NAME || v.chars().any(char::is_control) {
        return Err(AuthError::invalid(
            "name",
            format!("`name` must be 1 to {MAX_NAME} characters."),
        ));
    }
    Ok(v.to_owned())
}

/// Scopes, trimmed and deduplicated in order.
pub(super) fn scopes(list: Vec<String>) -> Result<Vec<String>, AuthError> {
    if list.len() > MAX_SCOPES {
        return Err(AuthError::invalid(
            "scopes",
            format!("At most {MAX_SCOPES} scopes."),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for s in list {
        let s = s.trim();
        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            return Err(AuthError::invalid(
                "scopes",
                "Each scope is a model name or `admin`.",
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// The account limit checked under the write lock when a signed-in account creates a key.
struct Limit<'a> {
    account: &'a str,
    max: u32,
}

impl AuthService {
    /// An admin creates a key for any account (local or external), tier and scopes.
    pub async fn admin_create_key(
        &self,
        actor: &Principal,
        req: NewKey,
        address: Option<&str>,
    ) -> Result<CreatedKey, AuthError> {
        let account = req
            .account
            .as_deref()
            .map(|a| identifier("account", a))
            .transpose()?;
        let tier = match req.tier.as_deref() {
            Some(t) => Some(identifier("tier", t)?),
            // A key for a local account starts with the account's tier.
            None => match &account {
                Some(a) => self.cached_account(a)?.and_then(|c| c.account.tier.clone()),
                None => None,
            },
        };
        let new = self.build_key(actor, &req, account, tier, scopes(req.scopes.clone())?)?;
        self.insert_key(actor, new, None, address).await
    }

    /// A signed-in developer (or admin) creates a key for their own account, up to the account limit.
    pub async fn own_create_key(
        &self,
        config: &AuthConfig,
        actor: &Principal,
        req: NewKey,
        address: Option<&str>,
    ) -> Result<CreatedKey, AuthError> {
        let account = self.manager_account(actor)?;
        if req.account.is_some() || req.tier.is_some() {
            return Err(AuthError::Forbidden(
                "`account` and `tier` of your keys are set by your account.".into(),
            ));
        }
        let scopes = scopes(req.scopes.clone())?;
        if scopes.iter().any(|s| s == ADMIN_SCOPE) && account.account.role != Role::Admin {
            return Err(AuthError::Forbidden(
                "Only admin accounts may create keys with the `admin` scope.".into(),
            ));
        }
        let id = account.account.id.clone();
        let new = self.build_key(
            actor,
            &req,
            Some(id.clone()),
            account.account.tier.clone(),
            scopes,
        )?;
        let limit = Limit {
            account: &id,
            max: config.max_keys_per_account,
        };
        self.insert_key(actor, new, Some(limit), address).await
    }

    fn build_key(
        &self,
        actor: &Principal,
        req: &NewKey,
        account: Option<String>,
        tier: Option<String>,
        scopes: Vec<String>,
    ) -> Result<(KeyRecord, String), AuthError> {
        let now = now_ms();
        let expires_ms = match &req.expires_in {
            None => None,
            Some(d) => {
                let d = d.parse("expires_in")?;
                if d.is_zero() {
                    return Err(AuthError::invalid(
                        "expires_in",
                        "`expires_in` must be > 0.",
                    ));
                }
                Some(now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }
        };
        let secret = new_secret();
        let rec = KeyRecord {
            id: new_id(),
            name: name(&req.name)?,
            account,
            tier,
            scopes,
            hash: sha256_hex(&secret),
            previous: None,
            created_ms: now,
            created_by: actor.actor(),
            expires_ms,
            last_used_ms: None,
            rotated_ms: None,
            revoked_ms: None,
        };
        Ok((rec, secret))
    }

    async fn insert_key(
        &self,
        actor: &Principal,
        (rec, secret): (KeyRecord, String),
        limit: Option<Limit<'_>>,
        address: Option<&str>,
    ) -> Result<CreatedKey, AuthError> {
        {
            let _write = self.key_writes.lock();
            if let Some(limit) = limit {
                let now = now_ms();
                let live = self
                    .store
                    .account_keys(limit.account)?
                    .iter()
                    .filter(|k| key_status(k, now) == "active")
                    .count();
                if live >= limit.max as usize {
                    return Err(AuthError::Forbidden(format!(
                        "Your account already has {live} active keys, the limit; revoke one first."
                    )));
                }
            }
            self.store.put_key(&rec)?;
            self.recache_key(rec.clone());
        }
        let detail = format!(
            "name={:?} account={} scopes={}",
            rec.name,
            rec.account.as_deref().unwrap_or("-"),
            rec.scopes.join(",")
        );
        self.audit(
            AuditEvent::KeyCreated,
            true,
            &actor.actor(),
            Some(format!("key:{}", rec.id)),
            address,
            Some(detail),
        );
        self.flush().await?;
        self.mirror_key(&rec).await;
        Ok(CreatedKey {
            key: format_key(&rec.id, &secret),
            view: view(&rec, 0, now_ms()),
        })
    }

    /// Every key, or one account's.
    pub fn list_keys(&self, account: Option<&str>) -> Result<Vec<KeyView>, AuthError> {
        let records = match account {
            Some(a) => self.store.account_keys(a)?,
            None => self.store.keys()?,
        };
        let now = now_ms();
        Ok(records
            .iter()
            .map(|r| {
                let last = self.keys.get(&r.id).map_or(0, |e| {
                    e.last_used_ms.load(std::sync::atomic::Ordering::Relaxed)
                });
                view(r, last, now)
            })
            .collect())
    }

    /// The keys of the signed-in account.
    pub fn own_keys(&self, actor: &Principal) -> Result<Vec<KeyView>, AuthError> {
        let account = self.session_account(actor)?;
        self.list_keys(Some(&account.account.id))
    }

    /// Revokes a key at once. With `owner`, only that account's key (else 404). Revoking twice is fine.
    pub async fn revoke_key(
        &self,
        actor: &Principal,
        id: &str,
        owner: Option<&str>,
        address: Option<&str>,
    ) -> Result<KeyView, AuthError> {
        let rec = {
            let _write = self.key_writes.lock();
            let mut rec = self.owned_key(id, owner)?;
            if rec.revoked_ms.is_some() {
                return Ok(view(&rec, 0, now_ms()));
            }
            rec.revoked_ms = Some(now_ms());
            self.store.put_key(&rec)?;
            self.recache_key(rec.clone());
            rec
        };
        self.audit(
            AuditEvent::KeyRevoked,
            true,
            &actor.actor(),
            Some(format!("key:{id}")),
            address,
            None,
        );
        self.flush().await?;
        self.mirror_key(&rec).await;
        Ok(view(&rec, 0, now_ms()))
    }

    /// A signed-in developer revokes one of their keys.
    pub async fn own_revoke_key(
        &self,
        actor: &Principal,
        id: &str,
        address: Option<&str>,
    ) -> Result<KeyView, AuthError> {
        let account = self.manager_account(actor)?;
        self.revoke_key(actor, id, Some(&account.account.id), address)
            .await
    }

    /// Gives a key a new secret; the old one keeps working for `grace` (default 1 h, `0` ends it now).
    pub async fn rotate_key(
        &self,
        actor: &Principal,
        id: &str,
        grace: Option<DurationInput>,
        address: Option<&str>,
    ) -> Result<CreatedKey, AuthError> {
        let grace = match grace {
            Some(g) => g.parse("grace")?,
            None => DEFAULT_GRACE,
        };
        let secret = new_secret();
        let rec = {
            let _write = self.key_writes.lock();
            let mut rec = self.owned_key(id, None)?;
            if rec.revoked_ms.is_some() {
                return Err(AuthError::Invalid {
                    message: format!("Key {} is revoked; create a new one.", key_prefix(id)),
                    param: None,
                    code: Some("key_revoked"),
                });
            }
            let now = now_ms();
            rec.previous = Some(PreviousSecret {
                hash: std::mem::replace(&mut rec.hash, sha256_hex(&secret)),
                valid_until_ms: now
                    .saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
            });
            rec.rotated_ms = Some(now);
            self.store.put_key(&rec)?;
            self.recache_key(rec.clone());
            rec
        };
        self.audit(
            AuditEvent::KeyRotated,
            true,
            &actor.actor(),
            Some(format!("key:{id}")),
            address,
            Some(format!("grace={}", humantime::format_duration(grace))),
        );
        self.flush().await?;
        self.mirror_key(&rec).await;
        Ok(CreatedKey {
            key: format_key(id, &secret),
            view: view(&rec, 0, now_ms()),
        })
    }

    fn owned_key(&self, id: &str, owner: Option<&str>) -> Result<KeyRecord, AuthError> {
        self.store
            .key(id)?
            .filter(|k| owner.is_none_or(|o| k.account.as_deref() == Some(o)))
            .ok_or_else(|| AuthError::NotFound(format!("No key `{id}`.")))
    }

    /// The account of a signed-in session (any role).
    pub(super) fn session_account(
        &self,
        actor: &Principal,
    ) -> Result<Arc<CachedAccount>, AuthError> {
        let (Via::Session { .. }, Some(id)) = (&actor.via, &actor.account) else {
            return Err(AuthError::Forbidden(
                "Managing your keys needs a signed-in session: POST /auth/login, then send the access token."
                    .into(),
            ));
        };
        self.cached_account(id)?
            .ok_or_else(|| AuthError::Unauthenticated("Your account is gone.".into()))
    }

    /// The account of a signed-in session whose role may manage keys.
    fn manager_account(&self, actor: &Principal) -> Result<Arc<CachedAccount>, AuthError> {
        let account = self.session_account(actor)?;
        if account.account.role < Role::Developer {
            return Err(AuthError::Forbidden(format!(
                "Your role ({}) may not manage keys; ask an admin.",
                account.account.role.as_str()
            )));
        }
        Ok(account)
    }
}
