//! Loading profiles.yaml, stage 1: YAML with positions -> the raw types, then [`validate`] for the
//! validated [`Config`].
//!
//! Every problem is reported at once, each as `FILE:LINE:COLUMN: key.path: message`. Only a YAML
//! syntax error stops the load early (there is no tree to check further); unknown keys and values
//! of the wrong YAML type are collected one by one, each taken out of the tree, and the rest is
//! still checked. Problems under a value taken out are not reported: they would only repeat it.

use std::path::Path;

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{LoadError, LoaderOptions, Marker, Node, Span};

use super::raw::RawConfig;
use super::report::{ConfigError, ConfigErrors, EnvUse, Report};
use super::validate::validate;
use super::Config;

/// Reads and validates the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_str(path, &read(path)?)
}

/// Validates `yaml`; `source_name` is the file name used in messages and kept as [`Config::source`].
pub fn load_str(source_name: &Path, yaml: &str) -> Result<Config, ConfigErrors> {
    load(source_name, yaml).map(|(config, _)| config)
}

/// A configuration that loaded, with what will not work in the current environment.
#[derive(Debug, Clone)]
pub struct Checked {
    /// As [`load_file`] returns it.
    pub config: Config,
    /// Valid settings that will not work as things stand (a profile whose key variable is unset),
    /// in file order and in the same form as errors. Only `switchyard check` asks for them: `serve`
    /// reports the state of each profile itself.
    pub warnings: Vec<ConfigError>,
}

/// [`load_file`], and the warnings about the environment variables the file names.
pub fn check_file(path: &Path) -> Result<Checked, ConfigErrors> {
    check_str(path, &read(path)?, |name| std::env::var(name).ok())
}

/// [`check_file`] on text, with `env` for the environment (a variable's value, `None` if unset).
pub(super) fn check_str(
    source_name: &Path,
    yaml: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Checked, ConfigErrors> {
    let (config, env_uses) = load(source_name, yaml)?;
    let warnings = env_uses
        .iter()
        .filter_map(|u| u.warning(env(u.variable()).as_deref()))
        .collect();
    Ok(Checked { config, warnings })
}

/// The file's text, or the one error saying why it cannot be read.
fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::unreadable(path, format!("cannot read: {e}")))
}

/// Both stages: the validated config and the environment variables it relies on.
fn load(source_name: &Path, yaml: &str) -> Result<(Config, Vec<EnvUse>), ConfigErrors> {
    let mut report = Report::new(source_name);
    let config = parse(&mut report, yaml).map(|raw| validate(&mut report, source_name, raw));
    report.finish(config)
}

/// Parses the YAML and deserializes it, recording every unknown key and every value of the wrong
/// type: each one found is reported, taken out of the tree and deserialization retried, so that the
/// rest of the file is still checked. `None` when nothing more can be checked.
fn parse(report: &mut Report, yaml: &str) -> Option<RawConfig> {
    // Some Windows editors start files with a byte-order mark; it is not part of the first key.
    let yaml = yaml.strip_prefix('\u{feff}').unwrap_or(yaml);
    if let Some(line) = second_document(yaml) {
        let message = "only one YAML document is allowed (remove this `---`)";
        report.at(&Span::new_start(Marker::new(0, 0, line, 1)), "", message);
        return None;
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let mut root = match marked_yaml::parse_yaml_with_options(0, yaml, options) {
        Ok(root) => root,
        Err(e) => {
            load_error(report, e);
            return None;
        }
    };
    anchor_mappings_at_first_key(&mut root);
    loop {
        let err = match marked_yaml::from_node::<RawConfig>(&root) {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        let path = err.path().unwrap_or_default().to_owned();
        let found = locate(&root, &path);
        if let marked_yaml::Error::UnknownFieldError(field, expected, _) = &*err {
            let Some(key) = found.key() else {
                // Cannot find the key in the tree: report where serde says and stop.
                report.at(&error_span(&err), path, unknown_key(field, expected));
                return None;
            };
            report.at(&key, path, unknown_key(field, expected));
            let steps = found.steps;
            if !neutralise(&mut root, &steps) {
                return None;
            }
            continue;
        }
        if report.is_unreadable(&path) {
            // The stand-in put there for a wrong value does not fit either (already reported).
            return None;
        }
        let (span, message) = type_error(&err, &found);
        report.at(&span, path.as_str(), message);
        let Found {
            steps, complete, ..
        } = found;
        if !complete || !neutralise(&mut root, &steps) {
            return None;
        }
        report.mark_unreadable(path);
    }
}

/// Where and what a value of the wrong type is, in the file's terms.
fn type_error(err: &marked_yaml::FromNodeError, found: &Found<'_>) -> (Span, String) {
    match &**err {
        marked_yaml::Error::NotBoolean(span) => {
            let found = scalar_text(found);
            (*span, format!("expected true or false, found {found}"))
        }
        marked_yaml::Error::IntegerParseFailure(e, span) => {
            let message = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "number out of range".to_owned()
                }
                _ => format!("expected an integer, found {}", scalar_text(found)),
            };
            (*span, message)
        }
        marked_yaml::Error::FloatParseFailure(e, span) => {
            (*span, format!("expected a number ({e})"))
        }
        marked_yaml::Error::Other(message, _) => {
            // serde names Rust types; say what the file should contain instead.
            let message = message.replace("expected i64", "expected an integer");
            (*found.node.span(), message)
        }
        // `parse` deals with unknown keys before it asks here.
        marked_yaml::Error::UnknownFieldError(field, expected, span) => {
            (*span, unknown_key(field, expected))
        }
    }
}

/// The line of a `---` that starts a second document: the YAML loader would silently ignore
/// everything after it. A `---` in column 1 is always a document marker (block scalars are indented).
fn second_document(yaml: &str) -> Option<usize> {
    let mut content = false;
    for (i, line) in yaml.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker && content {
            return Some(i + 1);
        }
        let trimmed = line.trim_start();
        if !marker && !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%') {
            content = true;
        }
    }
    None
}

fn error_span(err: &marked_yaml::FromNodeError) -> Span {
    err.start_mark()
        .map_or_else(Span::new_blank, Span::new_start)
}

fn load_error(report: &mut Report, e: LoadError) {
    let (marker, message) = match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            m,
            "the top level must be a mapping (server:, routing:, models:, profiles: ...)"
                .to_owned(),
        ),
        LoadError::UnexpectedAnchor(m) => (m, "YAML anchors and aliases are not supported".into()),
        LoadError::MappingKeyMustBeScalar(m) => (m, "mapping keys must be plain scalars".into()),
        LoadError::UnexpectedTag(m) => (m, "YAML tags are not supported".into()),
        LoadError::ScanError(m, e) => (m, format!("invalid YAML: {}", e.info())),
        LoadError::DuplicateKey(dup) => {
            let first = dup.prev_key.span().start().map_or(0, |m| m.line());
            let message = format!(
                "duplicate key {:?} (first at line {first})",
                dup.key.as_str()
            );
            report.at(dup.key.span(), "", message);
            return;
        }
    };
    report.at(&Span::new_start(marker), "", message);
}

/// Where a rendered serde path (`profiles[1].headers.X-Title`) leads in the YAML tree.
struct Found<'a> {
    /// The deepest node reached.
    node: &'a Node,
    /// How it was reached from the root.
    steps: Vec<Step>,
    /// Whether the whole path was followed.
    complete: bool,
}

/// One step down the YAML tree.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Into the value of the mapping key at this position.
    Key(Span),
    /// Into a list entry.
    Index(usize),
}

impl Found<'_> {
    /// The key of the node found, when the whole path was followed and its last step went
    /// through a mapping.
    fn key(&self) -> Option<Span> {
        match self.steps.last() {
            Some(Step::Key(key)) if self.complete => Some(*key),
            _ => None,
        }
    }
}

/// Follows `path` from `root`. marked-yaml's own lookup stops at a `Spanned` struct, so we walk
/// the rendered path ourselves.
fn locate<'a>(root: &'a Node, path: &str) -> Found<'a> {
    let mut node = root;
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let child = after.split_once(']').and_then(|(index, tail)| {
                let index: usize = index.parse().ok()?;
                Some((node.as_sequence()?.get(index)?, index, tail))
            });
            let Some((child, index, tail)) = child else {
                break;
            };
            node = child;
            steps.push(Step::Index(index));
            rest = tail;
        } else {
            // A key may itself contain '.' or '[': take the longest key ending where a segment ends.
            let Some(map) = node.as_mapping() else { break };
            let child = map
                .iter()
                .filter(|(k, _)| {
                    rest.strip_prefix(k.as_str())
                        .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']))
                })
                .max_by_key(|(k, _)| k.as_str().len());
            let Some((k, child)) = child else { break };
            node = child;
            steps.push(Step::Key(*k.span()));
            rest = &rest[k.as_str().len()..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Found {
        node,
        steps,
        complete: rest.is_empty(),
    }
}

/// The node `steps` lead to from `node`, to change it.
fn node_mut<'a>(mut node: &'a mut Node, steps: &[Step]) -> Option<&'a mut Node> {
    for step in steps {
        node = match (step, node) {
            (Step::Index(i), Node::Sequence(seq)) => seq.get_mut(*i)?,
            (Step::Key(key), Node::Mapping(map)) => {
                map.iter_mut()
                    .find(|(k, _)| k.span().start() == key.start())?
                    .1
            }
            _ => return None,
        };
    }
    Some(node)
}

/// Takes the node `steps` lead to out of the tree, so that deserializing can go on without it: a
/// mapping entry is removed (the key then reads as absent), a list entry becomes an empty scalar
/// (which reads as an empty mapping or string) so that the entries after it keep their index.
/// False when there is no such node.
fn neutralise(root: &mut Node, steps: &[Step]) -> bool {
    let Some((last, parent)) = steps.split_last() else {
        return false;
    };
    match (last, node_mut(root, parent)) {
        (Step::Key(key), Some(Node::Mapping(map))) => {
            let hit = map
                .keys()
                .find(|k| k.span().start() == key.start())
                .cloned();
            hit.is_some_and(|hit| map.remove(&hit).is_some())
        }
        (Step::Index(i), Some(Node::Sequence(seq))) => match seq.get_mut(*i) {
            Some(entry) => {
                *entry = Node::Scalar(MarkedScalarNode::new_empty(*entry.span()));
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// The scalar a path leads to, quoted, for messages.
fn scalar_text(found: &Found<'_>) -> String {
    match found.node.as_scalar() {
        Some(s) => format!("{:?}", s.as_str()),
        None => "a mapping or list".to_owned(),
    }
}

/// The YAML parser marks a block mapping where the `:` after its first key is; a "missing key"
/// error reads better pointing at the first key itself, where the entry visibly starts.
fn anchor_mappings_at_first_key(node: &mut Node) {
    match node {
        Node::Mapping(map) => {
            if let Some(first) = map.keys().next().and_then(|k| k.span().start().copied()) {
                map.span_mut().set_start(Some(first));
            }
            map.values_mut().for_each(anchor_mappings_at_first_key);
        }
        Node::Sequence(seq) => seq.iter_mut().for_each(anchor_mappings_at_first_key),
        Node::Scalar(_) => {}
    }
}

fn unknown_key(field: &str, expected: &[&str]) -> String {
    if let Some(close) = expected
        .iter()
        .filter(|known| edit_distance(field, known) <= 2)
        .min_by_key(|known| edit_distance(field, known))
    {
        return format!("unknown key {field:?} (did you mean {close:?}?)");
    }
    if expected.is_empty() {
        return format!("unknown key {field:?}");
    }
    format!(
        "unknown key {field:?} (expected one of: {})",
        expected.join(", ")
    )
}

/// Levenshtein distance, for "did you mean" suggestions on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}
