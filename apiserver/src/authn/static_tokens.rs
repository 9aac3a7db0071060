//! Bearer tokens from a static file in Kubernetes' `--token-auth-file` CSV
//! format: `token,user,uid,"group1,group2"`, one user a line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::http::User;

/// Why a token file cannot be used, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a token record.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

/// The users of a token file, by token.
#[derive(Clone, Default)]
pub struct StaticTokens {
    users: HashMap<String, User>,
}

impl std::fmt::Debug for StaticTokens {
    // Never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticTokens")
            .field("users", &self.users.len())
            .finish()
    }
}

impl StaticTokens {
    /// Reads a token file.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a token file (`path` names it in errors). Blank lines
    /// and lines starting with `#` are skipped; a token given twice is an error.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenFileError> {
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let error = |message: String| TokenFileError::Line {
                path: path.to_owned(),
                line: line_number,
                message,
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields = csv_fields(trimmed).map_err(error)?;
            if fields.len() < 3 {
                return Err(error(format!(
                    "a line needs at least 3 fields (token, user name, user uid), found {}",
                    fields.len()
                )));
            }
            let token = fields[0].clone();
            if token.is_empty() {
                return Err(error("the token is empty".to_owned()));
            }
            if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(error(
                    "the token has white space or control characters".to_owned(),
                ));
            }
            if fields[1].is_empty() {
                return Err(error("the user name is empty".to_owned()));
            }
            let mut groups: Vec<String> = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            super::add_authenticated(&mut groups);
            let user = User {
                name: fields[1].clone(),
                uid: fields[2].clone(),
                groups,
                extra: Default::default(),
            };
            if users.insert(token, user).is_some() {
                // Which of two users a token is would be a guess.
                return Err(error("this token is already on an earlier line".to_owned()));
            }
        }
        Ok(StaticTokens { users })
    }

    /// The user a token is, if it is one of the file's.
    pub fn user(&self, token: &str) -> Option<&User> {
        self.users.get(token)
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The fields of one CSV line: comma-separated, a field in double quotes may
/// hold commas, `""` inside quotes is a quote. Spaces before a field are
/// dropped (Go's `TrimLeadingSpace`, which Kubernetes' reader sets).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".to_owned()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "{c:?} after a quoted field where a comma was expected"
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".to_owned()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_token_file_gives_users_with_their_groups_and_system_authenticated() {
        let text =
            "\n# operators\nt0k3n,alice,1001,\"dev,ops\"\nother, bob ,1002\n\"q,uoted\",carol,,\n";
        let tokens = StaticTokens::parse(text, Path::new("tokens.csv")).unwrap();
        assert_eq!(tokens.len(), 3);
        let alice = tokens.user("t0k3n").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "1001");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        let bob = tokens.user("other").unwrap();
        assert_eq!(bob.name, "bob ");
        assert_eq!(bob.groups, ["system:authenticated"]);
        assert_eq!(tokens.user("q,uoted").unwrap().name, "carol");
        assert!(tokens.user("unknown").is_none());
        assert!(!format!("{tokens:?}").contains("t0k3n"));
    }

    #[test]
    fn a_bad_line_is_an_error_naming_the_file_and_line() {
        let cases = [
            ("ok,a,1\nonly,two\n", 2, "at least 3 fields"),
            (",a,1\n", 1, "token is empty"),
            ("t,,1\n", 1, "user name is empty"),
            ("t,a,1,\"dev\n", 1, "not closed"),
            ("t,a\"b,1\n", 1, "quote inside"),
            ("t,a,1\nt,b,2\n", 2, "already"),
            ("t\u{7},a,1\n", 1, "control"),
        ];
        for (text, line, message) in cases {
            let error = StaticTokens::parse(text, Path::new("/etc/loom/tokens.csv"))
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("/etc/loom/tokens.csv:{line}: "))
                    && error.contains(message),
                "{text:?}: {error}"
            );
        }
        let missing = StaticTokens::from_file(Path::new("/nonexistent/tokens.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("/nonexistent/tokens.csv: "),
            "{missing}"
        );
    }
}
