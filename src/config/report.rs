//! The problems found in a configuration file, each `FILE:LINE:COLUMN: key.path: message`, and the
//! [`Report`] that collects them while the file is parsed and validated.

use std::fmt;
use std::path::{Path, PathBuf};

use marked_yaml::Span;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not inside the file (it could not be read).
    pub line: usize,
    /// 1-based; 0 when `line` is 0.
    pub column: usize,
    /// Key path of the offending node, e.g. `profiles[1].weight`; empty for YAML syntax errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// The one error of a file that could not be read at all (no position inside it).
    pub(super) fn unreadable(file: &Path, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message,
        }])
    }
}

/// Collects errors for one file.
pub(super) struct Report {
    file: PathBuf,
    errors: Vec<ConfigError>,
    /// Key paths whose value had the wrong YAML type and was taken out of the tree. A problem at
    /// or under one of them follows from that error (a required key now "missing", a stand-in
    /// value "empty"), so it is not reported again.
    unreadable: Vec<String>,
    /// The environment variables the file relies on; only `check` looks them up.
    env_uses: Vec<EnvUse>,
}

/// An environment variable the configuration relies on, and where the file names it.
pub(super) struct EnvUse {
    /// The position and key path; `message` says what happens while the variable is unusable.
    at: ConfigError,
    /// Empty for a warning that does not depend on the environment (see `Report::warn`).
    variable: String,
}

impl EnvUse {
    /// The warning for this use when `value` (the variable's value, `None` if unset) is unusable:
    /// unset or blank, as `serve` judges a credential.
    pub(super) fn warning(&self, value: Option<&str>) -> Option<ConfigError> {
        let (variable, consequence) = (&self.variable, &self.at.message);
        if variable.is_empty() {
            return Some(self.at.clone());
        }
        let message = match value {
            None => format!("{variable} is not set; {consequence} until it is"),
            Some(v) if v.trim().is_empty() => {
                format!("{variable} is empty; {consequence} until it is set")
            }
            Some(_) => return None,
        };
        Some(ConfigError {
            message,
            ..self.at.clone()
        })
    }

    /// The variable's name.
    pub(super) fn variable(&self) -> &str {
        &self.variable
    }
}

impl Report {
    /// An empty report for `file`, the name used in every message.
    pub(super) fn new(file: &Path) -> Self {
        Report {
            file: file.to_path_buf(),
            errors: Vec::new(),
            unreadable: Vec::new(),
            env_uses: Vec::new(),
        }
    }

    /// Records a problem at the start of `span`, unless `path` is at or under an unreadable value.
    pub(super) fn at(&mut self, span: &Span, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if self.is_unreadable(&path) {
            return;
        }
        let error = self.error(span, path, message.into());
        self.errors.push(error);
    }

    /// Records that the value at `span` names `variable`, without which `consequence` (e.g. "this
    /// profile will be skipped") happens.
    pub(super) fn needs_env(
        &mut self,
        span: &Span,
        path: String,
        variable: &str,
        consequence: &str,
    ) {
        let at = self.error(span, path, consequence.to_owned());
        self.env_uses.push(EnvUse {
            at,
            variable: variable.to_owned(),
        });
    }

    /// Records a valid setting that will not work as the file stands (`check` shows it with the
    /// environment's warnings; it needs no variable).
    pub(super) fn warn(&mut self, span: &Span, path: String, message: String) {
        let at = self.error(span, path, message);
        self.env_uses.push(EnvUse {
            at,
            variable: String::new(),
        });
    }

    fn error(&self, span: &Span, path: String, message: String) -> ConfigError {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            path,
            message,
        }
    }

    /// Notes that the value at `path` had the wrong type (already reported) and was left out.
    pub(super) fn mark_unreadable(&mut self, path: String) {
        self.unreadable.push(path);
    }

    /// Whether the value at `path`, or one holding it, had the wrong type: then what the
    /// validators see there is a stand-in, and a check that depends on it would only guess.
    pub(super) fn is_unreadable(&self, path: &str) -> bool {
        self.unreadable.iter().any(|bad| {
            path.strip_prefix(bad.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// How many problems were recorded so far: compare before and after a group of checks to tell
    /// whether it found any.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// `value` and the environment variables it relies on (in file order) when it exists and
    /// nothing was reported; otherwise every problem, in file order.
    pub(super) fn finish<T>(mut self, value: Option<T>) -> Result<(T, Vec<EnvUse>), ConfigErrors> {
        match value {
            Some(value) if self.errors.is_empty() => {
                self.env_uses.sort_by_key(|u| (u.at.line, u.at.column));
                Ok((value, self.env_uses))
            }
            _ => {
                // File order reads best; the checks themselves run section by section.
                self.errors.sort_by_key(|e| (e.line, e.column));
                Err(ConfigErrors(self.errors))
            }
        }
    }
}

/// The line `span` starts on (0 when it has no position), for "first defined at line N".
pub(super) fn line_of(span: &Span) -> usize {
    span.start().map_or(0, |m| m.line())
}
