//! Label selectors (`app=web,tier in (a,b),!canary`), their requirements (also Task constraints), and field selectors.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names;

/// How a [`Requirement`] compares a label with its values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Operator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is present and equals the single value (`a=b`, `a==b`).
    Equals,
    /// The label is absent or differs from the single value (`a!=b`).
    NotEquals,
    /// The label is present, an integer, and greater than the single value.
    Gt,
    /// The label is present, an integer, and less than the single value.
    Lt,
}

impl Operator {
    /// The operator's name as written in JSON (`In`, `NotIn`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::Equals => "Equals",
            Operator::NotEquals => "NotEquals",
            Operator::Gt => "Gt",
            Operator::Lt => "Lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a requirement is not well formed (Kubernetes' `NewRequirement` rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    /// The key is not a qualified name.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// The rules it breaks.
        reason: String,
    },
    /// A value is not a valid label value.
    #[error("invalid label value {value:?}: {reason}")]
    InvalidValue {
        /// The value.
        value: String,
        /// The rules it breaks.
        reason: String,
    },
    /// `In`/`NotIn` without values.
    #[error("for 'in', 'notin' operators, values set can't be empty")]
    ValuesRequired,
    /// `=`, `!=`, `>` or `<` without exactly one value.
    #[error("for '{0}' operator, exactly one value is required")]
    ExactlyOneValue(Operator),
    /// `Exists`/`DoesNotExist` with values.
    #[error("values set must be empty for exists and does not exist")]
    ValuesForbidden,
    /// `Gt`/`Lt` with a value that is not an integer.
    #[error("for 'Gt', 'Lt' operators, the value must be an integer, not {0:?}")]
    NotAnInteger(String),
}

/// One condition on labels: `{key, operator, values}`. A selector is a conjunction of them;
/// a Task's `constraints` are requirements on node labels.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    #[serde(default)]
    pub key: String,
    /// How the label is compared.
    pub operator: Operator,
    /// The values: one or more for `In`/`NotIn`, none for `Exists`/`DoesNotExist`, exactly
    /// one for the others (an integer for `Gt`/`Lt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl Requirement {
    /// A checked requirement; `In`/`NotIn` values are sorted and deduplicated.
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Requirement, RequirementError> {
        let mut requirement = Requirement {
            key: key.into(),
            operator,
            values: values.into_iter().map(Into::into).collect(),
        };
        requirement.normalize();
        requirement.check()?;
        Ok(requirement)
    }

    fn normalize(&mut self) {
        if matches!(self.operator, Operator::In | Operator::NotIn) {
            self.values.sort();
            self.values.dedup();
        }
    }

    /// Checks the key, the values and their number against the operator.
    pub fn check(&self) -> Result<(), RequirementError> {
        let key_errors = names::is_label_key(&self.key);
        if !key_errors.is_empty() {
            return Err(RequirementError::InvalidKey {
                key: self.key.clone(),
                reason: key_errors.join("; "),
            });
        }
        match self.operator {
            Operator::In | Operator::NotIn => {
                if self.values.is_empty() {
                    return Err(RequirementError::ValuesRequired);
                }
            }
            Operator::Equals | Operator::NotEquals => {
                if self.values.len() != 1 {
                    return Err(RequirementError::ExactlyOneValue(self.operator));
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !self.values.is_empty() {
                    return Err(RequirementError::ValuesForbidden);
                }
            }
            Operator::Gt | Operator::Lt => {
                if self.values.len() != 1 {
                    return Err(RequirementError::ExactlyOneValue(self.operator));
                }
                let value = &self.values[0];
                if value.parse::<i64>().is_err() {
                    return Err(RequirementError::NotAnInteger(value.clone()));
                }
                return Ok(());
            }
        }
        for value in &self.values {
            let errs = names::is_label_value(value);
            if !errs.is_empty() {
                return Err(RequirementError::InvalidValue {
                    value: value.clone(),
                    reason: errs.join("; "),
                });
            }
        }
        Ok(())
    }

    /// Whether the labels satisfy the requirement. A malformed requirement (e.g. `Gt` with a
    /// non-integer) matches nothing rather than failing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals => {
                label.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotIn | Operator::NotEquals => {
                label.is_none_or(|v| !self.values.iter().any(|x| x == v))
            }
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(label), [bound]) = (label, self.values.as_slice()) else {
                    return false;
                };
                let (Ok(label), Ok(bound)) = (label.parse::<i64>(), bound.parse::<i64>()) else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    label > bound
                } else {
                    label < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.values.first().map(String::as_str).unwrap_or("");
        match self.operator {
            Operator::Exists => f.write_str(&self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::Equals => write!(f, "{}={first}", self.key),
            Operator::NotEquals => write!(f, "{}!={first}", self.key),
            Operator::Gt => write!(f, "{}>{first}", self.key),
            Operator::Lt => write!(f, "{}<{first}", self.key),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
        }
    }
}

/// Why a label selector string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?} at position {position}: {message}")]
pub struct SelectorError {
    /// The selector as given.
    pub input: String,
    /// The byte offset of the problem.
    pub position: usize,
    /// What is wrong there.
    pub message: String,
}

/// A label selector: requirements that must all hold. The empty selector matches everything.
///
/// Requirements are kept sorted (by key, then operator and values), so equal selectors
/// compare and print equal whatever order they were written in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// A selector from requirements, put in canonical order.
    pub fn new(requirements: impl IntoIterator<Item = Requirement>) -> Selector {
        let mut requirements: Vec<Requirement> = requirements
            .into_iter()
            .map(|mut r| {
                r.normalize();
                r
            })
            .collect();
        requirements.sort();
        Selector { requirements }
    }

    /// `key=value` for every entry of the map (Kubernetes' `SelectorFromSet`).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Selector {
        Selector::new(labels.iter().map(|(k, v)| Requirement {
            key: k.clone(),
            operator: Operator::Equals,
            values: vec![v.clone()],
        }))
    }

    /// Parses the Kubernetes selector syntax: comma-separated `a=b`, `a==b`, `a!=b`,
    /// `a in (x,y)`, `a notin (x,y)`, `a`, `!a`, `a>1`, `a<1`.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        Parser::new(input).parse()
    }

    /// The requirements, in canonical order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether there are no requirements (so everything matches).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether every requirement holds for the labels.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---- the label selector parser ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Not,
    NotEquals,
    Equals,
    DoubleEquals,
    Gt,
    Lt,
    OpenParen,
    CloseParen,
    Comma,
    In,
    NotIn,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Identifier(s) => format!("'{s}'"),
            Token::Not => "'!'".into(),
            Token::NotEquals => "'!='".into(),
            Token::Equals => "'='".into(),
            Token::DoubleEquals => "'=='".into(),
            Token::Gt => "'>'".into(),
            Token::Lt => "'<'".into(),
            Token::OpenParen => "'('".into(),
            Token::CloseParen => "')'".into(),
            Token::Comma => "','".into(),
            Token::In => "'in'".into(),
            Token::NotIn => "'notin'".into(),
            Token::End => "end of input".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | '>' | '<' | '(' | ')' | ',')
}

/// Splits the input into tokens with their byte offsets. `in` and `notin` are keywords where
/// an operator may stand; the parser turns them back into identifiers where a value is expected.
fn lex(input: &str) -> Vec<(usize, Token)> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let next_is_eq = matches!(chars.peek(), Some(&(_, '=')));
        let token = match c {
            '!' if next_is_eq => {
                chars.next();
                Token::NotEquals
            }
            '!' => Token::Not,
            '=' if next_is_eq => {
                chars.next();
                Token::DoubleEquals
            }
            '=' => Token::Equals,
            '>' => Token::Gt,
            '<' => Token::Lt,
            '(' => Token::OpenParen,
            ')' => Token::CloseParen,
            ',' => Token::Comma,
            _ => {
                let mut end = pos + c.len_utf8();
                while let Some(&(p, c)) = chars.peek() {
                    if c.is_whitespace() || is_special(c) {
                        break;
                    }
                    end = p + c.len_utf8();
                    chars.next();
                }
                match &input[pos..end] {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    word => Token::Identifier(word.to_string()),
                }
            }
        };
        tokens.push((pos, token));
    }
    tokens.push((input.len(), Token::End));
    tokens
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Token)>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Parser<'a> {
        Parser {
            input,
            tokens: lex(input),
            pos: 0,
        }
    }

    fn peek(&self) -> (usize, &Token) {
        match self.tokens.get(self.pos) {
            Some((p, t)) => (*p, t),
            None => (self.input.len(), &Token::End),
        }
    }

    fn next(&mut self) -> (usize, Token) {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or((self.input.len(), Token::End));
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        token
    }

    /// The next token read as a value: the keywords `in`/`notin` are plain words there.
    fn next_value(&mut self) -> (usize, Token) {
        match self.next() {
            (p, Token::In) => (p, Token::Identifier("in".into())),
            (p, Token::NotIn) => (p, Token::Identifier("notin".into())),
            other => other,
        }
    }

    fn error(&self, position: usize, message: impl Into<String>) -> SelectorError {
        SelectorError {
            input: self.input.to_string(),
            position,
            message: message.into(),
        }
    }

    fn unexpected(&self, position: usize, found: &Token, expected: &str) -> SelectorError {
        self.error(
            position,
            format!("found {}, expected {expected}", found.describe()),
        )
    }

    fn parse(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().1 == &Token::End {
            return Ok(Selector::everything());
        }
        loop {
            requirements.push(self.parse_requirement()?);
            match self.next() {
                (_, Token::End) => break,
                (_, Token::Comma) => continue,
                (p, t) => return Err(self.unexpected(p, &t, "',' or end of input")),
            }
        }
        Ok(Selector::new(requirements))
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (start, token) = self.next();
        let (key, negated) = match token {
            Token::Not => match self.next() {
                (_, Token::Identifier(key)) => (key, true),
                (p, t) => return Err(self.unexpected(p, &t, "a label key after '!'")),
            },
            Token::Identifier(key) => (key, false),
            t => return Err(self.unexpected(start, &t, "'!' or a label key")),
        };
        let key_pos = if negated {
            self.tokens
                .get(self.pos.saturating_sub(1))
                .map(|(p, _)| *p)
                .unwrap_or(start)
        } else {
            start
        };
        let key_errors = names::is_label_key(&key);
        if !key_errors.is_empty() {
            return Err(self.error(
                key_pos,
                format!("invalid label key {key:?}: {}", key_errors.join("; ")),
            ));
        }
        if negated {
            return Ok(Requirement {
                key,
                operator: Operator::DoesNotExist,
                values: Vec::new(),
            });
        }
        let (op_pos, op_token) = {
            let (p, t) = self.peek();
            (p, t.clone())
        };
        let (operator, values) = match op_token {
            Token::End | Token::Comma => (Operator::Exists, Vec::new()),
            Token::Equals | Token::DoubleEquals | Token::NotEquals => {
                self.next();
                let operator = if op_token == Token::NotEquals {
                    Operator::NotEquals
                } else {
                    Operator::Equals
                };
                let value = match self.peek() {
                    (_, Token::End | Token::Comma) => (op_pos, String::new()),
                    _ => match self.next_value() {
                        (p, Token::Identifier(v)) => (p, v),
                        (p, t) => return Err(self.unexpected(p, &t, "a label value")),
                    },
                };
                self.check_value(value.0, &value.1)?;
                (operator, vec![value.1])
            }
            Token::Gt | Token::Lt => {
                self.next();
                let operator = if op_token == Token::Gt {
                    Operator::Gt
                } else {
                    Operator::Lt
                };
                match self.next_value() {
                    (p, Token::Identifier(v)) => {
                        if v.parse::<i64>().is_err() {
                            return Err(self.error(
                                p,
                                format!("for 'Gt', 'Lt' operators, the value must be an integer, not {v:?}"),
                            ));
                        }
                        (operator, vec![v])
                    }
                    (p, t) => return Err(self.unexpected(p, &t, "an integer")),
                }
            }
            Token::In | Token::NotIn => {
                self.next();
                let operator = if op_token == Token::In {
                    Operator::In
                } else {
                    Operator::NotIn
                };
                (operator, self.parse_value_set()?)
            }
            t => {
                return Err(self.unexpected(
                    op_pos,
                    &t,
                    "'=', '==', '!=', '>', '<', 'in', 'notin', ',' or end of input",
                ));
            }
        };
        let mut requirement = Requirement {
            key,
            operator,
            values,
        };
        requirement.normalize();
        Ok(requirement)
    }

    fn check_value(&self, position: usize, value: &str) -> Result<(), SelectorError> {
        let errs = names::is_label_value(value);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(self.error(
                position,
                format!("invalid label value {value:?}: {}", errs.join("; ")),
            ))
        }
    }

    /// `( value [, value]* )`; as in Kubernetes, an empty slot is the empty value.
    fn parse_value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            (_, Token::OpenParen) => {}
            (p, t) => return Err(self.unexpected(p, &t, "'(' after 'in' or 'notin'")),
        }
        let mut values = Vec::new();
        loop {
            let (p, token) = self.next_value();
            let value = match token {
                Token::Identifier(v) => {
                    self.check_value(p, &v)?;
                    match self.next() {
                        (_, Token::Comma) => {
                            values.push(v);
                            continue;
                        }
                        (_, Token::CloseParen) => {
                            values.push(v);
                            break;
                        }
                        (p, t) => return Err(self.unexpected(p, &t, "',' or ')'")),
                    }
                }
                Token::Comma => String::new(),
                Token::CloseParen => {
                    values.push(String::new());
                    break;
                }
                t => return Err(self.unexpected(p, &t, "a label value, ',' or ')'")),
            };
            values.push(value);
        }
        Ok(values)
    }
}

// ---- field selectors ----

/// How a [`FieldTerm`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldOperator {
    /// `=` or `==`.
    Equals,
    /// `!=`.
    NotEquals,
}

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldTerm {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The comparison.
    pub operator: FieldOperator,
    /// The value (unescaped).
    pub value: String,
}

/// Why a field selector is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// A term has no `=`, `==` or `!=`.
    #[error(
        "invalid field selector {input:?}: term {term:?} is not of the form field=value, field==value or field!=value"
    )]
    InvalidTerm {
        /// The whole selector.
        input: String,
        /// The offending term.
        term: String,
    },
    /// A term has an empty field name.
    #[error("invalid field selector {input:?}: term {term:?} has no field name")]
    EmptyField {
        /// The whole selector.
        input: String,
        /// The offending term.
        term: String,
    },
    /// A value has a backslash that escapes nothing escapable.
    #[error(
        "invalid field selector {input:?}: invalid escape sequence in value {value:?} (only \\\\, \\, and \\= may be escaped)"
    )]
    InvalidEscape {
        /// The whole selector.
        input: String,
        /// The raw value.
        value: String,
    },
    /// The field cannot be selected on for this kind.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// The fields every kind may be selected on (`metadata.name`, `metadata.namespace`).
pub const COMMON_SELECTABLE_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// A field selector: `metadata.name=x,spec.nodeName!=y`. All terms must hold; the empty
/// selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape_field_value(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn escape_field_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> FieldSelector {
        FieldSelector::default()
    }

    /// Parses `field=value`, `field==value`, `field!=value` terms separated by commas; `\,`,
    /// `\=` and `\\` escape those characters in values. Whitespace around fields and values
    /// is ignored; empty terms are skipped.
    pub fn parse(input: &str) -> Result<FieldSelector, FieldSelectorError> {
        let mut terms = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (field, operator, raw_value) = ["!=", "==", "="]
                .iter()
                .filter_map(|op| term.find(op).map(|i| (i, *op)))
                .min_by_key(|(i, op)| (*i, std::cmp::Reverse(op.len())))
                .map(|(i, op)| {
                    let operator = if op == "!=" {
                        FieldOperator::NotEquals
                    } else {
                        FieldOperator::Equals
                    };
                    (&term[..i], operator, &term[i + op.len()..])
                })
                .ok_or_else(|| FieldSelectorError::InvalidTerm {
                    input: input.to_string(),
                    term: term.to_string(),
                })?;
            let field = field.trim();
            if field.is_empty() {
                return Err(FieldSelectorError::EmptyField {
                    input: input.to_string(),
                    term: term.to_string(),
                });
            }
            // `a! =b` would print as `a!=b`, another selector: no field ends with `!`.
            if field.ends_with('!') {
                return Err(FieldSelectorError::InvalidTerm {
                    input: input.to_string(),
                    term: term.to_string(),
                });
            }
            let raw_value = raw_value.trim();
            let value = unescape_field_value(raw_value).ok_or_else(|| {
                FieldSelectorError::InvalidEscape {
                    input: input.to_string(),
                    value: raw_value.to_string(),
                }
            })?;
            terms.push(FieldTerm {
                field: field.to_string(),
                operator,
                value,
            });
        }
        terms.sort();
        Ok(FieldSelector { terms })
    }

    /// Parses and rejects any field not in `allowed` (`field label not supported: spec.foo`).
    pub fn parse_allowed(
        input: &str,
        allowed: &[&str],
    ) -> Result<FieldSelector, FieldSelectorError> {
        let selector = FieldSelector::parse(input)?;
        selector.check_fields(allowed)?;
        Ok(selector)
    }

    /// Rejects any field not in `allowed`.
    pub fn check_fields(&self, allowed: &[&str]) -> Result<(), FieldSelectorError> {
        match self
            .terms
            .iter()
            .find(|t| !allowed.contains(&t.field.as_str()))
        {
            Some(term) => Err(FieldSelectorError::UnsupportedField(term.field.clone())),
            None => Ok(()),
        }
    }

    /// The terms, sorted.
    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value `field` must equal, if a term requires it (for index lookups such as tasks
    /// by `spec.nodeName`).
    pub fn exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && t.operator == FieldOperator::Equals)
            .map(|t| t.value.as_str())
    }

    /// Whether every term holds, reading fields through `lookup`; a field it does not know
    /// reads as the empty string, as in Kubernetes.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let actual = lookup(&t.field).unwrap_or_default();
            match t.operator {
                FieldOperator::Equals => actual == t.value,
                FieldOperator::NotEquals => actual != t.value,
            }
        })
    }

    /// Matches against a JSON object, reading each field by its dotted path; strings,
    /// numbers and booleans compare by their text.
    pub fn matches_json(&self, object: &serde_json::Value) -> bool {
        self.matches(|field| json_field(object, field))
    }
}

/// Reads a dotted path (`spec.nodeName`) from a JSON object as text.
pub fn json_field(object: &serde_json::Value, path: &str) -> Option<String> {
    let mut current = object;
    for part in path.split('.') {
        current = current.get(part)?;
    }
    match current {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.operator {
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", t.field, escape_field_value(&t.value))?;
        }
        Ok(())
    }
}

impl FromStr for FieldSelector {
    type Err = FieldSelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s =
            Selector::parse("a=b, c==d,e!=f , g in (x, y),h notin (y,x),i,!j,k>1,l<10").unwrap();
        assert_eq!(
            s.to_string(),
            "a=b,c=d,e!=f,g in (x,y),h notin (x,y),i,!j,k>1,l<10"
        );
        let ops: Vec<Operator> = s.requirements().iter().map(|r| r.operator).collect();
        assert_eq!(
            ops,
            vec![
                Operator::Equals,
                Operator::Equals,
                Operator::NotEquals,
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
                Operator::Gt,
                Operator::Lt
            ]
        );
    }

    #[test]
    fn canonical_order_and_empty() {
        let s = Selector::parse("b=1,a=2").unwrap();
        assert_eq!(s.to_string(), "a=2,b=1");
        assert_eq!(s, Selector::parse("a=2, b=1").unwrap());
        assert!(Selector::parse("").unwrap().is_empty());
        assert!(Selector::parse("   ").unwrap().matches(&labels(&[])));
        assert_eq!(Selector::parse("a=").unwrap().to_string(), "a=");
        assert_eq!(
            Selector::parse("a in ()").unwrap().requirements()[0].values,
            vec![""]
        );
        assert_eq!(
            Selector::parse("a=in").unwrap().requirements()[0].values,
            vec!["in"]
        );
        assert_eq!(
            Selector::parse("loom.dev/arch in (amd64)")
                .unwrap()
                .requirements()[0]
                .key,
            "loom.dev/arch"
        );
    }

    #[test]
    fn matching() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("rank", "5")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "tier in (front,back)",
            "tier notin (back)",
            "app",
            "!gpu",
            "rank>4",
            "rank<6",
            "missing!=x",
            "missing notin (x)",
        ];
        let no = [
            "app=db",
            "app!=web",
            "tier in (back)",
            "tier notin (front)",
            "gpu",
            "!app",
            "rank>5",
            "rank<5",
            "app>1",
            "missing>1",
            "missing=x",
            "missing in (x)",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("a in b", 5, "found 'b', expected '(' after 'in' or 'notin'"),
            (
                "a b",
                2,
                "found 'b', expected '=', '==', '!=', '>', '<', 'in', 'notin', ',' or end of input",
            ),
            ("a=b,", 4, "found end of input, expected '!' or a label key"),
            (",a", 0, "found ',', expected '!' or a label key"),
            ("a in (x", 7, "found end of input, expected ',' or ')'"),
            (
                "a>b",
                2,
                "for 'Gt', 'Lt' operators, the value must be an integer, not \"b\"",
            ),
            ("a=b=c", 3, "found '=', expected ',' or end of input"),
            ("!", 1, "found end of input, expected a label key after '!'"),
            ("a==(", 3, "found '(', expected a label value"),
            ("in=a", 0, "found 'in', expected '!' or a label key"),
        ];
        for (input, position, message) in cases {
            let err = Selector::parse(input).unwrap_err();
            assert_eq!(
                (err.position, err.message.as_str()),
                (position, message),
                "{input}"
            );
        }
        let err = Selector::parse("a=b c").unwrap_err();
        assert_eq!(err.position, 4);
        let err = Selector::parse("-a=b").unwrap_err();
        assert!(
            err.message
                .starts_with("invalid label key \"-a\": name part must consist"),
            "{}",
            err.message
        );
        assert!(
            err.to_string()
                .starts_with("invalid label selector \"-a=b\" at position 0: ")
        );
        let err = Selector::parse("a=b/c").unwrap_err();
        assert_eq!(err.position, 2);
        assert!(
            err.message
                .contains("invalid label value \"b/c\": a valid label must be")
        );
        let err = Selector::parse("!x/").unwrap_err();
        assert_eq!(err.position, 1);
    }

    #[test]
    fn requirement_checks() {
        assert_eq!(
            Requirement::new("a", Operator::In, Vec::<String>::new()),
            Err(RequirementError::ValuesRequired)
        );
        assert_eq!(
            Requirement::new("a", Operator::Exists, ["x"]),
            Err(RequirementError::ValuesForbidden)
        );
        assert_eq!(
            Requirement::new("a", Operator::Gt, ["x"]),
            Err(RequirementError::NotAnInteger("x".into()))
        );
        assert_eq!(
            Requirement::new("a", Operator::Lt, ["1", "2"]),
            Err(RequirementError::ExactlyOneValue(Operator::Lt))
        );
        assert!(matches!(
            Requirement::new("a b", Operator::Exists, Vec::<String>::new()),
            Err(RequirementError::InvalidKey { .. })
        ));
        assert!(matches!(
            Requirement::new("a", Operator::In, ["a b"]),
            Err(RequirementError::InvalidValue { .. })
        ));
        let r = Requirement::new("a", Operator::In, ["z", "y", "z"]).unwrap();
        assert_eq!(r.values, vec!["y", "z"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"key": "a", "operator": "In", "values": ["y", "z"]})
        );
        let exists: Requirement =
            serde_json::from_value(serde_json::json!({"key": "gpu", "operator": "Exists"}))
                .unwrap();
        assert_eq!(exists.to_string(), "gpu");
        assert!(
            serde_json::from_value::<Requirement>(
                serde_json::json!({"key": "gpu", "operator": "Maybe"})
            )
            .is_err()
        );
        // Malformed requirements match nothing rather than failing.
        let bad = Requirement {
            key: "a".into(),
            operator: Operator::Gt,
            values: vec![],
        };
        assert!(!bad.matches(&labels(&[("a", "1")])));
    }

    #[test]
    fn selector_from_labels_and_serde() {
        let s = Selector::from_labels(&labels(&[("job", "x"), ("app", "y")]));
        assert_eq!(s.to_string(), "app=y,job=x");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"app=y,job=x\"");
        let back: Selector = serde_json::from_str("\"app=y,job=x\"").unwrap();
        assert_eq!(back, s);
        assert!(serde_json::from_str::<Selector>("\"a in\"").is_err());
    }

    #[test]
    fn field_selectors() {
        let fs = FieldSelector::parse("metadata.name=x,spec.nodeName!=y").unwrap();
        assert_eq!(fs.to_string(), "metadata.name=x,spec.nodeName!=y");
        let lookup = |f: &str| match f {
            "metadata.name" => Some("x".to_string()),
            "spec.nodeName" => Some("n1".to_string()),
            _ => None,
        };
        assert!(fs.matches(lookup));
        assert!(
            !FieldSelector::parse("spec.nodeName==n2")
                .unwrap()
                .matches(lookup)
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .unwrap()
                .matches(|_| None)
        );
        assert!(FieldSelector::parse("").unwrap().matches(|_| None));
        assert_eq!(
            FieldSelector::parse(" status.phase = Running ")
                .unwrap()
                .exact_match("status.phase"),
            Some("Running")
        );
        let escaped = FieldSelector::parse(r"metadata.name=a\,b\=c").unwrap();
        assert_eq!(escaped.terms()[0].value, "a,b=c");
        assert_eq!(escaped.to_string(), r"metadata.name=a\,b\=c");
        assert!(matches!(
            FieldSelector::parse("metadata.name"),
            Err(FieldSelectorError::InvalidTerm { .. })
        ));
        assert!(matches!(
            FieldSelector::parse("=x"),
            Err(FieldSelectorError::EmptyField { .. })
        ));
        assert!(matches!(
            FieldSelector::parse(r"a=\x"),
            Err(FieldSelectorError::InvalidEscape { .. })
        ));
        // Found by loom-fuzz: `a! =b` (field `a!`) printed as `a!=b`, another selector.
        for ambiguous in ["a! =b", "spec.nodeName!\n=", "!\u{c}=!"] {
            assert!(
                matches!(
                    FieldSelector::parse(ambiguous),
                    Err(FieldSelectorError::InvalidTerm { .. })
                ),
                "{ambiguous:?}"
            );
        }
        assert_eq!(FieldSelector::parse("a != b").unwrap().to_string(), "a!=b");
        let err = FieldSelector::parse_allowed("spec.foo=x", &["metadata.name"]).unwrap_err();
        assert_eq!(err.to_string(), "field label not supported: spec.foo");
        assert!(FieldSelector::parse_allowed("metadata.name=a", COMMON_SELECTABLE_FIELDS).is_ok());
        let obj =
            serde_json::json!({"metadata": {"name": "t"}, "spec": {"nodeName": "n1", "index": 3}});
        assert!(
            FieldSelector::parse("spec.nodeName=n1,spec.index=3")
                .unwrap()
                .matches_json(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.name!=t")
                .unwrap()
                .matches_json(&obj)
        );
    }

    // ---- properties ----

    fn key_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("app".to_string()),
            Just("tier".to_string()),
            Just("loom.dev/arch".to_string()),
            Just("rank".to_string()),
            "[a-z]{1,3}".prop_filter("`in` is a keyword", |k| k != "in"),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("in".to_string()),
            "[a-c]{1,2}",
            "[0-9]{1,2}",
        ]
    }

    fn requirement_strategy() -> impl Strategy<Value = Requirement> {
        let op = prop_oneof![
            Just(Operator::In),
            Just(Operator::NotIn),
            Just(Operator::Exists),
            Just(Operator::DoesNotExist),
            Just(Operator::Equals),
            Just(Operator::NotEquals),
            Just(Operator::Gt),
            Just(Operator::Lt),
        ];
        (
            key_strategy(),
            op,
            prop::collection::vec(value_strategy(), 1..4),
            -20i64..20,
        )
            .prop_map(|(key, operator, values, n)| {
                let values = match operator {
                    Operator::In | Operator::NotIn => values,
                    Operator::Exists | Operator::DoesNotExist => Vec::new(),
                    Operator::Equals | Operator::NotEquals => vec![values[0].clone()],
                    Operator::Gt | Operator::Lt => vec![n.to_string()],
                };
                Requirement::new(key, operator, values).unwrap()
            })
    }

    fn labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(key_strategy(), value_strategy(), 0..5)
    }

    /// An evaluator written independently of `Requirement::matches`.
    fn reference_matches(r: &Requirement, labels: &BTreeMap<String, String>) -> bool {
        let has = labels.contains_key(&r.key);
        let value = labels.get(&r.key).cloned().unwrap_or_default();
        let in_set = r.values.contains(&value);
        match r.operator {
            Operator::Exists => has,
            Operator::DoesNotExist => !has,
            Operator::Equals | Operator::In => has && in_set,
            Operator::NotEquals | Operator::NotIn => !(has && in_set),
            Operator::Gt | Operator::Lt => {
                if !has {
                    return false;
                }
                let Ok(v) = value.parse::<i64>() else {
                    return false;
                };
                let bound: i64 = r.values[0].parse().unwrap();
                if r.operator == Operator::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(reqs in prop::collection::vec(requirement_strategy(), 0..5)) {
            let selector = Selector::new(reqs);
            let text = selector.to_string();
            let parsed = Selector::parse(&text).unwrap();
            prop_assert_eq!(&parsed, &selector);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn matching_agrees_with_reference(reqs in prop::collection::vec(requirement_strategy(), 0..4), labels in labels_strategy()) {
            let selector = Selector::new(reqs.clone());
            let expected = reqs.iter().all(|r| reference_matches(r, &labels));
            prop_assert_eq!(selector.matches(&labels), expected);
        }

        #[test]
        fn parsing_never_panics(text in "[a-c!=<>(), in0-9/.-]{0,24}") {
            if let Ok(selector) = Selector::parse(&text) {
                let again = Selector::parse(&selector.to_string()).unwrap();
                prop_assert_eq!(again, selector);
            }
        }

        #[test]
        fn field_selectors_round_trip(values in prop::collection::vec("[a-c,=\\\\!]{0,5}", 1..4)) {
            let input: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("f{i}={}", escape_field_value(v))).collect();
            let parsed = FieldSelector::parse(&input.join(",")).unwrap();
            let again = FieldSelector::parse(&parsed.to_string()).unwrap();
            prop_assert_eq!(again, parsed);
        }
    }
}
