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

/// A file's module path in its crate (`src/http/v1.rs` -> `http::v1`, `src/http/mod.rs` -> `http`,
/// `src/lib.rs` -> the root, as an empty path).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.trim_end_matches(".rs") {
        "mod" | "lib" => {}
        name => parts.push(name.to_owned()),
    }
    parts
}

/// The module paths `code` (the file `me`) names through `crate::`, `super::` and `self::`, as far
/// as they go: `use super::{a, b::C}` names `<parent>::a` and `<parent>::b::C`.
fn named_paths(code: &str, me: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let parent: Vec<String> = if is_mod_file || me.is_empty() {
        me.iter()
            .take(me.len().saturating_sub(1))
            .cloned()
            .collect()
    } else {
        me[..me.len() - 1].to_vec()
    };
    // `self::` in a file is the file's own module; `super::` its parent (for `a/mod.rs`, module a,
    // the parent is the root).
    let roots: [(&str, Vec<String>); 3] = [
        ("crate::", Vec::new()),
        ("super::", parent),
        ("self::", me.to_vec()),
    ];
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (prefix, base) in &roots {
        for (i, _) in code.match_indices(prefix) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| ident(c) || c == '$' || c == ':') {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            // One path, or a `{...}` list of them (one level deep is enough for this code base).
            let tails: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list[..list.find('}').unwrap_or(list.len())]
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for tail in tails {
                let mut path = base.clone();
                for seg in tail.split("::") {
                    let name: String = seg.chars().take_while(|c| ident(*c)).collect();
                    if name.is_empty() || name.len() != seg.len() && !seg.starts_with(&name) {
                        break;
                    }
                    path.push(name.clone());
                    if name.len() != seg.len() {
                        break;
                    }
                }
                out.push(path);
            }
        }
    }
    out
}

/// Circles of files that import each other (`a.rs` -> `b.rs` -> `a.rs`), in one crate's `src`.
fn file_circles(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_path(src, f), f.clone()))
        .collect();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let me = module_path(src, file);
        let is_mod_file = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        for path in named_paths(&code_of(file), &me, is_mod_file) {
            // The longest prefix of the path that is a file: what the import reaches.
            let target = (1..=path.len()).rev().find_map(|k| modules.get(&path[..k]));
            if let Some(t) = target.filter(|t| *t != file) {
                edges.entry(file.clone()).or_default().insert(t.clone());
            }
        }
    }
    let rel = |p: &PathBuf| p.strip_prefix(src).unwrap().display().to_string();
    let mut circles = Vec::new();
    for (a, targets) in &edges {
        for b in targets {
            // Two files naming each other; a longer loop is rare enough to leave to review. A
            // folder's `mod.rs` and its own files are one module split up (the type there, its
            // methods here), not a circle.
            let (ma, mb) = (module_path(src, a), module_path(src, b));
            let parent_and_child = |p: &[String], c: &[String]| {
                c.len() == p.len() + 1 && c.starts_with(p) && !p.is_empty()
            };
            if parent_and_child(&ma, &mb) || parent_and_child(&mb, &ma) {
                continue;
            }
            if edges.get(b).is_some_and(|t| t.contains(a)) && a < b {
                circles.push(format!("{} <-> {}", rel(a), rel(b)));
            }
        }
    }
    circles
}

/// No two files import each other, in the server's crate or the actors': a circle of files is one
/// concern split in two, or two concerns tangled.
#[test]
fn no_two_files_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [root.join("src"), root.join("actors/src")] {
        let circles = file_circles(&src);
        assert!(
            circles.is_empty(),
            "files importing each other in {}: {circles:?}",
            src.display()
        );
    }
}

#[test]
fn the_file_reader_resolves_super_self_and_lists() {
    let me = ["config".to_owned(), "validate".to_owned()];
    let paths = named_paths(
        "use super::{report::Report, values};\nuse crate::wire::sse::SseFramer;\nuse self::state::x;",
        &me,
        false,
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "wire::sse::SseFramer",
            "config::report::Report",
            "config::values",
            "config::validate::state::x"
        ]
    );
}
