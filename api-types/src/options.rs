//! Options of the API's verbs as they travel, shared by the API server, which
//! reads them, and the client, which sends them: the body of a delete, and the
//! query parameters of a list and a watch.

use serde::{Deserialize, Serialize};

use crate::validation::FieldError;

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
    /// A boolean parameter that is neither `true` nor `false`.
    #[error("{parameter} {value:?} is not a boolean")]
    NotABool {
        /// The parameter (`sendInitialEvents`).
        parameter: &'static str,
        /// What it was.
        value: String,
    },
}

/// Reads a boolean as Go's `strconv.ParseBool` does, which Kubernetes uses
/// for its query parameters.
fn boolean(parameter: &'static str, value: Option<&str>) -> Result<Option<bool>, OptionsError> {
    match value {
        None => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(v) => Err(OptionsError::NotABool {
            parameter,
            value: v.to_owned(),
        }),
    }
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

/// The annotation of the BOOKMARK that ends a streaming list's initial
/// events (Kubernetes' `metav1.InitialEventsAnnotationKey`).
pub const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

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
    /// `sendInitialEvents` (a streaming list): `true` sends every current
    /// object as ADDED, then a BOOKMARK annotated [`INITIAL_EVENTS_END`],
    /// then the changes; `false` sends only the changes, from now when the
    /// watch has no resourceVersion. Absent, a watch without a
    /// resourceVersion starts with the current objects and no such bookmark.
    pub send_initial_events: Option<bool>,
    /// `resourceVersionMatch`: only `NotOlderThan`, and only with
    /// `sendInitialEvents`.
    pub resource_version_match: Option<String>,
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
            (
                "sendInitialEvents",
                self.send_initial_events.map(|s| s.to_string()),
            ),
            ("resourceVersionMatch", self.resource_version_match.clone()),
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
            send_initial_events: boolean("sendInitialEvents", get("sendInitialEvents"))?,
            resource_version_match: text(get("resourceVersionMatch")),
        })
    }

    /// What is wrong with these options together, as Kubernetes'
    /// `validateWatchOptions` says it (a server answers 422 `Invalid` for
    /// kind `ListOptions` with these): `sendInitialEvents` needs
    /// `resourceVersionMatch=NotOlderThan` and `allowWatchBookmarks=true`;
    /// `resourceVersionMatch` needs `sendInitialEvents`.
    pub fn validate(&self) -> Vec<FieldError> {
        const NOT_OLDER_THAN: &str = "NotOlderThan";
        let mut errors = Vec::new();
        let matching = self.resource_version_match.as_deref();
        if self.send_initial_events.is_some() {
            if matching != Some(NOT_OLDER_THAN) {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    format!("sendInitialEvents requires setting resourceVersionMatch to {NOT_OLDER_THAN}"),
                ));
            }
            if !self.bookmarks {
                errors.push(FieldError::forbidden(
                    "allowWatchBookmarks",
                    "sendInitialEvents requires setting allowWatchBookmarks to true",
                ));
            }
        }
        if let Some(matching) = matching {
            if self.send_initial_events.is_none() {
                errors.push(FieldError::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if matching != NOT_OLDER_THAN {
                errors.push(FieldError::not_supported(
                    "resourceVersionMatch",
                    matching,
                    &[NOT_OLDER_THAN],
                ));
            }
        }
        errors
    }
}

/// What is wrong with a list's (not a watch's) `sendInitialEvents`: Kubernetes
/// forbids it outside a watch.
pub fn validate_list_send_initial_events(value: Option<&str>) -> Vec<FieldError> {
    match value {
        None => Vec::new(),
        Some(_) => vec![FieldError::forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        )],
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
            send_initial_events: Some(true),
            resource_version_match: Some("NotOlderThan".into()),
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
    fn a_streaming_list_needs_bookmarks_and_not_older_than() {
        let read = |pairs: &[(&str, &str)]| {
            let q = query(pairs);
            WatchOptions::from_query(|k| q.get(k).map(String::as_str))
        };
        let good = read(&[
            ("sendInitialEvents", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
        ])
        .unwrap();
        assert_eq!(good.send_initial_events, Some(true));
        assert!(good.validate().is_empty());
        assert!(read(&[]).unwrap().validate().is_empty());
        let fields = |options: WatchOptions| -> Vec<String> {
            options.validate().iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            fields(read(&[("sendInitialEvents", "true")]).unwrap()),
            [
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ]
        );
        assert_eq!(
            fields(
                read(&[
                    ("sendInitialEvents", "false"),
                    ("allowWatchBookmarks", "true"),
                    ("resourceVersionMatch", "Exact"),
                ])
                .unwrap()
            ),
            [
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                "resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"",
            ]
        );
        assert_eq!(
            fields(read(&[("resourceVersionMatch", "NotOlderThan")]).unwrap()),
            [
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
            ]
        );
        let error = read(&[("sendInitialEvents", "yes")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "sendInitialEvents \"yes\" is not a boolean"
        );
        assert_eq!(validate_list_send_initial_events(Some("true")).len(), 1);
        assert!(validate_list_send_initial_events(None).is_empty());
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
