//! The dashboard at `/ui`: its headers, the session cookie's flags and its CSRF protection over plain
//! HTTP, then a real headless Chromium against the real server — a user's usage, limits and keys, an
//! admin's live profiles, charts and keys, text that stays text, and a form post without the token.

mod webdriver;

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::support::*;
use webdriver::Browser;

const PASSWORD: &str = "a long passphrase";
const WAIT: Duration = Duration::from_secs(30);
/// True once the page's script has found no session and shows the sign-in forms.
const SIGN_IN_SHOWN: &str = "return !document.getElementById('signin').hidden;";

const TIERS: &str = "\
tiers:
  default:
    requests_per_hour: 1000
  pro:
    requests_per_hour: 500
    tokens_per_day: 100000
pricing:
  m:
    input_per_million: 1000
    output_per_million: 2000
  n:
    input_per_million: 3000
    output_per_million: 4000";

/// Two profiles on two mocks: `flaky` first (by priority) for model `m`, `steady` for `m` and `n`.
async fn dashboard_server(extra_auth: &[&str]) -> (MockUpstream, MockUpstream, Server) {
    let flaky = MockUpstream::start_named("flaky").await;
    let steady = MockUpstream::start_named("steady").await;
    let mut config = ConfigBuilder::default()
        .profile_with(
            "flaky",
            &flaky.base_url(),
            &["api_key: \"sk-flaky\"", "priority: 1"],
        )
        .profile_with(
            "steady",
            &steady.base_url(),
            &["api_key: \"sk-steady\"", "priority: 2"],
        )
        .model_with_strategy("m", &["flaky", "steady"], "priority")
        .model("n", &["steady"]);
    config.auth_required = true;
    config.cooldown = ("10m".into(), "10m".into());
    config.extra_auth_yaml = extra_auth.iter().map(|s| s.to_string()).collect();
    config.extra_yaml = TIERS.lines().map(str::to_owned).collect();
    let server = Server::start(&config);
    (flaky, steady, server)
}

async fn create_account(server: &Server, email: &str, role: &str) -> String {
    let body = json!({"email": email, "password": PASSWORD, "role": role, "tier": "pro"});
    let v = admin(server, reqwest::Method::POST, "/admin/accounts", Some(body)).await;
    v["id"].as_str().unwrap().to_owned()
}

/// A key of `account`, made by the admin; returns the secret.
async fn account_key(server: &Server, account: &str) -> String {
    let body = json!({"name": "traffic", "account": account});
    let v = admin(server, reqwest::Method::POST, "/admin/keys", Some(body)).await;
    v["key"].as_str().unwrap().to_owned()
}

async fn chat_with(server: &Server, key: &str, model: &str) {
    let (s, _, v) = server
        .post("/v1/chat/completions")
        .bearer(key)
        .json(chat_body(model))
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
}

/// The session cookie (`sy_session=...`) of a sign-in answer, and the whole `Set-Cookie` line.
fn session_cookie(h: &HeaderMap) -> (String, String) {
    let line = h
        .get("set-cookie")
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap()
        .to_owned();
    let pair = line.split(';').next().unwrap().to_owned();
    (pair, line)
}

/// Signs in to the dashboard over plain HTTP; returns the cookie pair and the CSRF token.
async fn http_sign_in(server: &Server, body: Value) -> (String, String) {
    let (s, h, v) = server
        .post("/ui/api/login")
        .header("origin", &server.url(""))
        .json(body)
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
    let (pair, _) = session_cookie(&h);
    (pair, v["csrf_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_a_strict_cookie() {
    let (_a, _b, server) = dashboard_server(&[]).await;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let (s, h, body) = server.get(path).send_text().await;
        assert_eq!(s, 200, "{path}");
        let header = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert!(header("content-type").unwrap().starts_with(kind), "{path}");
        let csp = header("content-security-policy").expect("a CSP");
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        // Nothing from another origin, and nothing inline for the policy to have to allow.
        let elsewhere = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !elsewhere.contains("http://") && !elsewhere.contains("https://"),
            "{path}"
        );
        assert!(
            !body.contains("innerHTML") && !body.contains("eval("),
            "{path}"
        );
        if kind == "text/html" {
            assert!(
                !body.contains("<script>") && !body.contains("style="),
                "{path}"
            );
        }
    }

    // The admin token signs in; the cookie is HttpOnly, SameSite=Strict, and Secure only over https.
    let (s, h, v) = server
        .post("/ui/api/login")
        .json(json!({"admin_token": ADMIN_TOKEN}))
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
    let (pair, line) = session_cookie(&h);
    assert!(pair.starts_with("sy_session=") && pair.len() > 40, "{line}");
    assert!(!line.contains(ADMIN_TOKEN), "the cookie is not the token");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(line.contains(flag), "{line}");
    }
    assert!(!line.contains("Secure"), "{line}");
    assert_eq!(v["csrf_token"].as_str().unwrap().len(), 64, "{v}");
    let (s, h, _) = server
        .post("/ui/api/login")
        .header("x-forwarded-proto", "https")
        .json(json!({"admin_token": ADMIN_TOKEN}))
        .send()
        .await;
    assert_eq!(s, 200);
    assert!(session_cookie(&h).1.ends_with("; Secure"));

    // A wrong token gets no cookie; neither does a sign-in posted as a form or from another origin.
    let (s, h, v) = server
        .post("/ui/api/login")
        .json(json!({"admin_token": "nope"}))
        .send()
        .await;
    assert_eq!(s, 401, "{v}");
    assert!(h.get("set-cookie").is_none());
    let form = format!("admin_token={ADMIN_TOKEN}");
    let kind = "application/x-www-form-urlencoded";
    let (s, h, _) = raw_post(&server, "/ui/api/login", &[], kind, &form).await;
    assert_eq!(s, 403);
    assert!(h.get("set-cookie").is_none());
    let (s, _, v) = server
        .post("/ui/api/login")
        .header("origin", "http://evil.example")
        .json(json!({"admin_token": ADMIN_TOKEN}))
        .send()
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(error_of(&v.to_string())["type"], "permission_error");
}

#[tokio::test]
async fn changes_with_the_cookie_need_the_csrf_token_and_the_same_origin() {
    let (_a, _b, server) = dashboard_server(&[]).await;
    let (first, _) = http_sign_in(&server, json!({"admin_token": ADMIN_TOKEN})).await;
    let origin = server.url("");

    // Signing in again from the same browser ends the session its cookie named.
    let (s, h, v) = server
        .post("/ui/api/login")
        .header("cookie", &first)
        .json(json!({"admin_token": ADMIN_TOKEN}))
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
    let (cookie, csrf) = (
        session_cookie(&h).0,
        v["csrf_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(cookie, first);
    let (s, _, _) = server
        .get("/admin/profiles")
        .header("cookie", &first)
        .send()
        .await;
    assert_eq!(s, 401);

    // Reads need only the cookie.
    let (s, _, v) = server
        .get("/admin/profiles")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = server
        .get("/ui/api/session")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["admin"], true);
    assert_eq!(v["csrf_token"], csrf.as_str());

    let reset = "/admin/profiles/steady/reset";
    let refused: [(&str, Vec<(&str, &str)>); 4] = [
        ("no token", vec![]),
        ("a wrong token", vec![("x-csrf-token", "0000")]),
        (
            "another origin",
            vec![
                ("x-csrf-token", csrf.as_str()),
                ("origin", "http://evil.example"),
            ],
        ),
        (
            "another site",
            vec![
                ("x-csrf-token", csrf.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
        ),
    ];
    for (what, headers) in refused {
        let mut call = server.post(reset).header("cookie", &cookie);
        for (k, v) in headers {
            call = call.header(k, v);
        }
        let (s, _, v) = call.send().await;
        assert_eq!(s, 403, "{what}: {v}");
        assert_eq!(
            error_of(&v.to_string())["type"],
            "permission_error",
            "{what}"
        );
    }
    // A form post (what another page could make a browser send) without the token.
    let headers = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    let kind = "application/x-www-form-urlencoded";
    let (s, _, v) = raw_post(&server, reset, &headers, kind, "x=1").await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("CSRF"), "{v}");

    // With the token, from the dashboard's origin: done.
    let (s, _, v) = server
        .post(reset)
        .header("cookie", &cookie)
        .header("origin", &origin)
        .header("x-csrf-token", &csrf)
        .send()
        .await;
    assert_eq!(s, 200, "{v}");

    // The model routes do not take the cookie at all.
    let (s, _, v) = server
        .post("/v1/chat/completions")
        .header("cookie", &cookie)
        .json(chat_body("n"))
        .send()
        .await;
    assert_eq!(s, 401, "{v}");

    // Signing out needs the token too, then the cookie is worth nothing.
    let (s, _, _) = server
        .post("/ui/api/logout")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(s, 403);
    let (s, h, _) = server
        .post("/ui/api/logout")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await;
    assert_eq!(s, 200);
    assert!(session_cookie(&h).1.contains("Max-Age=0"));
    let (s, _, _) = server
        .get("/admin/profiles")
        .header("cookie", &cookie)
        .send()
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn an_account_session_refreshes_its_tokens_and_ends_with_the_account() {
    // Access tokens shorter than the refresh margin: every request of the session rotates them.
    let (_a, _b, server) = dashboard_server(&["access_token_ttl: 1s"]).await;
    let id = create_account(&server, "dev@example.com", "developer").await;
    let (cookie, csrf) = http_sign_in(
        &server,
        json!({"email": "dev@example.com", "password": PASSWORD}),
    )
    .await;
    for _ in 0..3 {
        let (s, _, v) = server.get("/v1/me").header("cookie", &cookie).send().await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["account_id"], id.as_str(), "{v}");
        assert_eq!(v["credential"], "session", "{v}");
    }
    let audit = admin(
        &server,
        reqwest::Method::GET,
        "/admin/audit?limit=500",
        None,
    )
    .await;
    let refreshed = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "token_refreshed" && e["actor"] == format!("account:{id}"))
        .count();
    assert!(refreshed >= 3, "{audit}");

    // A developer's session may create a key (with the token), and the key is the account's.
    let (s, _, v) = server
        .post("/v1/keys")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(json!({"name": "from the dashboard"}))
        .send()
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["account"], id.as_str());

    // Disabling the account ends the session at once.
    let body = json!({"disabled": true});
    let path = format!("/admin/accounts/{id}");
    admin(&server, reqwest::Method::PATCH, &path, Some(body)).await;
    let (s, _, v) = server.get("/v1/me").header("cookie", &cookie).send().await;
    assert_eq!(s, 401, "{v}");
}

#[tokio::test]
async fn the_profile_view_counts_attempts_in_flight() {
    let (_flaky, steady, server) = dashboard_server(&[]).await;
    let key = account_key(&server, "acme").await;
    assert_eq!(admin_profile(&server, "steady").await["in_flight"], 0);
    // An answer held at the upstream (under the first-byte timeout) is in flight until it arrives.
    steady.push(Reply::delayed(Duration::from_secs(2)));
    let call = {
        let url = server.url("/v1/chat/completions");
        let key = key.clone();
        tokio::spawn(async move {
            let resp = client()
                .post(url)
                .bearer_auth(key)
                .json(&chat_body("n"))
                .send()
                .await;
            resp.unwrap().status().as_u16()
        })
    };
    let deadline = std::time::Instant::now() + WAIT;
    while admin_profile(&server, "steady").await["in_flight"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "never counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call.await.unwrap(), 200);
    let deadline = std::time::Instant::now() + WAIT;
    while admin_profile(&server, "steady").await["in_flight"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still counted after the answer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A page function: the rows of a table as {row: {column: text}}.
const ROWS_FN: &str = "function rows(sel) {
        const out = {};
        for (const tr of document.querySelectorAll(sel + ' tr[data-row]')) {
            const row = {};
            for (const td of tr.cells) row[td.dataset.col] = td.textContent;
            out[tr.dataset.row] = row;
        }
        return out;
    }";

/// The id part of a key's secret (`sy_<id>_<secret>`).
fn key_id_of(secret: &str) -> String {
    let id = secret.trim_start_matches("sy_").split('_').next();
    id.unwrap().to_owned()
}

/// The secret a key form of `scope` (`user` or `admin`) shows once, checked to work against the API;
/// returns it and its key id.
async fn shown_secret(browser: &Browser, server: &Server, scope: &str) -> (String, String) {
    let script = format!(
        "const c = document.querySelector('#{scope}-secret code'); return c && c.textContent;"
    );
    let secret = browser
        .wait_for("the new key's secret", &script, json!([]), WAIT)
        .await;
    let secret = secret.as_str().unwrap().to_owned();
    let (s, _, _) = server.get("/v1/models").bearer(&secret).send().await;
    assert_eq!(s, 200);
    let key_id = key_id_of(&secret);
    (secret, key_id)
}

/// A script returning table `arguments[0]`'s rows once row `arguments[1]` is there.
fn rows_with(row: &str) -> String {
    format!("{ROWS_FN} const r = rows(arguments[0]); return r[{row:?}] ? r : null;")
}

/// A script that is true once profile `id` shows `state`.
fn profile_state_is(id: &str, state: &str) -> String {
    format!(
        "const td = document.querySelector('#profiles tr[data-row=\"{id}\"] td[data-col=state]');
         return !!td && td.textContent === '{state}';"
    )
}

/// A POST with a body of any type (what an HTML form sends), outside the JSON helpers.
async fn raw_post(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> (u16, HeaderMap, Value) {
    let mut req = client()
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts that the page's usage table shows what the API's report says, figure for figure.
fn assert_table_is_report(page: &Value, report: &Value, group: &str) {
    let rows = report["data"].as_array().unwrap();
    assert!(!rows.is_empty(), "{report}");
    for (row, shown) in rows
        .iter()
        .map(|r| (r, &page[r[group].as_str().unwrap()]))
        .chain([(&report["total"], &page["total"])])
    {
        for col in [
            "requests",
            "attempts",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "reasoning_tokens",
            "total_tokens",
        ] {
            assert_eq!(
                shown[col],
                row[col].to_string(),
                "{col}: page {page} api {report}"
            );
        }
        assert_eq!(
            shown["cost_usd"], row["cost_usd"],
            "page {page} api {report}"
        );
    }
}

#[tokio::test]
async fn a_user_sees_the_apis_usage_and_limits_and_manages_keys_in_the_browser() {
    let Some(browser) = Browser::start("ui::a_user_sees_the_apis_usage").await else {
        return;
    };
    let (_flaky, steady, server) = dashboard_server(&[]).await;
    let id = create_account(&server, "ada@example.com", "developer").await;
    let path = format!("/admin/accounts/{id}/credits");
    admin(
        &server,
        reqwest::Method::POST,
        &path,
        Some(json!({"amount_usd": 3})),
    )
    .await;
    let key = account_key(&server, &id).await;
    // One answer with cache and reasoning counts, which the page shows as the report has them.
    let cached = json!({
        "id": "chatcmpl-cached", "object": "chat.completion", "created": 1, "model": "n",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 4}},
    });
    steady.push(Reply::status(200, cached.to_string()));
    for model in ["m", "m", "m", "n", "n"] {
        chat_with(&server, &key, model).await;
    }

    browser.goto(&server.url("/ui")).await;
    browser
        .wait_for("the sign-in form", SIGN_IN_SHOWN, json!([]), WAIT)
        .await;
    browser
        .type_into("#login-account input[name=email]", "ada@example.com")
        .await;
    browser
        .type_into("#login-account input[name=password]", PASSWORD)
        .await;
    browser.click("#login-account button[type=submit]").await;
    let rows = browser
        .wait_for(
            "the usage table",
            &rows_with("n"),
            json!(["#user-by-model"]),
            WAIT,
        )
        .await;
    let (s, _, by_model) = server
        .get("/v1/usage?group_by=model")
        .bearer(&key)
        .send()
        .await;
    assert_eq!(s, 200);
    assert_table_is_report(&rows, &by_model, "model");
    assert_eq!(
        by_model["data"][0]["requests"], 3,
        "known traffic: {by_model}"
    );
    assert_eq!(by_model["data"][1]["cached_tokens"], 30, "{by_model}");
    assert_eq!(by_model["data"][1]["cache_write_tokens"], 5, "{by_model}");

    let (_, _, by_day) = server
        .get("/v1/usage?group_by=day")
        .bearer(&key)
        .send()
        .await;
    let script = format!("{ROWS_FN} return rows(arguments[0]);");
    let days = browser.exec(&script, json!(["#user-by-day"])).await;
    assert_table_is_report(&days, &by_day, "day");
    let bars = browser
        .exec(
            "return Array.from(document.querySelectorAll('#user-chart g[data-label]'))
                .filter(g => g.dataset.value !== '0').map(g => [g.dataset.label, g.dataset.value]);",
            json!([]),
        )
        .await;
    let want: Vec<Value> = by_day["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["day"], r["total_tokens"].to_string()]))
        .collect();
    assert_eq!(bars, json!(want));

    // Limits: the tier's windows as the API's own headers give them, and the credits.
    let facts = browser
        .wait_for(
            "the limits",
            "const f = {}; for (const dd of document.querySelectorAll('#user-limits dd')) f[dd.dataset.fact] = dd.textContent; return f.requests ? f : null;",
            json!([]),
            WAIT,
        )
        .await;
    assert!(
        facts["requests"].as_str().unwrap().contains(" of 500 "),
        "{facts}"
    );
    assert!(
        facts["tokens"].as_str().unwrap().contains(" of 100000 "),
        "{facts}"
    );
    let (_, _, me) = server.get("/v1/me").bearer(&key).send().await;
    let balance = me["credits"]["balance_usd"].as_str().unwrap();
    assert_eq!(facts["balance"], format!("${balance}"), "{me}");
    browser.screenshot("ui-user").await;

    // A key made on the page works until it is revoked on the page.
    browser
        .type_into("#user-key-form input[name=name]", "laptop")
        .await;
    browser.click("#user-key-form button[type=submit]").await;
    let (secret, key_id) = shown_secret(&browser, &server, "user").await;
    let row = format!("#user-keys tr[data-row=\"{key_id}\"]");
    browser
        .wait_for(
            "the new key's row",
            &format!("return !!document.querySelector('{row}');"),
            json!([]),
            WAIT,
        )
        .await;
    browser.click(&format!("{row} button")).await;
    browser
        .wait_for(
            "the key to show as revoked",
            &format!("const td = document.querySelector('{row} td[data-col=status]'); return td && td.textContent === 'revoked';"),
            json!([]),
            WAIT,
        )
        .await;
    let (s, _, v) = server.get("/v1/models").bearer(&secret).send().await;
    assert_eq!(s, 401, "{v}");

    // New traffic shows on the refresh button, without a page load.
    chat_with(&server, &key, "m").await;
    browser
        .exec("window.__stillThisPage = 7; return true;", json!([]))
        .await;
    browser.click("#user-refresh").await;
    let script = format!(
        "{ROWS_FN} const r = rows(arguments[0]); return r.m && r.m.requests === '4' ? r : null;"
    );
    let rows = browser
        .wait_for(
            "four requests of m",
            &script,
            json!(["#user-by-model"]),
            WAIT,
        )
        .await;
    let (_, _, by_model) = server
        .get("/v1/usage?group_by=model")
        .bearer(&key)
        .send()
        .await;
    assert_table_is_report(&rows, &by_model, "model");
    let marker = browser
        .exec("return window.__stillThisPage;", json!([]))
        .await;
    assert_eq!(marker, 7, "the page was reloaded");
}

#[tokio::test]
async fn an_admin_sees_live_profiles_charts_and_keys_and_a_tokenless_form_is_refused() {
    let Some(browser) = Browser::start("ui::an_admin_sees_live_profiles").await else {
        return;
    };
    let (flaky, _steady, server) = dashboard_server(&[]).await;
    let key = account_key(&server, "acme").await;
    for _ in 0..4 {
        chat_with(&server, &key, "n").await;
    }

    browser.goto(&server.url("/ui")).await;
    browser
        .wait_for("the sign-in form", SIGN_IN_SHOWN, json!([]), WAIT)
        .await;
    browser
        .type_into("#login-admin input[name=admin_token]", ADMIN_TOKEN)
        .await;
    browser.click("#login-admin button[type=submit]").await;
    let healthy = profile_state_is("flaky", "healthy");
    browser
        .wait_for("flaky healthy", &healthy, json!([]), WAIT)
        .await;
    // Set in the page: still there at the end means nothing reloaded the page.
    browser
        .exec("window.__stillThisPage = 42; return true;", json!([]))
        .await;

    // A 429 puts flaky in cooldown; the page shows it, with its countdown, without a reload.
    flaky.push(Reply::rate_limited(600));
    chat_with(&server, &key, "m").await;
    wait_state(&server, "flaky", "cooldown", WAIT).await;
    let cooldown = "const tr = document.querySelector('#profiles tr[data-row=\"flaky\"]');
        if (!tr || tr.querySelector('td[data-col=state]').textContent !== 'cooldown') return null;
        const left = tr.querySelector('td[data-col=cooldown_until]').textContent;
        return /^[0-9.]+ (s|min|h)$/.test(left) ? left : null;";
    browser
        .wait_for(
            "flaky in cooldown with a countdown",
            cooldown,
            json!([]),
            WAIT,
        )
        .await;

    // The charts and the table show /admin/usage's figures.
    let (_, _, by_model) = server
        .get("/admin/usage?group_by=model")
        .bearer(ADMIN_TOKEN)
        .send()
        .await;
    let n_requests = by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "n")
        .map(|r| r["requests"].to_string())
        .unwrap();
    assert_eq!(n_requests, "4");
    let bar = "const g = document.querySelector(arguments[0]); return g && g.dataset.value === arguments[1];";
    browser
        .wait_for(
            "model n's bar",
            bar,
            json!(["#chart-model g[data-label=\"n\"]", n_requests]),
            WAIT,
        )
        .await;
    let (_, _, by_account) = server
        .get("/admin/usage?group_by=account")
        .bearer(ADMIN_TOKEN)
        .send()
        .await;
    let acme = by_account["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "acme")
        .map(|r| r["requests"].to_string())
        .unwrap();
    browser
        .wait_for(
            "account acme's bar",
            bar,
            json!(["#chart-account g[data-label=\"acme\"]", acme]),
            WAIT,
        )
        .await;
    let (_, _, by_model) = server
        .get("/admin/usage?group_by=model")
        .bearer(ADMIN_TOKEN)
        .send()
        .await;
    let m_attempts = by_model["data"][0]["attempts"].to_string();
    assert_eq!(
        m_attempts, "2",
        "flaky's 429 and steady's answer: {by_model}"
    );
    // Polled until the page's refresh has both attempts of model m, then compared figure for figure.
    let script = format!(
        "{ROWS_FN} const r = rows(arguments[0]); return r.m && r.m.attempts === arguments[1] ? r : null;"
    );
    let by_model_now = browser
        .wait_for(
            "the usage table",
            &script,
            json!(["#admin-by-model", m_attempts]),
            WAIT,
        )
        .await;
    assert_table_is_report(&by_model_now, &by_model, "model");
    browser.screenshot("ui-admin").await;

    // Reset on the page clears the cooldown, live.
    browser
        .click("#profiles tr[data-row=\"flaky\"] button")
        .await;
    let healthy = "const tr = document.querySelector('#profiles tr[data-row=\"flaky\"]');
        return !!tr && tr.querySelector('td[data-col=state]').textContent === 'healthy'
            && tr.querySelector('td[data-col=cooldown_until]').textContent === '—';";
    browser
        .wait_for("flaky healthy again", healthy, json!([]), WAIT)
        .await;
    assert_eq!(admin_profile(&server, "flaky").await["state"], "healthy");

    // A key whose name is markup: created on the page, shown as text, then revoked on the page.
    let name = "<script>window.__pwned = 1</script><b>bold</b>";
    browser
        .type_into("#admin-key-form input[name=name]", name)
        .await;
    browser
        .type_into("#admin-key-form input[name=account]", "acme")
        .await;
    browser.click("#admin-key-form button[type=submit]").await;
    let (secret, key_id) = shown_secret(&browser, &server, "admin").await;
    let row = format!("#admin-keys tr[data-row=\"{key_id}\"]");
    let shown = browser
        .wait_for(
            "the key's name",
            &format!("const td = document.querySelector('{row} td[data-col=name]'); return td && td.textContent;"),
            json!([]),
            WAIT,
        )
        .await;
    assert_eq!(shown, name);
    let injected = browser
        .exec(
            "return [typeof window.__pwned, document.querySelectorAll('#admin-keys b, #admin-keys script').length];",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!(["undefined", 0]));
    browser.click(&format!("{row} button.danger")).await;
    browser
        .wait_for(
            "the key to show as revoked",
            &format!("const td = document.querySelector('{row} td[data-col=status]'); return td && td.textContent === 'revoked';"),
            json!([]),
            WAIT,
        )
        .await;
    let (s, _, _) = server.get("/v1/models").bearer(&secret).send().await;
    assert_eq!(s, 401);

    // Rotating the traffic key on the page shows a new secret, which works.
    let traffic_id = key_id_of(&key);
    browser.click("#admin-secret button").await;
    browser
        .click(&format!(
            "#admin-keys tr[data-row=\"{traffic_id}\"] button:not(.danger)"
        ))
        .await;
    let rotated = browser
        .wait_for(
            "the rotated key's secret",
            "const c = document.querySelector('#admin-secret code'); return c && c.textContent;",
            json!([]),
            WAIT,
        )
        .await;
    let rotated = rotated.as_str().unwrap();
    assert!(rotated.starts_with(&format!("sy_{traffic_id}_")) && rotated != key);
    let (s, _, _) = server.get("/v1/models").bearer(rotated).send().await;
    assert_eq!(s, 200);

    // An account created on the page, then given a tier there.
    browser
        .type_into("#account-form input[name=email]", "grace@example.com")
        .await;
    browser
        .type_into("#account-form input[name=password]", PASSWORD)
        .await;
    browser.click("#account-form button[type=submit]").await;
    let account_row = "const tr = Array.from(document.querySelectorAll('#accounts tr[data-row]'))
        .find(tr => tr.querySelector('td[data-col=email]').textContent === 'grace@example.com');
        return tr ? tr.dataset.row : null;";
    let account = browser
        .wait_for("the new account", account_row, json!([]), WAIT)
        .await;
    let account = account.as_str().unwrap().to_owned();
    let row = format!("#accounts tr[data-row=\"{account}\"]");
    browser
        .type_into(&format!("{row} input[name=tier]"), "pro")
        .await;
    browser.click(&format!("{row} button")).await;
    browser
        .wait_for(
            "the tier shown",
            &format!("const td = document.querySelector('{row} td[data-col=tier]'); return !!td && td.textContent === 'pro';"),
            json!([]),
            WAIT,
        )
        .await;
    let path = format!("/admin/accounts/{account}");
    let v = admin(&server, reqwest::Method::GET, &path, None).await;
    assert_eq!(v["tier"], "pro", "{v}");
    assert_eq!(v["role"], "user", "{v}");

    let marker = browser
        .exec("return window.__stillThisPage;", json!([]))
        .await;
    assert_eq!(marker, 42, "the page was reloaded");

    // A plain form post, with the cookie but without the token: refused with 403.
    flaky.push(Reply::rate_limited(600));
    chat_with(&server, &key, "m").await;
    wait_state(&server, "flaky", "cooldown", WAIT).await;
    browser
        .exec(
            "const f = document.createElement('form'); f.method = 'post';
             f.action = '/admin/profiles/flaky/reset'; document.body.append(f); f.submit(); return true;",
            json!([]),
        )
        .await;
    let text = browser
        .wait_for(
            "the refusal",
            "const t = document.body ? document.body.innerText : ''; return t.includes('permission_error') ? t : null;",
            json!([]),
            WAIT,
        )
        .await;
    assert!(text.as_str().unwrap().contains("CSRF"), "{text}");
    assert_eq!(admin_profile(&server, "flaky").await["state"], "cooldown");
}
