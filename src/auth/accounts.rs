//! Accounts and sign-in: admin-created accounts with argon2id passwords, `login` (rate-limited per account
//! and per address), rotating refresh tokens whose reuse revokes their whole family, `logout`, and the
//! `/v1/me` summary an editor extension shows.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_actors::store::now_ms;

use super::keys::scopes;
use super::limiter::SharedWindow;
use super::secret::{
    digest_eq, hash_password, new_id, new_secret, sha256_hex, split_token, verify_password,
    REFRESH_PREFIX,
};
use super::store::{Account, Family, RefreshRecord, Spend};
use super::{rfc3339, unauth, AuditEvent, AuthError, AuthService, Principal, Role, Via};
use crate::config::AuthConfig;
use crate::shared::records::Table;

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

/// `POST /admin/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub email: String,
    pub password: String,
    /// `admin`, `developer` or `user` (default).
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    /// Allowed models; empty: every model.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `PATCH /admin/accounts/{id}`: each field optional. `tier: ""` clears the tier.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// An account as the API shows it: never its password hash.
#[derive(Debug, Serialize)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub role: &'static str,
    pub tier: Option<String>,
    pub scopes: Vec<String>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            email: a.email.clone(),
            role: a.role.as_str(),
            tier: a.tier.clone(),
            scopes: a.scopes.clone(),
            disabled: a.disabled,
            created_at: rfc3339(a.created_ms),
            updated_at: rfc3339(a.updated_ms),
        }
    }
}

/// What `login` and `refresh` answer.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds.
    pub refresh_expires_in: u64,
    pub account: AccountView,
}

fn email(raw: &str) -> Result<String, AuthError> {
    let e = raw.trim().to_lowercase();
    let valid = e.len() <= 254
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
    if !valid {
        return Err(AuthError::invalid(
            "email",
            "`email` is not an email address.",
        ));
    }
    Ok(e)
}

fn password(raw: &str) -> Result<(), AuthError> {
    let n = raw.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(AuthError::invalid(
            "password",
            format!("`password` must be {MIN_PASSWORD} to {MAX_PASSWORD} characters."),
        ));
    }
    Ok(())
}

fn role(raw: &str) -> Result<Role, AuthError> {
    Role::parse(raw.trim())
        .ok_or_else(|| AuthError::invalid("role", "`role` is one of admin, developer, user."))
}

fn tier(raw: &str) -> Result<Option<String>, AuthError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() > 64 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::invalid(
            "tier",
            "`tier` is up to 64 printable characters.",
        ));
    }
    Ok(Some(t.to_owned()))
}

/// Hashes off the async workers: argon2 takes tens of milliseconds by design.
async fn hash_blocking(pw: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_password(&pw))
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))?
        .map_err(AuthError::Internal)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Requests and tokens of one account (or key) over a period.
#[derive(Debug, Default, Serialize)]
struct UsageSummary {
    since: String,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl AuthService {
    // --- accounts (admin) -----------------------------------------------------------------------

    pub async fn create_account(
        &self,
        actor: &Principal,
        req: NewAccount,
        address: Option<&str>,
    ) -> Result<AccountView, AuthError> {
        let email = email(&req.email)?;
        password(&req.password)?;
        let role = match &req.role {
            Some(r) => role(r)?,
            None => Role::User,
        };
        let tier = match &req.tier {
            Some(t) => tier(t)?,
            None => None,
        };
        let scopes = scopes(req.scopes)?;
        let now = now_ms();
        let account = Account {
            id: format!("acc_{}", new_id()),
            email,
            password_hash: hash_blocking(req.password).await?,
            role,
            tier,
            scopes,
            disabled: false,
            created_ms: now,
            updated_ms: now,
        };
        let free = self.email_free(&account.email, &account.id).await;
        if !free || !self.store.insert_account(&account)? {
            return Err(AuthError::Invalid {
                message: format!("An account with email {} exists already.", account.email),
                param: Some("email"),
                code: Some("email_taken"),
            });
        }
        self.recache_account(account.clone());
        self.queue(Table::Accounts, &account.id);
        self.audit(
            AuditEvent::AccountCreated,
            true,
            &actor.actor(),
            Some(format!("account:{}", account.id)),
            address,
            Some(format!("email={} role={}", account.email, role.as_str())),
        );
        self.flush().await?;
        Ok(AccountView::from(&account))
    }

    pub async fn update_account(
        &self,
        actor: &Principal,
        id: &str,
        patch: AccountPatch,
        address: Option<&str>,
    ) -> Result<AccountView, AuthError> {
        if let Some(p) = &patch.password {
            password(p)?;
        }
        let new_hash = match patch.password {
            Some(p) => Some(hash_blocking(p).await?),
            None => None,
        };
        let mut changed = Vec::new();
        let account = {
            let _write = self.account_writes.lock();
            let mut a = self
                .store
                .account(id)?
                .ok_or_else(|| AuthError::NotFound(format!("No account `{id}`.")))?;
            if let Some(h) = new_hash {
                a.password_hash = h;
                changed.push("password".to_owned());
            }
            if let Some(r) = &patch.role {
                a.role = role(r)?;
                changed.push(format!("role={}", a.role.as_str()));
            }
            if let Some(t) = &patch.tier {
                a.tier = tier(t)?;
                changed.push(format!("tier={}", a.tier.as_deref().unwrap_or("-")));
            }
            if let Some(s) = patch.scopes {
                a.scopes = scopes(s)?;
                changed.push(format!("scopes={}", a.scopes.join(",")));
            }
            if let Some(d) = patch.disabled {
                a.disabled = d;
                changed.push(format!("disabled={d}"));
            }
            a.updated_ms = now_ms();
            self.store.put_account(&a)?;
            self.recache_account(a.clone());
            self.queue(Table::Accounts, &a.id);
            a
        };
        self.audit(
            AuditEvent::AccountUpdated,
            true,
            &actor.actor(),
            Some(format!("account:{id}")),
            address,
            Some(changed.join(" ")),
        );
        self.flush().await?;
        Ok(AccountView::from(&account))
    }

    pub fn list_accounts(&self) -> Result<Vec<AccountView>, AuthError> {
        Ok(self
            .store
            .accounts()?
            .iter()
            .map(AccountView::from)
            .collect())
    }

    pub fn get_account(&self, id: &str) -> Result<AccountView, AuthError> {
        self.store
            .account(id)?
            .map(|a| AccountView::from(&a))
            .ok_or_else(|| AuthError::NotFound(format!("No account `{id}`.")))
    }

    // --- sign-in --------------------------------------------------------------------------------

    /// Audits a sign-in refused by a limit; the 429 to answer.
    fn login_blocked(
        &self,
        target: Option<String>,
        address: Option<&str>,
        why: &str,
        retry_after: std::time::Duration,
        limit: u32,
    ) -> AuthError {
        let detail = Some(why.to_owned());
        self.audit(
            AuditEvent::LoginBlocked,
            false,
            "anonymous",
            target,
            address,
            detail,
        );
        AuthError::RateLimited { retry_after, limit }
    }

    /// Email and password to an access token and a refresh token. Failures say nothing about which of
    /// the two was wrong, and take as long for an unknown email as for a wrong password.
    pub async fn login(
        &self,
        config: &AuthConfig,
        email_raw: &str,
        pw: &str,
        address: Option<&str>,
    ) -> Result<Tokens, AuthError> {
        let limits = config.login;
        let email = email_raw.trim().to_lowercase();
        let target = Some(format!("email:{email}"));
        let shared = self.shared().cloned();
        if let Some(addr) = address {
            let fleet = match &shared {
                Some(shared) => {
                    let window = SharedWindow {
                        shared,
                        kind: "address",
                        key: addr,
                    };
                    window
                        .try_take(limits.max_attempts_per_address, limits.window)
                        .await
                        .ok()
                }
                None => None,
            };
            let over = match fleet {
                Some(taken) => taken.err(),
                None => self.login_attempts.hit_and_check(
                    addr,
                    limits.max_attempts_per_address,
                    limits.window,
                ),
            };
            if let Some(retry_after) = over {
                let why = "too many attempts from this address";
                let limit = limits.max_attempts_per_address;
                return Err(self.login_blocked(target, address, why, retry_after, limit));
            }
        }
        // The attempt is counted before the password is checked: counted after, every attempt of a
        // concurrent burst passes the check before any is counted, and all of them reach argon2.
        let account_window = shared.as_deref().map(|shared| SharedWindow {
            shared,
            kind: "account",
            key: &email,
        });
        let fleet = match &account_window {
            Some(w) => w
                .try_take(limits.max_failures_per_account, limits.window)
                .await
                .ok(),
            None => None,
        };
        let (taken, fleet_start) = match fleet {
            Some(Ok(start)) => (Ok(()), Some(start)),
            Some(Err(left)) => (Err(left), None),
            None => (
                self.login_failures.try_take(
                    &email,
                    limits.max_failures_per_account,
                    limits.window,
                ),
                None,
            ),
        };
        if let Err(retry_after) = taken {
            let why = "too many failed attempts for this account";
            let limit = limits.max_failures_per_account;
            return Err(self.login_blocked(target, address, why, retry_after, limit));
        }
        let account = self.store.account_by_email(&email)?;
        let hash = account
            .as_ref()
            .map_or_else(|| self.dummy_hash.clone(), |a| a.password_hash.clone());
        let given = pw.to_owned();
        let matches = tokio::task::spawn_blocking(move || verify_password(&given, &hash))
            .await
            .map_err(|e| AuthError::Internal(format!("password task: {e}")))?;
        let account = match account {
            Some(a) if matches && !a.disabled => a,
            other => {
                let (target, why) = match &other {
                    None => (target, "unknown email"),
                    Some(a) if matches => (Some(format!("account:{}", a.id)), "account disabled"),
                    Some(a) => (Some(format!("account:{}", a.id)), "wrong password"),
                };
                let detail = Some(why.to_owned());
                self.audit(
                    AuditEvent::LoginFailed,
                    false,
                    "anonymous",
                    target,
                    address,
                    detail,
                );
                return Err(unauth("Invalid email or password."));
            }
        };
        self.login_failures.reset(&email);
        if let (Some(w), Some(start)) = (&account_window, fleet_start) {
            if let Err(e) = w.reset(limits.window, start).await {
                tracing::warn!(error = %e, "cannot reset the fleet's sign-in failure window");
            }
        }
        let now = now_ms();
        let family = Family {
            id: new_id(),
            account: account.id.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(ms(config.refresh_token_ttl)),
            revoked_ms: None,
            revoked_reason: None,
        };
        self.store.put_family(&family)?;
        self.families.insert(family.id.clone(), false);
        self.queue(Table::Families, &family.id);
        let tokens = self.issue_tokens(config, &account, &family.id, now)?;
        let actor = format!("account:{}", account.id);
        self.audit(
            AuditEvent::LoginSucceeded,
            true,
            &actor,
            Some(actor.clone()),
            address,
            Some(format!("family={}", family.id)),
        );
        self.flush().await?;
        Ok(tokens)
    }

    fn issue_tokens(
        &self,
        config: &AuthConfig,
        account: &Account,
        family: &str,
        now: u64,
    ) -> Result<Tokens, AuthError> {
        let secret = new_secret();
        let rec = RefreshRecord {
            id: new_id(),
            hash: sha256_hex(&secret),
            family: family.to_owned(),
            account: account.id.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(ms(config.refresh_token_ttl)),
            spent_ms: None,
        };
        self.store.put_refresh(&rec)?;
        self.queue(Table::Refresh, &rec.id);
        Ok(Tokens {
            access_token: self
                .session
                .issue(&account.id, family, config.access_token_ttl)?,
            token_type: "Bearer",
            expires_in: config.access_token_ttl.as_secs(),
            refresh_token: format!("{REFRESH_PREFIX}{}_{secret}", rec.id),
            refresh_expires_in: config.refresh_token_ttl.as_secs(),
            account: AccountView::from(account),
        })
    }

    /// Exchanges a refresh token for a new pair. A token can be exchanged once; presenting it again
    /// means it was copied, so the whole family (every token of that sign-in) is revoked.
    pub async fn refresh(
        &self,
        config: &AuthConfig,
        token: &str,
        address: Option<&str>,
    ) -> Result<Tokens, AuthError> {
        let invalid = || unauth("Invalid or expired refresh token.");
        let (id, secret) = split_token(token.trim(), REFRESH_PREFIX).ok_or_else(invalid)?;
        let hash = sha256_hex(secret);
        let now = now_ms();
        let spend = self.spend_refresh(id, &hash, now).await?;
        let rec = match spend {
            Spend::Unknown => return Err(invalid()),
            Spend::AlreadySpent(rec) => {
                self.revoke_family(&rec.family, "refresh token reuse")?;
                tracing::warn!(family = %rec.family, account = %rec.account, "refresh token reused; family revoked");
                self.audit(
                    AuditEvent::RefreshTokenReused,
                    false,
                    &format!("account:{}", rec.account),
                    Some(format!("family:{}", rec.family)),
                    address,
                    Some("family revoked".to_owned()),
                );
                self.flush().await?;
                return Err(unauth(
                    "This refresh token was already used, so the session has been revoked. Sign in again.",
                ));
            }
            Spend::Spent(rec) => rec,
        };
        if self.family_revoked(&rec.family)? {
            return Err(unauth("This session has been signed out or revoked."));
        }
        let account = self
            .cached_account(&rec.account)?
            .filter(|a| !a.account.disabled)
            .ok_or_else(|| unauth("The account of this session is disabled or gone."))?;
        let until = now.saturating_add(ms(config.refresh_token_ttl));
        self.store
            .update_family(&rec.family, |f| f.expires_ms = f.expires_ms.max(until))?;
        self.queue(Table::Families, &rec.family);
        let tokens = self.issue_tokens(config, &account.account, &rec.family, now)?;
        self.audit(
            AuditEvent::TokenRefreshed,
            true,
            &format!("account:{}", rec.account),
            Some(format!("family:{}", rec.family)),
            address,
            None,
        );
        self.flush().await?;
        Ok(tokens)
    }

    /// Ends a sign-in: its family is revoked, so its refresh tokens and access tokens stop working.
    /// Identified by a refresh token, or by the session access token the request carries.
    pub async fn logout(
        &self,
        refresh_token: Option<&str>,
        caller: Option<&Principal>,
        address: Option<&str>,
    ) -> Result<(), AuthError> {
        let (family, account) = match (refresh_token, caller) {
            (Some(token), _) => {
                let invalid = || unauth("Invalid refresh token.");
                let (id, secret) = split_token(token.trim(), REFRESH_PREFIX).ok_or_else(invalid)?;
                self.fetch_missing(Table::Refresh, id).await?;
                let rec = self
                    .store
                    .refresh(id)?
                    .filter(|r| digest_eq(&r.hash, sha256_hex(secret)))
                    .ok_or_else(invalid)?;
                (rec.family, rec.account)
            }
            (
                None,
                Some(Principal {
                    via: Via::Session { family },
                    account: Some(account),
                    ..
                }),
            ) => (family.clone(), account.clone()),
            (None, _) => {
                return Err(AuthError::invalid(
                    "refresh_token",
                    "Send `refresh_token`, or the session's access token as the bearer.",
                ))
            }
        };
        self.revoke_family(&family, "logout")?;
        let actor = format!("account:{account}");
        self.audit(
            AuditEvent::Logout,
            true,
            &actor,
            Some(format!("family:{family}")),
            address,
            None,
        );
        self.flush().await?;
        Ok(())
    }

    // --- /v1/me ---------------------------------------------------------------------------------

    /// Who the caller is, what it may do, and what it used: today (UTC) and over the last 30 days.
    /// With `state.backend: redis` the usage is the fleet's, and `usage.source` says so (`fleet`, or
    /// `local` while Redis cannot answer).
    pub async fn me(
        &self,
        config: &AuthConfig,
        p: &Principal,
    ) -> Result<serde_json::Value, AuthError> {
        let account = match (&p.via, &p.account) {
            (Via::Session { .. } | Via::ApiKey { .. }, Some(id)) => self
                .cached_account(id)?
                .map(|a| serde_json::to_value(AccountView::from(&a.account)))
                .transpose()
                .map_err(|e| AuthError::Internal(e.to_string()))?,
            _ => None,
        };
        let now = now_ms();
        let day = 24 * 60 * 60 * 1000;
        let today_start = now - now % day;
        let month_start = now.saturating_sub(30 * day);
        let (records, source) = crate::shared::usage::usage_between(
            self.shared().map(|s| &**s),
            self.store.usage_store(),
            month_start,
            now.saturating_add(1),
        )
        .await?;
        let mine = |r: &&switchyard_actors::store::UsageRecord| match (&p.account, p.key_id()) {
            (Some(a), _) => r.account.as_deref() == Some(a.as_str()),
            (None, Some(k)) => r.key_id.as_deref() == Some(k),
            (None, None) => false,
        };
        let summarize = |from: u64| {
            let mut s = UsageSummary {
                since: rfc3339(from),
                ..UsageSummary::default()
            };
            let mut ids = HashSet::new();
            for r in records.iter().filter(mine).filter(|r| r.ts_ms >= from) {
                ids.insert(r.request_id.as_str());
                s.prompt_tokens += r.prompt_tokens;
                s.completion_tokens += r.completion_tokens;
            }
            s.requests = ids.len() as u64;
            s
        };
        let (issuer, subject, project) = match &p.via {
            Via::External {
                issuer,
                subject,
                project,
            } => (Some(issuer), Some(subject), project.as_ref()),
            _ => (None, None, None),
        };
        let mut usage = serde_json::json!({
            "today": summarize(today_start),
            "last_30_days": summarize(month_start),
        });
        if let Some(s) = source {
            usage["source"] = serde_json::json!(s.as_str());
        }
        Ok(serde_json::json!({
            "object": "identity",
            "credential": p.kind(),
            "key_id": p.key_id(),
            "issuer": issuer,
            "subject": subject,
            "project": project,
            "account_id": p.account,
            "account": account,
            "role": p.role.as_str(),
            "admin": p.admin,
            "tier": p.tier,
            "models": p.models_list(),
            "limits": {
                "tier": p.tier,
                "max_keys": config.max_keys_per_account,
            },
            "usage": usage,
        }))
    }
}
