//! `switchyard check` run as a real process, against the bad-config fixtures and the example
//! profiles.yaml at the repository root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// Runs `switchyard check --config CONFIG` in `dir`; returns the exit code and stdout + stderr.
fn check(dir: &Path, config: &str) -> (Option<i32>, String) {
    let (code, stdout, stderr) = check_in_env(dir, config, &[]);
    (code, stdout + &stderr)
}

/// Runs `switchyard check --config CONFIG` in `dir` with `env` applied (`None` removes the
/// variable); returns the exit code, stdout and stderr.
fn check_in_env(
    dir: &Path,
    config: &str,
    env: &[(&str, Option<&str>)],
) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .current_dir(dir)
        .args(["check", "--config", config])
        // The flag must win, but do not let the caller's environment muddy the test.
        .env_remove("SWITCHYARD_CONFIG");
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run switchyard: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The variables the example profiles.yaml reads its upstream keys from.
const EXAMPLE_KEY_VARIABLES: [&str; 3] = ["OPENAI_API_KEY", "OPENROUTER_API_KEY", "GROQ_API_KEY"];

/// The output line that names `position` (`FILE:LINE:COLUMN`), if any.
fn line_at<'a>(output: &'a str, position: &str) -> Option<&'a str> {
    output.lines().find(|line| line.contains(position))
}

#[test]
fn unknown_keys_are_reported_with_position_and_key() {
    let (code, output) = check(&fixtures(), "unknown_key.yaml");
    assert_eq!(code, Some(1), "{output}");
    let line = line_at(&output, "unknown_key.yaml:3:3").unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("lisen"), "{line}");
    let line = line_at(&output, "unknown_key.yaml:11:5").unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("wieght"), "{line}");
}

#[test]
fn a_model_naming_an_undefined_profile_is_reported() {
    let (code, output) = check(&fixtures(), "undefined_profile.yaml");
    assert_eq!(code, Some(1), "{output}");
    let line =
        line_at(&output, "undefined_profile.yaml:3:22").unwrap_or_else(|| panic!("{output}"));
    assert!(line.contains("unknown profile \"nope\""), "{line}");
}

#[test]
fn a_path_given_on_the_command_line_is_the_one_in_messages() {
    let fixture = fixtures().join("undefined_profile.yaml");
    let (code, output) = check(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        fixture.to_str().unwrap(),
    );
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains(&format!("{}:3:22: ", fixture.display())),
        "{output}"
    );
}

#[test]
fn every_fixture_fails_with_its_golden_lines() {
    let dir = fixtures();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (code, output) = check(&dir, name);
        assert_eq!(code, Some(1), "{name}: {output}");
        // Exactly these lines: an extra one is a problem reported twice or a cascade.
        assert_eq!(
            output.lines().collect::<Vec<_>>(),
            expected.lines().collect::<Vec<_>>(),
            "{name}: output\n{output}"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn the_example_profiles_yaml_passes_with_a_one_line_summary() {
    let keys = EXAMPLE_KEY_VARIABLES.map(|name| (name, Some("sk-test")));
    let (code, stdout, stderr) = check_in_env(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "profiles.yaml",
        &keys,
    );
    let output = stdout + &stderr;
    assert_eq!(code, Some(0), "{output}");
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{output}");
    let summary = lines[0];
    assert!(summary.starts_with("OK"), "{summary}");
    assert!(summary.contains("profiles.yaml"), "{summary}");
    assert!(
        summary.contains(" profiles, ") && summary.contains(" models"),
        "{summary}"
    );
}

#[test]
fn a_missing_file_fails() {
    let (code, output) = check(&fixtures(), "no-such-file.yaml");
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("no-such-file.yaml"), "{output}");
}

#[test]
fn the_example_profiles_yaml_passes_with_a_warning_for_each_unset_key_variable() {
    let unset = EXAMPLE_KEY_VARIABLES.map(|name| (name, None));
    let (code, stdout, stderr) = check_in_env(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "profiles.yaml",
        &unset,
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), EXAMPLE_KEY_VARIABLES.len(), "{stderr}");
    for (line, name) in warnings.iter().zip(EXAMPLE_KEY_VARIABLES) {
        assert!(line.starts_with("profiles.yaml:"), "{line}");
        assert!(
            line.ends_with(&format!(
                ".api_key_env: {name} is not set; this profile will be skipped until it is"
            )),
            "{line}"
        );
    }
    assert!(
        stdout.starts_with("OK") && stdout.trim_end().ends_with("(3 warnings)"),
        "{stdout}"
    );
}

#[test]
fn every_warning_fixture_passes_with_its_golden_warnings() {
    let dir = fixtures().join("warnings");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        // The fixtures name SWITCHYARD_FIXTURE_* variables, which nothing sets.
        let (code, stdout, stderr) = check_in_env(&dir, name, &[]);
        assert_eq!(code, Some(0), "{name}: {stdout}{stderr}");
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            expected.lines().collect::<Vec<_>>(),
            "{name}: {stderr}"
        );
        assert!(stdout.starts_with("OK"), "{name}: {stdout}");
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn serve_reports_each_config_error_once() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(fixtures())
        .args(["serve", "--config", "multi_error.yaml", "--data-dir"])
        .arg(data.path())
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_LISTEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run switchyard: {e}"));
    // An invalid config must stop serve at once; never leave a server behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit on an invalid config");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let expected = std::fs::read_to_string(fixtures().join("multi_error.expected")).unwrap();
    for line in expected.lines() {
        // `FILE:LINE:COLUMN: key.path:` is the same in a text or a JSON log line (no quotes).
        let position = line.splitn(5, ": ").take(2).collect::<Vec<_>>().join(": ");
        let times = text.lines().filter(|l| l.contains(&position)).count();
        assert_eq!(times, 1, "{position} printed {times} times in\n{text}");
    }
}
