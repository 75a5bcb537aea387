//! The README's "Try it in one minute" section, run as written: every command of its `sh` blocks,
//! against the real server started on the repository's `profiles.yaml` (which stands in for the
//! section's `cargo run --release -- serve` line), each expected to succeed (HTTP 2xx for curl).

use std::path::Path;
use std::process::Command;

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
