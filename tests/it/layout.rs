//! The layout's floors, read from the code's own imports: every `crate::` path in `src/` names a
//! module, and a module may only import from a floor below its own (or from itself). Files of
//! different folders never import each other in a circle. Tests (`#[cfg(test)]` and after) are left
//! out, as they may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The floors, lowest first. A module imports only from floors below its own.
const FLOORS: &[&[&str]] = &[
    &["wire"],
    &["error", "metrics"],
    &["config"],
    &["shared"],
    &["auth", "upstream"],
    &["limits", "pins"],
    &["state", "readiness"],
    &["forward", "reload"],
    &["http"],
    &["lib", "main"],
];

fn floor_of(module: &str) -> usize {
    FLOORS
        .iter()
        .position(|f| f.contains(&module))
        .unwrap_or_else(|| {
            panic!("src/{module} is on no floor: add it to FLOORS in tests/it/layout.rs")
        })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/http/v1.rs` -> `http`, `src/lib.rs` -> `lib`).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The code before its tests.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The top-level modules named by `crate::x` paths in `code`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_goes_down_a_floor() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let me = top_module(&src, file);
        let mine = floor_of(&me);
        for target in crate_imports(&code_of(file)) {
            if target == me {
                continue;
            }
            if floor_of(&target) >= mine {
                wrong.push(format!(
                    "{} ({me}, floor {mine}) imports crate::{target} (floor {})",
                    file.strip_prefix(&src).unwrap().display(),
                    floor_of(&target)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that go up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_floor_test_sees_an_upward_import() {
    // The reader itself: a lower floor naming a higher one is found.
    let imports = crate_imports("use crate::http::extract;\nlet x = $crate::forward::Proxy;");
    assert_eq!(imports, BTreeSet::from(["http".to_owned()]));
    assert!(floor_of("wire") < floor_of("http"));
}

/// Every module's file-level imports of other top-level modules: no two modules import each other.
#[test]
fn no_two_modules_import_each_other() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = top_module(&src, file);
        let targets = crate_imports(&code_of(file));
        edges
            .entry(me.clone())
            .or_default()
            .extend(targets.into_iter().filter(|t| *t != me));
    }
    let mut circles = Vec::new();
    for (a, targets) in &edges {
        for b in targets {
            if edges.get(b).is_some_and(|t| t.contains(a)) && a < b {
                circles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "modules importing each other: {circles:?}"
    );
}
