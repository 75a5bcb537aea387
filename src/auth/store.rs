//! The sled records of client identity behind typed methods: gateway keys, accounts, refresh tokens and
//! their families, and the audit log.
//!
//! Tree `auth` holds `v1/keys/<id>`, `v1/account_keys/<account>/<id>` (an index, so listing an
//! account's keys does not scan every key), `v1/accounts/<id>`, `v1/account_emails/<email>` (unique
//! index), `v1/refresh/<id>` and `v1/families/<id>`. Tree `audit` holds `v1/audit/<ts>/<seq>`, both in
//! fixed-width hex so that keys sort by time. Records are JSON; secrets are stored only as SHA-256
//! (keys, refresh tokens) or argon2id (passwords).
// Raw sled is allowed here: identity's store file (see clippy.toml).
#![allow(clippy::disallowed_types)]

use serde::{Deserialize, Serialize};
use switchyard_actors::store::{Store, StoreError};

const KEYS: &str = "v1/keys/";
const ACCOUNT_KEYS: &str = "v1/account_keys/";
const ACCOUNTS: &str = "v1/accounts/";
const EMAILS: &str = "v1/account_emails/";
const REFRESH: &str = "v1/refresh/";
const FAMILIES: &str = "v1/families/";
const AUDIT: &str = "v1/audit/";
/// This store's random 16-bit tag, the top of every audit sequence it makes: entries of different
/// replicas mirrored into one log never share an id (see `append_audit`).
const AUDIT_TAG: &str = "v1/audit_tag";

/// A gateway API key. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The public id: the `<id>` of `sy_<id>_<secret>`.
    pub id: String,
    pub name: String,
    pub account: Option<String>,
    pub tier: Option<String>,
    /// Allowed model names (empty: every model) and `admin`.
    pub scopes: Vec<String>,
    /// Lowercase hex SHA-256 of the current secret.
    pub hash: String,
    /// The secret replaced by the last rotation, valid until its grace period ends.
    pub previous: Option<PreviousSecret>,
    pub created_ms: u64,
    /// Who created it (an audit actor such as `admin_token` or `account:acc_...`).
    pub created_by: String,
    pub expires_ms: Option<u64>,
    /// Written at most once a minute (see `AuthService::persist_last_used`).
    pub last_used_ms: Option<u64>,
    pub rotated_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// A rotated-out secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub hash: String,
    pub valid_until_ms: u64,
}

/// `active`, `revoked` or `expired`, as shown by the API.
pub fn key_status(key: &KeyRecord, now_ms: u64) -> &'static str {
    if key.revoked_ms.is_some() {
        "revoked"
    } else if key.expires_ms.is_some_and(|t| t <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Calls the models its scopes allow.
    User,
    /// Also manages its own keys.
    Developer,
    /// Also uses the admin API.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A person or service that signs in with email and password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    /// Lowercased.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub tier: Option<String>,
    /// Allowed model names; empty: every model.
    pub scopes: Vec<String>,
    pub disabled: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// One refresh token. Each use spends it and issues the next one of the same family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub id: String,
    pub hash: String,
    pub family: String,
    pub account: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Set when it was exchanged; a second exchange is reuse and revokes the family.
    pub spent_ms: Option<u64>,
}

/// A sign-in session: every refresh token and access token descended from one login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    pub id: String,
    pub account: String,
    pub created_ms: u64,
    /// Pushed forward by each refresh; the family is forgotten after it.
    pub expires_ms: u64,
    pub revoked_ms: Option<u64>,
    pub revoked_reason: Option<String>,
}

/// One audit log line. Holds ids and prefixes, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Also the pagination cursor: `<ts hex><seq hex>`.
    pub id: String,
    pub ts_ms: u64,
    pub event: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Who acted: `admin_token`, `account:<id>`, `key:<id>`, `jwt:<issuer>:<subject>`, `anonymous`.
    pub actor: String,
    /// What it acted on: `key:<id>`, `account:<id>`, `family:<id>`, `email:<address>`.
    pub target: Option<String>,
    /// The client's IP address.
    pub address: Option<String>,
    pub detail: Option<String>,
}

/// What happened when a refresh token was presented for exchange.
pub enum Spend {
    /// It was live and is now spent.
    Spent(RefreshRecord),
    /// It had been spent before: reuse.
    AlreadySpent(RefreshRecord),
    Unknown,
}

/// The identity trees of the store.
#[derive(Clone)]
pub struct AuthStore {
    store: Store,
    tree: sled::Tree,
    audit: sled::Tree,
    audit_tag: u64,
}

fn corrupt(key: &[u8], source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e))
}

impl AuthStore {
    pub fn open(store: &Store) -> Result<AuthStore, StoreError> {
        let tree = store.open_tree("auth")?;
        let fresh = u16::from_be_bytes(
            uuid::Uuid::new_v4().as_bytes()[..2]
                .try_into()
                .unwrap_or([0; 2]),
        );
        // Set once, so a restart keeps the tag (compare_and_swap: two opens agree on one).
        let _ = tree
            .compare_and_swap(AUDIT_TAG, None::<&[u8]>, Some(&fresh.to_be_bytes()[..]))
            .map_err(StoreError::from)?;
        let audit_tag = tree
            .get(AUDIT_TAG)
            .map_err(StoreError::from)?
            .and_then(|v| <[u8; 2]>::try_from(v.as_ref()).ok())
            .map_or(0, |b| u64::from(u16::from_be_bytes(b)));
        Ok(AuthStore {
            store: store.clone(),
            tree,
            audit: store.open_tree("audit")?,
            audit_tag,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.tree.get(key).map_err(StoreError::from)? {
            None => Ok(None),
            Some(v) => decode(key.as_bytes(), &v).map(Some),
        }
    }

    fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.tree
            .insert(key, serde_json::to_vec(value)?)
            .map_err(StoreError::from)?;
        Ok(())
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item.map_err(StoreError::from)?;
                decode(&k, &v)
            })
            .collect()
    }

    // --- keys ---------------------------------------------------------------------------------

    /// How many keys the store holds, revoked and expired ones included (for the high-water mark).
    pub fn count_keys(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for item in self.tree.scan_prefix(KEYS).keys() {
            item.map_err(StoreError::from)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.get(&format!("{KEYS}{id}"))
    }

    /// Inserts or replaces a key (and its account index entry). A new key counts toward the store's
    /// high-water mark (keys are revoked, never deleted).
    pub fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        if let Some(account) = &key.account {
            self.tree
                .insert(format!("{ACCOUNT_KEYS}{account}/{}", key.id), &[][..])
                .map_err(StoreError::from)?;
        }
        let previous = self
            .tree
            .insert(format!("{KEYS}{}", key.id), serde_json::to_vec(key)?)
            .map_err(StoreError::from)?;
        if previous.is_none() {
            self.store.high_water().add_keys(1);
        }
        Ok(())
    }

    /// Every key, in id order.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.scan(KEYS)
    }

    /// The keys of one account, through the index.
    pub fn account_keys(&self, account: &str) -> Result<Vec<KeyRecord>, StoreError> {
        let prefix = format!("{ACCOUNT_KEYS}{account}/");
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item.map_err(StoreError::from)?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(key) = self.key(&id)? {
                out.push(key);
            }
        }
        Ok(out)
    }

    // --- accounts -----------------------------------------------------------------------------

    pub fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        self.get(&format!("{ACCOUNTS}{id}"))
    }

    pub fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        match self
            .tree
            .get(format!("{EMAILS}{email}"))
            .map_err(StoreError::from)?
        {
            None => Ok(None),
            Some(id) => self.account(&String::from_utf8_lossy(&id)),
        }
    }

    /// Creates an account; `false` when its email is taken. Atomic, so two concurrent creations of
    /// the same email cannot both succeed.
    pub fn insert_account(&self, account: &Account) -> Result<bool, StoreError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let email_key = format!("{EMAILS}{}", account.email);
        let account_key = format!("{ACCOUNTS}{}", account.id);
        let value = serde_json::to_vec(account)?;
        let result = self.tree.transaction(|tx| {
            if tx.get(email_key.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(()));
            }
            tx.insert(email_key.as_bytes(), account.id.as_bytes())?;
            tx.insert(account_key.as_bytes(), value.as_slice())?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(true),
            Err(TransactionError::Abort(())) => Ok(false),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    /// Replaces an account whose email did not change.
    pub fn put_account(&self, account: &Account) -> Result<(), StoreError> {
        self.put(&format!("{ACCOUNTS}{}", account.id), account)
    }

    pub fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        self.scan(ACCOUNTS)
    }

    /// Writes another replica's version of an account with its email index entry (the mirror: the
    /// email was checked where the account was made).
    pub fn put_mirrored_account(&self, account: &Account) -> Result<(), StoreError> {
        self.tree
            .insert(format!("{EMAILS}{}", account.email), account.id.as_bytes())
            .map_err(StoreError::from)?;
        self.put_account(account)
    }

    // --- refresh tokens and families ----------------------------------------------------------

    pub fn put_refresh(&self, rec: &RefreshRecord) -> Result<(), StoreError> {
        self.put(&format!("{REFRESH}{}", rec.id), rec)
    }

    pub fn refresh(&self, id: &str) -> Result<Option<RefreshRecord>, StoreError> {
        self.get(&format!("{REFRESH}{id}"))
    }

    /// Marks a refresh token spent, atomically: of two concurrent exchanges exactly one sees `Spent`.
    /// `check` runs on the live record first (hash comparison); when it fails nothing changes.
    pub fn spend_refresh(
        &self,
        id: &str,
        now_ms: u64,
        check: impl Fn(&RefreshRecord) -> bool,
    ) -> Result<Spend, StoreError> {
        let key = format!("{REFRESH}{id}");
        loop {
            let Some(raw) = self.tree.get(&key).map_err(StoreError::from)? else {
                return Ok(Spend::Unknown);
            };
            let mut rec: RefreshRecord = decode(key.as_bytes(), &raw)?;
            if !check(&rec) {
                return Ok(Spend::Unknown);
            }
            if rec.spent_ms.is_some() {
                return Ok(Spend::AlreadySpent(rec));
            }
            rec.spent_ms = Some(now_ms);
            let new = serde_json::to_vec(&rec)?;
            let swapped = self
                .tree
                .compare_and_swap(&key, Some(raw), Some(new))
                .map_err(StoreError::from)?;
            if swapped.is_ok() {
                return Ok(Spend::Spent(rec));
            }
            // Someone else changed it in between: look again.
        }
    }

    /// Every refresh token, spent ones included (until swept).
    pub fn refreshes(&self) -> Result<Vec<RefreshRecord>, StoreError> {
        self.scan(REFRESH)
    }

    /// Every sign-in family (until swept).
    pub fn families(&self) -> Result<Vec<Family>, StoreError> {
        self.scan(FAMILIES)
    }

    pub fn family(&self, id: &str) -> Result<Option<Family>, StoreError> {
        self.get(&format!("{FAMILIES}{id}"))
    }

    pub fn put_family(&self, family: &Family) -> Result<(), StoreError> {
        self.put(&format!("{FAMILIES}{}", family.id), family)
    }

    /// Changes a family atomically (a revocation and a concurrent refresh cannot undo each other).
    /// Returns the family as changed, or `None` when there is no such family.
    pub fn update_family(
        &self,
        id: &str,
        change: impl Fn(&mut Family),
    ) -> Result<Option<Family>, StoreError> {
        let key = format!("{FAMILIES}{id}");
        let updated = self
            .tree
            .update_and_fetch(&key, |old| {
                let old = old?;
                // A record that does not decode is left as it is; the read below reports it.
                let Ok(mut family) = serde_json::from_slice::<Family>(old) else {
                    return Some(old.to_vec());
                };
                change(&mut family);
                serde_json::to_vec(&family)
                    .ok()
                    .or_else(|| Some(old.to_vec()))
            })
            .map_err(StoreError::from)?;
        updated.map(|v| decode(key.as_bytes(), &v)).transpose()
    }

    /// The store the usage records are in.
    pub fn usage_store(&self) -> &Store {
        &self.store
    }

    /// Forgets refresh tokens and families that expired before `before_ms`. Returns the ids removed:
    /// (refresh tokens, families).
    pub fn sweep_sessions(&self, before_ms: u64) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let mut refresh = Vec::new();
        for rec in self.scan::<RefreshRecord>(REFRESH)? {
            if rec.expires_ms < before_ms {
                self.tree
                    .remove(format!("{REFRESH}{}", rec.id))
                    .map_err(StoreError::from)?;
                refresh.push(rec.id);
            }
        }
        let mut families = Vec::new();
        for fam in self.scan::<Family>(FAMILIES)? {
            if fam.expires_ms < before_ms {
                self.tree
                    .remove(format!("{FAMILIES}{}", fam.id))
                    .map_err(StoreError::from)?;
                families.push(fam.id);
            }
        }
        Ok((refresh, families))
    }

    // --- audit --------------------------------------------------------------------------------

    /// Appends an entry; its `id` is filled in here.
    pub fn append_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let id = self.store.db().generate_id().map_err(StoreError::from)?;
        let seq = (self.audit_tag << 48) | (id & 0xffff_ffff_ffff);
        entry.id = format!("{:016x}{seq:016x}", entry.ts_ms);
        let key = format!("{AUDIT}{:016x}/{seq:016x}", entry.ts_ms);
        self.audit
            .insert(key, serde_json::to_vec(&entry)?)
            .map_err(StoreError::from)?;
        Ok(entry)
    }

    /// The sled key of the entry with `id`, when `id` is one (32 hex digits).
    fn audit_key(id: &str) -> Option<String> {
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| format!("{AUDIT}{}/{}", &id[..16], &id[16..]))
    }

    pub fn audit_entry(&self, id: &str) -> Result<Option<AuditEntry>, StoreError> {
        let Some(key) = Self::audit_key(id) else {
            return Ok(None);
        };
        match self.audit.get(&key).map_err(StoreError::from)? {
            None => Ok(None),
            Some(v) => decode(key.as_bytes(), &v).map(Some),
        }
    }

    /// Adds another replica's entry under its own id, in time order with ours; `false` when the log
    /// has it already (or the id is not one).
    pub fn put_mirrored_audit(&self, entry: &AuditEntry) -> Result<bool, StoreError> {
        let Some(key) = Self::audit_key(&entry.id) else {
            return Ok(false);
        };
        let value = serde_json::to_vec(entry)?;
        let swapped = self
            .audit
            .compare_and_swap(key, None::<&[u8]>, Some(value))
            .map_err(StoreError::from)?;
        Ok(swapped.is_ok())
    }

    /// Every entry, oldest first (to seed Redis).
    pub fn audit_all(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit
            .scan_prefix(AUDIT)
            .map(|item| {
                let (k, v) = item.map_err(StoreError::from)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Up to `limit` entries older than the entry `before` (a previous page's last id), newest first,
    /// and the cursor of the next page when there is one.
    pub fn audit_page(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), StoreError> {
        // An unreadable cursor starts from the newest entry rather than failing.
        let end = before
            .and_then(Self::audit_key)
            .unwrap_or_else(|| format!("{AUDIT}~"));
        let mut out = Vec::with_capacity(limit.min(1000));
        let mut more = false;
        for item in self.audit.range(AUDIT.as_bytes()..end.as_bytes()).rev() {
            let (k, v) = item.map_err(StoreError::from)?;
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(decode::<AuditEntry>(&k, &v)?);
        }
        let next = more.then(|| out.last().map(|e| e.id.clone())).flatten();
        Ok((out, next))
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.store.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> AuthStore {
        AuthStore::open(&Store::temporary().unwrap()).unwrap()
    }

    fn account(id: &str, email: &str) -> Account {
        Account {
            id: id.into(),
            email: email.into(),
            password_hash: "h".into(),
            role: Role::User,
            tier: None,
            scopes: vec![],
            disabled: false,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[test]
    fn emails_are_unique() {
        let s = store();
        assert!(s.insert_account(&account("a", "x@y")).unwrap());
        assert!(!s.insert_account(&account("b", "x@y")).unwrap());
        assert_eq!(s.account_by_email("x@y").unwrap().unwrap().id, "a");
        assert!(s.account("b").unwrap().is_none());
    }

    #[test]
    fn a_refresh_token_is_spent_once() {
        let s = store();
        let rec = RefreshRecord {
            id: "r".into(),
            hash: "h".into(),
            family: "f".into(),
            account: "a".into(),
            created_ms: 1,
            expires_ms: 10,
            spent_ms: None,
        };
        s.put_refresh(&rec).unwrap();
        assert!(matches!(
            s.spend_refresh("r", 5, |r| r.hash == "wrong").unwrap(),
            Spend::Unknown
        ));
        assert!(matches!(
            s.spend_refresh("r", 5, |_| true).unwrap(),
            Spend::Spent(_)
        ));
        assert!(matches!(
            s.spend_refresh("r", 6, |_| true).unwrap(),
            Spend::AlreadySpent(r) if r.spent_ms == Some(5)
        ));
        assert!(matches!(
            s.spend_refresh("zz", 6, |_| true).unwrap(),
            Spend::Unknown
        ));
        assert_eq!(
            s.sweep_sessions(11).unwrap(),
            (vec!["r".to_owned()], vec![])
        );
        assert!(s.refresh("r").unwrap().is_none());
    }

    #[test]
    fn audit_pages_newest_first() {
        let s = store();
        for ts in 1..=5u64 {
            s.append_audit(AuditEntry {
                id: String::new(),
                ts_ms: ts,
                event: format!("e{ts}"),
                outcome: "success".into(),
                actor: "a".into(),
                target: None,
                address: None,
                detail: None,
            })
            .unwrap();
        }
        let (page, next) = s.audit_page(None, 2).unwrap();
        let events: Vec<_> = page.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["e5", "e4"]);
        let (page, next) = s.audit_page(next.as_deref(), 2).unwrap();
        let events: Vec<_> = page.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(events, ["e3", "e2"]);
        let (page, next) = s.audit_page(next.as_deref(), 2).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(next, None);
    }

    #[test]
    fn audit_logs_of_two_replicas_merge_in_time_order_with_distinct_ids() {
        let (a, b) = (store(), store());
        let entry = |ts: u64, event: &str| AuditEntry {
            id: String::new(),
            ts_ms: ts,
            event: event.into(),
            outcome: "success".into(),
            actor: "a".into(),
            target: None,
            address: None,
            detail: None,
        };
        // Fresh stores make the same sequences: the tags keep their ids apart.
        let mine = a.append_audit(entry(2, "a2")).unwrap();
        let theirs = [
            b.append_audit(entry(2, "b2")).unwrap(),
            b.append_audit(entry(3, "b3")).unwrap(),
        ];
        if a.audit_tag != b.audit_tag {
            assert_ne!(mine.id, theirs[0].id);
        }
        for e in &theirs {
            assert!(a.put_mirrored_audit(e).unwrap());
            assert!(!a.put_mirrored_audit(e).unwrap(), "once");
        }
        assert!(a.audit_entry(&mine.id).unwrap().is_some());
        let (page, next) = a.audit_page(None, 2).unwrap();
        assert_eq!(page[0].event, "b3");
        let (rest, _) = a.audit_page(next.as_deref(), 2).unwrap();
        assert_eq!(page.len() + rest.len(), 3);
        assert_eq!(a.audit_all().unwrap().len(), 3);
        // The tag survives a reopen.
        assert_eq!(AuthStore::open(&a.store).unwrap().audit_tag, a.audit_tag);
    }

    #[test]
    fn account_keys_use_the_index() {
        let s = store();
        let mut k = KeyRecord {
            id: "k1".into(),
            name: "n".into(),
            account: Some("acc".into()),
            tier: None,
            scopes: vec![],
            hash: "h".into(),
            previous: None,
            created_ms: 1,
            created_by: "admin_token".into(),
            expires_ms: None,
            last_used_ms: None,
            rotated_ms: None,
            revoked_ms: None,
        };
        s.put_key(&k).unwrap();
        k.id = "k2".into();
        k.account = None;
        s.put_key(&k).unwrap();
        assert_eq!(s.account_keys("acc").unwrap().len(), 1);
        assert_eq!(s.keys().unwrap().len(), 2);
        assert_eq!(key_status(&k, 5), "active");
        k.expires_ms = Some(5);
        assert_eq!(key_status(&k, 5), "expired");
        k.revoked_ms = Some(1);
        assert_eq!(key_status(&k, 5), "revoked");
        // A replaced key is still one key, for the high-water mark too.
        s.put_key(&k).unwrap();
        assert_eq!(s.count_keys().unwrap(), 2);
        assert_eq!(s.store.high_water().written().keys, 2);
    }
}
