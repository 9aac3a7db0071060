//! Options of the API's verbs as they travel, shared by the API server, which
//! reads them, and the client, which sends them: the body of a delete, and the
//! query parameters of a list and a watch.

use serde::{Deserialize, Serialize};

/// The body of a delete (Kubernetes' `DeleteOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeleteOptions {
    /// `Foreground`, `Background` or `Orphan`: what becomes of the objects
    /// the deleted one owns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_policy: Option<String>,
    /// Delete only this exact object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preconditions: Option<Preconditions>,
    /// `["All"]` for a dry run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
    /// Accepted and ignored: deletion is immediate unless finalizers hold it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,
    /// Kubernetes' older form of `propagationPolicy`: `true` is `Orphan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphan_dependents: Option<bool>,
}

/// Conditions a delete must meet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Preconditions {
    /// The object's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The object's resourceVersion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A query parameter that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A number parameter that is not a number.
    #[error("{parameter} {value:?} is not a number")]
    NotANumber {
        /// The parameter (`limit`).
        parameter: &'static str,
        /// What it was.
        value: String,
    },
}

fn number(parameter: &'static str, value: Option<&str>) -> Result<Option<u64>, OptionsError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| OptionsError::NotANumber {
            parameter,
            value: v.to_owned(),
        }),
    }
}

fn text(value: Option<&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(str::to_owned)
}

/// What a list asks for: its query parameters (Kubernetes' `ListOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit`: pages of at most this many objects.
    pub limit: Option<u32>,
    /// `continue`: the token of the next page.
    pub continue_token: Option<String>,
    /// `resourceVersion` (`"0"`: any recent state, from the server's cache).
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`: `Exact` or `NotOlderThan`.
    pub resource_version_match: Option<String>,
}

impl ListOptions {
    /// Only objects whose labels match.
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = Some(selector.to_owned());
        self
    }

    /// Only objects whose fields match.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_owned());
        self
    }

    /// Pages of `limit` objects.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The query parameters, in order, without the empty ones.
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("labelSelector", self.label_selector.clone()),
            ("fieldSelector", self.field_selector.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("continue", self.continue_token.clone()),
            ("resourceVersion", self.resource_version.clone()),
            ("resourceVersionMatch", self.resource_version_match.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.filter(|v| !v.is_empty())?)))
        .collect()
    }

    /// Reads the options from a request's query parameters (`get` gives a
    /// parameter's value): empty ones are absent, a `limit` of 0 is none, and
    /// one above `u32::MAX` is `u32::MAX`. `resourceVersion` is kept as sent,
    /// even empty.
    pub fn from_query<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, OptionsError> {
        let limit = number("limit", get("limit"))?
            .filter(|l| *l > 0)
            .map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        Ok(ListOptions {
            label_selector: text(get("labelSelector")),
            field_selector: text(get("fieldSelector")),
            limit,
            continue_token: text(get("continue")),
            resource_version: get("resourceVersion").map(str::to_owned),
            resource_version_match: text(get("resourceVersionMatch")),
        })
    }
}

/// What a watch asks for besides where it starts (`resourceVersion`): its
/// query parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `allowWatchBookmarks`: ask for BOOKMARK events.
    pub bookmarks: bool,
    /// `timeoutSeconds`: end the watch after this many seconds.
    pub timeout_seconds: Option<u32>,
}

impl WatchOptions {
    /// The query parameters of a watch from `resource_version`, in order,
    /// without the empty ones.
    pub fn query_pairs(&self, resource_version: &str) -> Vec<(&'static str, String)> {
        let mut pairs = vec![("watch", "true".to_owned())];
        let optional = [
            ("resourceVersion", Some(resource_version.to_owned())),
            ("labelSelector", self.label_selector.clone()),
            ("fieldSelector", self.field_selector.clone()),
            (
                "allowWatchBookmarks",
                self.bookmarks.then(|| "true".to_owned()),
            ),
            (
                "timeoutSeconds",
                self.timeout_seconds.map(|t| t.to_string()),
            ),
        ];
        pairs.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some((key, value.filter(|v| !v.is_empty())?))),
        );
        pairs
    }

    /// Reads the options from a request's query parameters (`get` gives a
    /// parameter's value): `allowWatchBookmarks` is on for `true` or `1`; a
    /// `timeoutSeconds` above `u32::MAX` is `u32::MAX`.
    pub fn from_query<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, OptionsError> {
        let timeout_seconds = number("timeoutSeconds", get("timeoutSeconds"))?
            .map(|t| u32::try_from(t).unwrap_or(u32::MAX));
        Ok(WatchOptions {
            label_selector: text(get("labelSelector")),
            field_selector: text(get("fieldSelector")),
            bookmarks: matches!(get("allowWatchBookmarks"), Some("true" | "1")),
            timeout_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn list_options_go_out_and_come_back_the_same() {
        let options = ListOptions {
            continue_token: Some("abc".into()),
            resource_version: Some("12".into()),
            ..ListOptions::default()
                .labels("app=web")
                .fields("spec.nodeName=n1")
                .limit(50)
        };
        let sent: HashMap<String, String> = options
            .query_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let read = ListOptions::from_query(|k| sent.get(k).map(String::as_str)).unwrap();
        assert_eq!(read, options);
    }

    #[test]
    fn list_options_read_empty_as_absent_and_name_a_bad_number() {
        let q = query(&[
            ("labelSelector", ""),
            ("limit", "0"),
            ("resourceVersion", ""),
        ]);
        let read = ListOptions::from_query(|k| q.get(k).map(String::as_str)).unwrap();
        assert_eq!(read.label_selector, None);
        assert_eq!(read.limit, None);
        assert_eq!(read.resource_version.as_deref(), Some(""));
        let q = query(&[("limit", "ten")]);
        let error = ListOptions::from_query(|k| q.get(k).map(String::as_str)).unwrap_err();
        assert_eq!(error.to_string(), "limit \"ten\" is not a number");
        let q = query(&[("limit", "99999999999")]);
        let read = ListOptions::from_query(|k| q.get(k).map(String::as_str)).unwrap();
        assert_eq!(read.limit, Some(u32::MAX));
    }

    #[test]
    fn watch_options_go_out_and_come_back_the_same() {
        let options = WatchOptions {
            label_selector: Some("app=web".into()),
            field_selector: None,
            bookmarks: true,
            timeout_seconds: Some(290),
        };
        let pairs = options.query_pairs("7");
        assert_eq!(pairs[0], ("watch", "true".to_owned()));
        assert_eq!(pairs[1], ("resourceVersion", "7".to_owned()));
        let sent: HashMap<String, String> =
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let read = WatchOptions::from_query(|k| sent.get(k).map(String::as_str)).unwrap();
        assert_eq!(read, options);
        let q = query(&[("timeoutSeconds", "soon")]);
        let error = WatchOptions::from_query(|k| q.get(k).map(String::as_str)).unwrap_err();
        assert_eq!(error.to_string(), "timeoutSeconds \"soon\" is not a number");
    }

    #[test]
    fn delete_options_send_only_what_is_set() {
        let options = DeleteOptions {
            propagation_policy: Some("Background".into()),
            preconditions: Some(Preconditions {
                uid: Some("u1".into()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        };
        assert_eq!(
            serde_json::to_string(&options).unwrap(),
            r#"{"propagationPolicy":"Background","preconditions":{"uid":"u1"}}"#
        );
        let read: DeleteOptions = serde_json::from_str(
            r#"{"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"],"orphanDependents":true}"#,
        )
        .unwrap();
        assert_eq!(read.dry_run, vec!["All".to_owned()]);
        assert_eq!(read.orphan_dependents, Some(true));
    }
}
