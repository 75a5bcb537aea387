//! The `switchyard keys` CLI against a running server: create, list, rotate, revoke, and the errors
//! without a token or with a wrong one.

use super::{chat_as, one_profile_server};
use crate::support::*;

/// Runs `switchyard keys ARGS --url URL` with the admin token; returns (exit code, stdout, stderr).
fn keys_cli(server: &Server, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("keys")
        .args(args)
        .arg("--url")
        .arg(server.url(""))
        .current_dir(server.path());
    cmd.env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_CONFIG");
    if let Some(t) = token {
        cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[tokio::test]
async fn the_keys_cli_creates_lists_rotates_and_revokes() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let run = |args: &'static [&'static str]| keys_cli(&server, args, Some(ADMIN_TOKEN));

    let (code, out, err) = run(&[
        "create",
        "--name",
        "cli",
        "--scopes",
        "m",
        "--expires-in",
        "30d",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let key = last_line(&out).to_owned();
    assert!(key.starts_with("sy_"), "{out}");
    assert_eq!(
        out.matches(key.as_str()).count(),
        1,
        "the secret is printed once"
    );
    let id = key.split('_').nth(1).unwrap().to_owned();
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 200);
    assert_eq!(chat_as(&server, "n", Some(&key)).await.0, 403);

    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("cli") && row.contains("active") && row.contains(&format!("sy_{id}")),
        "{row}"
    );
    assert!(!out.contains(&key));

    let (code, out, err) = keys_cli(
        &server,
        &["rotate", &id, "--grace", "0s"],
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 0, "{err}");
    let new_key = last_line(&out).to_owned();
    assert!(new_key.starts_with(&format!("sy_{id}_")) && new_key != key);
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 401);
    assert_eq!(chat_as(&server, "m", Some(&new_key)).await.0, 200);

    let (code, out, _) = keys_cli(&server, &["revoke", &id], Some(ADMIN_TOKEN));
    assert_eq!(code, 0);
    assert!(out.contains("revoked"));
    assert_eq!(chat_as(&server, "m", Some(&new_key)).await.0, 401);
    let (_, out, _) = run(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{out}"
    );

    let (code, _, err) = keys_cli(&server, &["list"], None);
    assert_eq!(code, 1);
    assert!(err.contains("SWITCHYARD_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = keys_cli(&server, &["list"], Some("wrong-token"));
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}
