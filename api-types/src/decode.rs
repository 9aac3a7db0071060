//! Strict decoding of users' objects from JSON and YAML, reporting every wrong type and unknown field with its path.
//!
//! Decoding goes through `serde_json::Value`, so JSON and YAML report problems the same way:
//! type errors name the field (`spec.replicas: invalid type: string "x", expected i32`),
//! unknown fields are listed with their paths, and YAML syntax errors carry line and column.
//! After a type error the offending field is set aside and decoding tries again, so one
//! pass reports several problems.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::meta::TypeMeta;
use crate::resource::Resource;

/// What to do with fields the type does not know (Kubernetes' `fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FieldValidation {
    /// Unknown fields are errors (the default).
    #[default]
    Strict,
    /// Unknown fields are dropped and reported as warnings.
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the query parameter's value (`Strict`, `Warn`, `Ignore`; empty is Strict).
    pub fn parse(value: &str) -> Option<FieldValidation> {
        match value {
            "" | "Strict" => Some(FieldValidation::Strict),
            "Warn" => Some(FieldValidation::Warn),
            "Ignore" => Some(FieldValidation::Ignore),
            _ => None,
        }
    }
}

/// What kind of problem a [`DecodeProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeProblemKind {
    /// A field the type does not have.
    UnknownField,
    /// A value of the wrong type or shape.
    InvalidValue,
    /// `apiVersion` or `kind` names another kind.
    WrongKind,
}

/// One problem found while decoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecodeProblem {
    /// The field's path, e.g. `spec.env[0].name`; empty for the whole object.
    pub path: String,
    /// What kind of problem.
    pub kind: DecodeProblemKind,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DecodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DecodeProblemKind::UnknownField => write!(f, "unknown field {:?}", self.path),
            _ if self.path.is_empty() => f.write_str(&self.message),
            _ => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Why an object could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The text is not YAML.
    #[error("YAML syntax error at line {line}, column {column}: {message}")]
    Yaml {
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What the parser said.
        message: String,
    },
    /// The text is not JSON.
    #[error("JSON syntax error at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The document parsed, but does not fit the type.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<DecodeProblem>),
    /// A problem in one document of several.
    #[error("document {index}: {source}")]
    Document {
        /// The document's 0-based position among the non-empty documents.
        index: usize,
        /// The problem.
        #[source]
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    /// This error, said to be in document `index`.
    pub fn in_document(self, index: usize) -> DecodeError {
        DecodeError::Document {
            index,
            source: Box::new(self),
        }
    }

    /// The problems, when the document parsed but did not fit.
    pub fn problems(&self) -> &[DecodeProblem] {
        match self {
            DecodeError::Invalid(problems) => problems,
            DecodeError::Document { source, .. } => source.problems(),
            _ => &[],
        }
    }
}

fn render_problems(problems: &[DecodeProblem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let list: Vec<String> = many.iter().map(|p| p.to_string()).collect();
            format!("{} problems: {}", many.len(), list.join("; "))
        }
    }
}

/// A decoded object and the warnings decoding produced (unknown fields under
/// [`FieldValidation::Warn`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<T> {
    /// The object.
    pub object: T,
    /// Warnings, e.g. `unknown field "spec.foo"`.
    pub warnings: Vec<String>,
}

/// How many times decoding sets a bad field aside and tries again.
const MAX_ATTEMPTS: usize = 64;

fn ignored_path(path: &serde_ignored::Path<'_>, out: &mut String) {
    match path {
        serde_ignored::Path::Root => {}
        serde_ignored::Path::Seq { parent, index } => {
            ignored_path(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        serde_ignored::Path::Map { parent, key } => {
            ignored_path(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent, out),
    }
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key }
            | serde_path_to_error::Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Removes the innermost object field on `path` from `value`, so that decoding can go on
/// without it. Returns false when nothing could be removed.
fn set_aside(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    let segments: Vec<&serde_path_to_error::Segment> = path.iter().collect();
    let Some(last_map) = segments
        .iter()
        .rposition(|s| matches!(s, serde_path_to_error::Segment::Map { .. }))
    else {
        return false;
    };
    let mut current = value;
    for segment in &segments[..last_map] {
        let next = match segment {
            serde_path_to_error::Segment::Map { key } => current.get_mut(key.as_str()),
            serde_path_to_error::Segment::Seq { index } => current.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => return false,
        }
    }
    match (segments[last_map], current.as_object_mut()) {
        (serde_path_to_error::Segment::Map { key }, Some(object)) => object.remove(key).is_some(),
        _ => false,
    }
}

/// Decodes any type from a JSON value, collecting every type error it can reach and every
/// unknown field, and treating unknown fields as `mode` says.
pub fn decode_value<T: DeserializeOwned>(
    mut value: Value,
    mode: FieldValidation,
) -> Result<Decoded<T>, DecodeError> {
    let mut problems = Vec::new();
    let mut unknown = BTreeSet::new();
    let mut decoded = None;
    for _ in 0..MAX_ATTEMPTS {
        let mut callback = |path: serde_ignored::Path<'_>| {
            let mut rendered = String::new();
            ignored_path(&path, &mut rendered);
            unknown.insert(rendered);
        };
        let tracked = serde_ignored::Deserializer::new(&value, &mut callback);
        match serde_path_to_error::deserialize::<_, T>(tracked) {
            Ok(object) => {
                decoded = Some(object);
                break;
            }
            Err(err) => {
                let path = error_path(err.path());
                let removed = set_aside(&mut value, err.path());
                problems.push(DecodeProblem {
                    path,
                    kind: DecodeProblemKind::InvalidValue,
                    message: err.into_inner().to_string(),
                });
                if !removed {
                    break;
                }
            }
        }
    }
    // Value maps need not keep document order; sorting keeps reports stable.
    problems.sort_by(|a, b| a.path.cmp(&b.path));
    let mut warnings = Vec::new();
    for path in unknown {
        let problem = DecodeProblem {
            path,
            kind: DecodeProblemKind::UnknownField,
            message: "unknown field".to_string(),
        };
        match mode {
            FieldValidation::Strict => problems.push(problem),
            FieldValidation::Warn => warnings.push(problem.to_string()),
            FieldValidation::Ignore => {}
        }
    }
    match decoded {
        Some(object) if problems.is_empty() => Ok(Decoded { object, warnings }),
        _ => Err(DecodeError::Invalid(problems)),
    }
}

fn kind_problems<K: Resource>(value: &Value) -> Vec<DecodeProblem> {
    let mut problems = Vec::new();
    let tm = TypeMeta::of(value);
    let expected_version = K::api_version();
    if value.get("apiVersion").is_some() && tm.api_version != expected_version {
        problems.push(DecodeProblem {
            path: "apiVersion".into(),
            kind: DecodeProblemKind::WrongKind,
            message: format!("expected {expected_version:?}, got {:?}", tm.api_version),
        });
    }
    if value.get("kind").is_some() && tm.kind != K::KIND {
        problems.push(DecodeProblem {
            path: "kind".into(),
            kind: DecodeProblemKind::WrongKind,
            message: format!("expected {:?}, got {:?}", K::KIND, tm.kind),
        });
    }
    problems
}

/// Decodes kind `K` from a JSON value, checking `apiVersion` and `kind` when present and
/// treating unknown fields as `mode` says.
pub fn from_json_value_with<K: Resource>(
    value: Value,
    mode: FieldValidation,
) -> Result<Decoded<K>, DecodeError> {
    let mut problems = kind_problems::<K>(&value);
    match decode_value::<K>(value, mode) {
        Ok(decoded) if problems.is_empty() => Ok(decoded),
        Ok(_) => Err(DecodeError::Invalid(problems)),
        Err(DecodeError::Invalid(more)) => {
            problems.extend(more);
            Err(DecodeError::Invalid(problems))
        }
        Err(other) => Err(other),
    }
}

/// Decodes kind `K` strictly from a JSON value: wrong types, unknown fields and a wrong
/// `apiVersion`/`kind` are all errors, reported together.
pub fn from_json_value<K: Resource>(value: Value) -> Result<K, DecodeError> {
    from_json_value_with::<K>(value, FieldValidation::Strict).map(|d| d.object)
}

/// Parses JSON text into a value, with the line and column of a syntax error.
pub fn json_str_to_value(text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// Decodes kind `K` strictly from JSON text.
pub fn from_json_str<K: Resource>(text: &str) -> Result<K, DecodeError> {
    from_json_value(json_str_to_value(text)?)
}

fn yaml_error(e: &serde_saphyr::Error) -> DecodeError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let rendered = e.without_snippet().to_string();
    let mut message = rendered.lines().next().unwrap_or_default().to_string();
    // The location is reported separately; so is the fix for duplicate keys.
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    if let Some(at) = message.find(", set DuplicateKeyPolicy") {
        message.truncate(at);
    }
    DecodeError::Yaml {
        line,
        column,
        message,
    }
}

/// At most this many parser events replayed from aliases in one document stream: a
/// "billion laughs" body of a few KiB would otherwise expand to millions of values.
pub const MAX_YAML_ALIAS_EVENTS: usize = 100_000;

/// YAML 1.2 core booleans only: `n`, `no`, `on` and `yes` stay strings (a name `n` must not
/// turn into `false`); duplicate keys are errors; alias expansion is bounded.
fn yaml_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_YAML_ALIAS_EVENTS;
    alias_limits.max_replay_stack_depth = 16;
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        alias_limits: alias_limits,
    }
}

/// Parses one YAML document into a JSON value, with the line and column of a syntax error.
pub fn yaml_str_to_value(text: &str) -> Result<Value, DecodeError> {
    serde_saphyr::from_str_with_options::<Value>(text, yaml_options()).map_err(|e| yaml_error(&e))
}

/// Decodes kind `K` strictly from one YAML document.
pub fn from_yaml_str<K: Resource>(text: &str) -> Result<K, DecodeError> {
    from_json_value(yaml_str_to_value(text)?)
}

/// One document of a multi-document YAML stream.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlDocument {
    /// Its 0-based position among the stream's non-empty documents.
    pub index: usize,
    /// Its content.
    pub value: Value,
}

/// Splits a YAML stream (`---`-separated) into its non-empty documents, as JSON values.
pub fn yaml_documents(text: &str) -> Result<Vec<YamlDocument>, DecodeError> {
    let values: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| yaml_error(&e))?;
    Ok(values
        .into_iter()
        .filter(|v| !v.is_null())
        .enumerate()
        .map(|(index, value)| YamlDocument { index, value })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kinds::{Job, Task};

    #[test]
    fn type_errors_name_the_path() {
        let err =
            from_json_value::<Job>(serde_json::json!({"spec": {"replicas": "x"}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.replicas: invalid type: string \"x\", expected i32"
        );
        let err = from_yaml_str::<Task>("spec:\n  env:\n  - name: 3\n").unwrap_err();
        assert_eq!(err.problems()[0].path, "spec.env[0].name");
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn several_problems_at_once() {
        let value = serde_json::json!({
            "apiVersion": "loom.dev/v1",
            "kind": "Job",
            "metadata": {"name": "j", "labels": {"a": 1}, "colour": "red"},
            "spec": {
                "replicas": "three",
                "parallelism": -1.5,
                "template": {"spec": {"image": "x", "driver": "docker", "command": ["a", 2], "imagePullPolicy": "Always"}},
                "killed": "yes"
            }
        });
        let err = from_json_value::<Job>(value).unwrap_err();
        let rendered: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            rendered,
            vec![
                "metadata.labels.a: invalid type: integer `1`, expected a string",
                "spec.killed: invalid type: string \"yes\", expected a boolean",
                "spec.parallelism: invalid type: floating point `-1.5`, expected i32",
                "spec.replicas: invalid type: string \"three\", expected i32",
                "spec.template.spec.command[1]: invalid type: integer `2`, expected a string",
                "spec.template.spec.driver: unknown variant `docker`, expected one of `container`, `exec`, `raw`",
                "unknown field \"metadata.colour\"",
                "unknown field \"spec.template.spec.imagePullPolicy\"",
            ]
        );
        assert!(
            err.to_string()
                .starts_with("8 problems: metadata.labels.a:")
        );
    }

    #[test]
    fn unknown_fields_by_mode() {
        let value = serde_json::json!({"kind": "Task", "metadata": {"name": "t"}, "spec": {"image": "x", "imagee": "y", "env": [{"name": "A", "vaule": "1"}]}});
        let err = from_json_value::<Task>(value.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 problems: unknown field \"spec.env[0].vaule\"; unknown field \"spec.imagee\""
        );
        let warned = from_json_value_with::<Task>(value.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(warned.object.spec.image, "x");
        assert_eq!(
            warned.warnings,
            vec![
                "unknown field \"spec.env[0].vaule\"",
                "unknown field \"spec.imagee\""
            ]
        );
        let ignored = from_json_value_with::<Task>(value, FieldValidation::Ignore).unwrap();
        assert!(ignored.warnings.is_empty());
        assert_eq!(FieldValidation::parse("Warn"), Some(FieldValidation::Warn));
        assert_eq!(FieldValidation::parse("warn"), None);
    }

    #[test]
    fn wrong_kind() {
        let err =
            from_yaml_str::<Task>("apiVersion: loom.dev/v2\nkind: Job\nmetadata: {name: x}\n")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 problems: apiVersion: expected \"loom.dev/v1\", got \"loom.dev/v2\"; kind: expected \"Task\", got \"Job\""
        );
        let err = from_json_value::<Task>(serde_json::json!("x")).unwrap_err();
        assert_eq!(err.problems()[0].path, "");
        assert!(err.to_string().contains("expected struct Task"), "{err}");
    }

    #[test]
    fn yaml_syntax_errors_have_line_and_column() {
        let err = from_yaml_str::<Task>("metadata:\n  name: a\n  labels: [x\n").unwrap_err();
        match &err {
            DecodeError::Yaml { line, column, .. } => {
                assert!(*line >= 3, "{err}");
                assert!(*column >= 1, "{err}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().starts_with("YAML syntax error at line "),
            "{err}"
        );
        let err = from_yaml_str::<Task>("a: b\n c: d\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "YAML syntax error at line 2, column 3: mapping values are not allowed in this context"
        );
        let err = from_json_str::<Task>("{\"metadata\": }").unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Json {
                    line: 1,
                    column: 14,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn yaml_alias_bombs_are_refused() {
        // Five levels of ten aliases each, then two more: some 350,000 replayed
        // parser events from 300 bytes (serde-saphyr's own default allows 1,000,000).
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..5 {
            let prev = format!("*a{}", i - 1);
            let items = [prev.as_str(); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{items}]\n"));
        }
        text.push_str("a5: [*a4, *a4]\n");
        let started = std::time::Instant::now();
        let err = yaml_str_to_value(&text).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(err.to_string().contains("alias"), "{err}");
        // A modest use of aliases still works.
        let value = yaml_str_to_value("base: &b {x: 1}\nuses: [*b, *b, *b]\n").unwrap();
        assert_eq!(value["uses"][2]["x"], 1);
    }

    #[test]
    fn yaml_scalars_follow_yaml_1_2() {
        let task: Task =
            from_yaml_str("metadata:\n  name: n\n  labels: {a: yes, b: on, c: 'true'}\n").unwrap();
        assert_eq!(task.metadata.name, "n");
        assert_eq!(task.metadata.labels["a"], "yes");
        assert_eq!(task.metadata.labels["b"], "on");
        let err = from_yaml_str::<Job>("spec:\n  killed: yes\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.killed: invalid type: string \"yes\", expected a boolean"
        );
        let err = from_yaml_str::<Task>("metadata:\n  name: a\n  name: b\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "YAML syntax error at line 3, column 3: duplicate mapping key: name"
        );
    }

    #[test]
    fn multi_document_yaml() {
        let text = "---\napiVersion: loom.dev/v1\nkind: Task\nmetadata: {name: a}\n---\n# nothing\n---\nkind: Job\nmetadata:\n  name: b\n";
        let docs = yaml_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 0);
        assert_eq!(docs[1].index, 1);
        assert_eq!(TypeMeta::of(&docs[1].value).kind, "Job");
        let job: Job = from_json_value(docs[1].value.clone()).unwrap();
        assert_eq!(job.metadata.name, "b");
        let err = yaml_documents("a: 1\n---\nb: [\n").unwrap_err();
        assert!(matches!(err, DecodeError::Yaml { line: 3.., .. }), "{err}");
        let wrapped = from_json_value::<Task>(serde_json::json!({"spec": 1}))
            .unwrap_err()
            .in_document(3);
        assert!(
            wrapped
                .to_string()
                .starts_with("document 3: spec: invalid type"),
            "{wrapped}"
        );
        assert_eq!(wrapped.problems().len(), 1);
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for text in [
            "",
            "~",
            "[",
            "{",
            ":",
            "- - - -",
            "a: &x [*x]",
            "? [a]\n: b",
            "!!binary x",
            "\t",
            "a: !!int x",
            "metadata: {name: [1, {2: 3}]}",
            "spec: {resources: {cpu: 1.5e400}}",
        ] {
            let _ = from_yaml_str::<Task>(text);
            let _ = yaml_documents(text);
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let _ = from_yaml_str::<Task>(&deep);
        let _ = from_json_str::<Task>(&deep);
    }
}
