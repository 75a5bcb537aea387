//! The README's commands, run as written against the real server:
//! - the "Try it in one minute" section: every command of its `sh` blocks, against the repository's
//!   `profiles.yaml` (which stands in for the section's `cargo run --release -- serve` line);
//! - every other `sh` block, against a server with what the examples assume (`openai-main` on the mock
//!   upstream, a `pro` tier, the webhook secret), each placeholder id replaced by a fresh real one;
//! - the Python SDK example, with the real SDK.
//!
//! Each command must succeed (HTTP 2xx for curl). A block that runs elsewhere is named in
//! `RUN_ELSEWHERE` with where, so a new README command without a test fails here.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::support::*;

/// The run command of the README's set-up, which the test's own server replaces.
const RUN: &str = "cargo run --release -- serve --config profiles.yaml";
/// The address the README's commands use.
const README_ADDR: &str = "127.0.0.1:8080";

/// The commands of the `sh` blocks between the try-it markers, continuation lines joined, comments
/// dropped.
fn try_it_commands(readme: &str) -> Vec<String> {
    let start = readme
        .find("<!-- try-it:begin")
        .expect("README.md has no <!-- try-it:begin --> marker");
    let end = readme[start..]
        .find("<!-- try-it:end -->")
        .expect("README.md has no <!-- try-it:end --> marker")
        + start;
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme[start..end].lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(trimmed);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// `NAME=VALUE` of an `export` line.
fn export_of(command: &str) -> Option<(String, String)> {
    let (name, value) = command.strip_prefix("export ")?.split_once('=')?;
    Some((name.to_owned(), value.trim_matches(['"', '\'']).to_owned()))
}

#[tokio::test]
async fn every_command_of_the_try_it_section_succeeds() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let commands = try_it_commands(&readme);
    assert!(
        commands.iter().any(|c| c == RUN),
        "the try-it section must start the proxy with `{RUN}`: {commands:#?}"
    );
    let exports: Vec<(String, String)> = commands.iter().filter_map(|c| export_of(c)).collect();
    let server = Server::start_repository_config_with_env(&exports);
    let (mut curls, mut binaries) = (0, 0);
    for command in &commands {
        if command == RUN || export_of(command).is_some() {
            continue;
        }
        let (script, is_curl) = if command.starts_with("curl ") {
            curls += 1;
            let script = command.replace(README_ADDR, &server.addr);
            // Curl's status, not its body, is what is checked (a 4xx still exits 0).
            (format!("{script} -o /dev/null -w '%{{http_code}}'"), true)
        } else if let Some(rest) = command.strip_prefix("target/release/switchyard ") {
            binaries += 1;
            (
                format!("'{}' {rest}", env!("CARGO_BIN_EXE_switchyard")),
                false,
            )
        } else {
            panic!("tests/it/readme.rs does not know how to run this README command: {command}");
        };
        let output = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(server.path())
            .envs(exports.iter().cloned())
            .env("SWITCHYARD_URL", server.url(""))
            .env("NO_PROXY", "*")
            .env("no_proxy", "*")
            .env_remove("SWITCHYARD_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{command}\nexit {:?}\n{stdout}\n{stderr}",
            output.status
        );
        if is_curl {
            assert!(
                stdout.starts_with('2'),
                "{command}\nHTTP {stdout}\n{stderr}"
            );
        } else {
            assert!(
                stdout.lines().last().is_some_and(|l| !l.trim().is_empty()),
                "{command}\n{stdout}\n{stderr}"
            );
        }
    }
    assert!(curls >= 3 && binaries >= 1, "{commands:#?}");
}

/// A fenced block of the README: its language, first line number and text.
struct Block {
    lang: String,
    line: usize,
    text: String,
}

/// Every fenced block of `readme` outside the try-it section (which the test above runs).
fn blocks_outside_try_it(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut in_try_it = false;
    for (i, line) in readme.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("<!-- try-it:begin") {
            in_try_it = true;
        } else if trimmed.starts_with("<!-- try-it:end") {
            in_try_it = false;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            match open.take() {
                Some(block) if !in_try_it => blocks.push(block),
                Some(_) => {}
                None => {
                    open = Some(Block {
                        lang: lang.to_owned(),
                        line: i + 1,
                        text: String::new(),
                    })
                }
            }
            continue;
        }
        if let Some(block) = open.as_mut() {
            block.text.push_str(line);
            block.text.push('\n');
        }
    }
    blocks
}

/// The logical commands of a shell block (continuation lines kept with their command, comment lines
/// kept with the command after them), so that each can get its own placeholders.
fn logical_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        pending.push_str(line);
        pending.push('\n');
        let trimmed = line.trim();
        let continues = trimmed.ends_with('\\') || trimmed.is_empty() || trimmed.starts_with('#');
        if !continues {
            commands.push(std::mem::take(&mut pending));
        }
    }
    if !pending.trim().is_empty() {
        commands.push(pending);
    }
    commands
}

/// Blocks of the README that no test here runs, each with where it is run instead. Anything else in
/// an `sh` block must run, so a new command in the README without a test fails this one.
const RUN_ELSEWHERE: &[(&str, &str)] = &[
    (
        "cargo test --workspace --no-fail-fast",
        "the set-up block: these tests' servers stand in for its run command, and .ci/run runs its test command (checked below)",
    ),
    (
        "\nclaude\n",
        "needs the Claude Code CLI from npm: load-tests/agents.sh runs it against the proxy",
    ),
    (
        "--data-dir ./data$i",
        "the several-replicas recipe: tests/it/replicas/ starts a real redis-server and three replicas on it",
    ),
    (
        "/admin/state/reseed",
        "needs state.backend: redis and a Redis behind its mark: tests/it/replicas/credits.rs restores an old snapshot and reseeds",
    ),
];

/// The config the README's examples assume: `openai-main` serving `gpt-4o-mini` (here from the mock
/// upstream, as if `OPENAI_API_KEY` were set), the `demo` model, and a `pro` tier.
async fn readme_examples_server() -> (MockUpstream, Server) {
    let mock = MockUpstream::start_named("openai-main").await;
    let mut config = ConfigBuilder::default()
        .profile("openai-main", &mock)
        .profile_with("demo", "", &["provider: echo"])
        .model("gpt-4o-mini", &["openai-main"])
        .model("demo", &["demo"]);
    // The examples sign in more often than a person would, all from one address.
    config.extra_auth_yaml = vec!["login:".into(), "  max_attempts_per_address: 1000".into()];
    config.extra_yaml = [
        "tiers:",
        "  pro:",
        "    requests_per_hour: 6000",
        "    monthly_credits: 50",
    ]
    .map(str::to_owned)
    .to_vec();
    config.extra_yaml.extend(
        [
            "pricing:",
            "  gpt-4o-mini:",
            "    input_per_million: 0.15",
            "    output_per_million: 0.6",
        ]
        .map(str::to_owned),
    );
    let server = Server::start_with_env(
        &config,
        &[("SWITCHYARD_BILLING_WEBHOOK_SECRET", WEBHOOK_SECRET)],
    );
    (mock, server)
}

const WEBHOOK_SECRET: &str = "whsec-readme-0123456789";
/// The account the README's sign-in examples create and use.
const ADA: (&str, &str) = ("ada@example.com", "a long passphrase");

/// Fresh values for the README's placeholders, made per command (so that revoking a key in one
/// command does not break rotating it in the next).
async fn resolve_placeholders(server: &Server, command: &str) -> String {
    let mut out = command.replace("127.0.0.1:8080", &server.addr);
    if out.contains("3fJ9aQ2LmX0b") {
        let id = if out.contains("/v1/keys/") {
            let (_, access) = sign_in_ada(server).await;
            let (s, _, v) = server
                .post("/v1/keys")
                .bearer(&access)
                .json(json!({"name": "readme"}))
                .send()
                .await;
            assert_eq!(s, 201, "{v}");
            v["id"].as_str().unwrap().to_owned()
        } else {
            let v = admin(
                server,
                Method::POST,
                "/admin/keys",
                Some(json!({"name": "readme"})),
            )
            .await;
            v["id"].as_str().unwrap().to_owned()
        };
        out = out.replace("3fJ9aQ2LmX0b", &id);
    }
    if out.contains("acc_Q1w2E3r4T5y6") {
        let email = format!("readme-{}@example.com", rand_suffix());
        let body = json!({"email": email, "password": "another long passphrase"});
        let v = admin(server, Method::POST, "/admin/accounts", Some(body)).await;
        out = out.replace("acc_Q1w2E3r4T5y6", v["id"].as_str().unwrap());
    }
    if out.contains("syr_...") {
        let (refresh, _) = sign_in_ada(server).await;
        out = out.replace("syr_...", &refresh);
    }
    if out.contains("<next_cursor>") {
        let v = admin(server, Method::GET, "/admin/audit?limit=1", None).await;
        out = out.replace("<next_cursor>", v["next_cursor"].as_str().unwrap());
    }
    out
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// (refresh token, access token) of a fresh sign-in as the README's account.
async fn sign_in_ada(server: &Server) -> (String, String) {
    let (s, _, v) = server
        .post("/auth/login")
        .json(json!({"email": ADA.0, "password": ADA.1}))
        .send()
        .await;
    assert_eq!(s, 200, "sign-in as {}: {v}", ADA.0);
    (
        v["refresh_token"].as_str().unwrap().to_owned(),
        v["access_token"].as_str().unwrap().to_owned(),
    )
}

/// Runs a shell block with the README's variables set; `curl` fails the block on a non-2xx answer.
fn run_block(server: &Server, block: &Block, script: &str, env: &[(String, String)]) {
    const PRELUDE: &str = r#"set -euo pipefail
curl() {
  local out code
  out=$(mktemp)
  code=$(command curl "$@" -o "$out" -w '%{http_code}') || { cat "$out"; rm -f "$out"; return 1; }
  cat "$out"; echo; rm -f "$out"
  case "$code" in 2*) ;; *) echo "HTTP $code from: curl $*" >&2; return 1 ;; esac
}
"#;
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_switchyard"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("{PRELUDE}{script}"))
        .current_dir(server.path())
        .envs(env.iter().cloned())
        .env("PATH", path)
        .env("SWITCHYARD_URL", server.url(""))
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "README.md:{} ({}): exit {:?}\n{script}\nstdout:\n{}\nstderr:\n{}",
        block.line,
        block.lang,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The README's variables for a block: `$SY`, `$ADMIN`, `$KEY` (a `pro` key of `team-a`), and once the
/// README's account exists, `$ACCESS` and `$ACCESS_OR_KEY`.
async fn readme_env(server: &Server, key: &str, block: &Block) -> Vec<(String, String)> {
    let mut env = vec![
        ("SY".to_owned(), server.url("")),
        ("ADMIN".to_owned(), ADMIN_TOKEN.to_owned()),
        ("SWITCHYARD_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
        (
            "SWITCHYARD_BILLING_WEBHOOK_SECRET".to_owned(),
            WEBHOOK_SECRET.to_owned(),
        ),
        ("KEY".to_owned(), key.to_owned()),
    ];
    if block.text.contains("$ACCESS") {
        let (_, access) = sign_in_ada(server).await;
        env.push(("ACCESS".to_owned(), access.clone()));
        env.push(("ACCESS_OR_KEY".to_owned(), access));
    }
    env
}

/// The OpenAI Python SDK example, run with the real SDK when it is installed (`.ci/run` installs it).
fn run_python_block(server: &Server, block: &Block) {
    let has_sdk = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "README.md:{}: the OpenAI Python SDK is not installed (pip install openai), and CI must run this example",
            block.line
        );
        eprintln!(
            "skipped README.md:{}: the OpenAI Python SDK is not installed",
            block.line
        );
        return;
    }
    let script = block.text.replace("http://127.0.0.1:8080", &server.url(""));
    let output = Command::new("python3")
        .args(["-c", &script])
        .env("NO_PROXY", "*")
        .env("no_proxy", "*")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().filter(|l| !l.trim().is_empty()).count() >= 2,
        "README.md:{}: exit {:?}\n{stdout}\n{}",
        block.line,
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

// Multi-threaded: the shell blocks run synchronously while the mock upstream answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_shell_block_of_the_readme_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("cargo test --locked --workspace --no-fail-fast"),
        ".ci/run must run the README's test command"
    );
    let (_mock, server) = readme_examples_server().await;
    let key = {
        let body = json!({"name": "readme", "account": "team-a", "tier": "pro"});
        admin(&server, Method::POST, "/admin/keys", Some(body)).await["key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (mut ran, mut python) = (0, 0);
    for block in blocks_outside_try_it(&readme) {
        match block.lang.as_str() {
            "sh" | "bash" => {}
            "python" => {
                run_python_block(&server, &block);
                python += 1;
                continue;
            }
            _ => continue,
        }
        if let Some((_, why)) = RUN_ELSEWHERE.iter().find(|(m, _)| block.text.contains(m)) {
            eprintln!("README.md:{}: run elsewhere: {why}", block.line);
            continue;
        }
        let mut script = String::new();
        for command in logical_commands(&block.text) {
            script.push_str(&resolve_placeholders(&server, &command).await);
        }
        let env = readme_env(&server, &key, &block).await;
        run_block(&server, &block, &script, &env);
        ran += 1;
    }
    assert!(
        ran >= 8 && python == 1,
        "ran {ran} shell blocks, {python} Python"
    );
}
