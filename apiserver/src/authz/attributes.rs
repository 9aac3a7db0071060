//! A request's authorization attributes from its method, path and query, as
//! Kubernetes' `RequestInfoFactory` derives them: no catalog is consulted, so
//! the same answer is had before routing, by the authorizer, and by the audit
//! log.
//!
//! `/api/v1/...` (the core group) and `/apis/GROUP/VERSION/...` are resource
//! requests: the verb comes from the method (`GET` of a collection is `list`,
//! or `watch` with `?watch=true`; `DELETE` of one is `deletecollection`), then
//! `namespaces/NS/`, the resource, the name and the subresource. Every other
//! path (`/healthz`, `/metrics`, `/api`, `/apis`, `/apis/GROUP`, `/openapi/v3`)
//! is a non-resource request whose verb is the method in lowercase.

use super::rbac::{Attributes, UserInfo};
use crate::http::User;

/// Subresources of a namespace (`/api/v1/namespaces/NS/status`) rather than a
/// resource inside it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// The attributes of `method path?query` by `user`. `query` is the raw query
/// string (without the `?`), empty when there is none.
pub fn request_attributes(user: &User, method: &str, path: &str, query: &str) -> Attributes {
    let mut attributes = Attributes {
        user: UserInfo {
            name: user.name.clone(),
            groups: user.groups.clone(),
        },
        verb: method.to_ascii_lowercase(),
        path: path.to_owned(),
        ..Attributes::default()
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // `/api/v1/x` and `/apis/g/v/x` at the least; shorter is discovery.
    let mut rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => rest,
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
            attributes.api_group = (*group).to_owned();
            rest
        }
        _ => return attributes,
    };
    attributes.resource_request = true;
    // `/apis/g/v/watch/...` (the legacy watch paths) names its verb.
    let special_verb = matches!(rest[0], "watch" | "proxy") && rest.len() > 1;
    if special_verb {
        attributes.verb = rest[0].to_owned();
        rest = &rest[1..];
    } else {
        attributes.verb = match method.to_ascii_uppercase().as_str() {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_owned();
    }
    if rest[0] == "namespaces" && rest.len() > 1 {
        attributes.namespace = rest[1].to_owned();
        if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
            rest = &rest[2..];
        }
    }
    attributes.resource = rest[0].to_owned();
    if let Some(name) = rest.get(1) {
        attributes.name = (*name).to_owned();
    }
    if let Some(subresource) = rest.get(2)
        && !(special_verb && attributes.verb == "watch")
    {
        attributes.subresource = (*subresource).to_owned();
    }
    if attributes.name.is_empty() && attributes.verb == "get" {
        attributes.verb = if query_flag(query, "watch") {
            "watch"
        } else {
            "list"
        }
        .to_owned();
        let selector = query_value(query, "fieldSelector");
        attributes.field_selector = selector.clone().unwrap_or_default();
        // A list narrowed to one name is a request about that name, so a
        // rule limited by `resourceNames` may allow it.
        if let Some(selector) = selector
            && let Some(name) = selector.strip_prefix("metadata.name=")
            && !name.is_empty()
            && !name.contains([',', '=', '!', '/', '%'])
            && name != "."
            && name != ".."
        {
            attributes.name = name.to_owned();
        }
    }
    if attributes.name.is_empty() && attributes.verb == "delete" {
        attributes.verb = "deletecollection".to_owned();
    }
    attributes
}

/// Whether the query's `key` is `true` or `1`: exactly what the API's handlers
/// take for a flag, so a request is never authorized as a list and served as
/// a watch.
pub fn query_flag(query: &str, key: &str) -> bool {
    matches!(query_value(query, key).as_deref(), Some("true" | "1"))
}

/// The last value of `key` in a raw query string, percent-decoded (the last,
/// as the handlers' query map keeps it).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == key).then(|| decode(v))
        })
        .next_back()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte;
/// a malformed escape stays as written.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'+' {
            out.push(b' ');
        } else if byte == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            out.push(value);
            i += 3;
            continue;
        } else {
            out.push(byte);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &str) -> Attributes {
        request_attributes(&User::anonymous(), method, path, query)
    }

    /// (verb, group, namespace, resource, subresource, name).
    type Resource<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

    fn resource(a: &Attributes) -> Resource<'_> {
        assert!(a.resource_request, "{a:?}");
        (
            &a.verb,
            &a.api_group,
            &a.namespace,
            &a.resource,
            &a.subresource,
            &a.name,
        )
    }

    #[test]
    fn resource_requests() {
        let cases: &[(&str, &str, &str, Resource)] = &[
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks",
                "",
                ("list", "loom.dev", "a", "tasks", "", ""),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks",
                "watch=true&resourceVersion=3",
                ("watch", "loom.dev", "a", "tasks", "", ""),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/tasks",
                "watch=1",
                ("watch", "loom.dev", "", "tasks", "", ""),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/tasks",
                "watch=false",
                ("list", "loom.dev", "", "tasks", "", ""),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks/t",
                "watch=true",
                ("get", "loom.dev", "a", "tasks", "", "t"),
            ),
            (
                "POST",
                "/apis/loom.dev/v1/namespaces/a/tasks",
                "",
                ("create", "loom.dev", "a", "tasks", "", ""),
            ),
            (
                "PUT",
                "/apis/loom.dev/v1/namespaces/a/tasks/t/status",
                "",
                ("update", "loom.dev", "a", "tasks", "status", "t"),
            ),
            (
                "PATCH",
                "/apis/loom.dev/v1/nodes/n1",
                "",
                ("patch", "loom.dev", "", "nodes", "", "n1"),
            ),
            (
                "DELETE",
                "/apis/loom.dev/v1/namespaces/a/jobs/j",
                "",
                ("delete", "loom.dev", "a", "jobs", "", "j"),
            ),
            (
                "DELETE",
                "/apis/loom.dev/v1/namespaces/a/jobs",
                "",
                ("deletecollection", "loom.dev", "a", "jobs", "", ""),
            ),
            (
                "POST",
                "/apis/loom.dev/v1/namespaces/a/tasks/t/binding",
                "",
                ("create", "loom.dev", "a", "tasks", "binding", "t"),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks/t/log",
                "follow=true",
                ("get", "loom.dev", "a", "tasks", "log", "t"),
            ),
            // The core group.
            (
                "GET",
                "/api/v1/namespaces/a/serviceaccounts/default",
                "",
                ("get", "", "a", "serviceaccounts", "", "default"),
            ),
            (
                "POST",
                "/api/v1/namespaces/a/serviceaccounts/sa/token",
                "",
                ("create", "", "a", "serviceaccounts", "token", "sa"),
            ),
            // A namespace is in itself; its status is its subresource.
            (
                "GET",
                "/api/v1/namespaces/a",
                "",
                ("get", "", "a", "namespaces", "", "a"),
            ),
            (
                "PUT",
                "/apis/loom.dev/v1/namespaces/a/status",
                "",
                ("update", "loom.dev", "a", "namespaces", "status", "a"),
            ),
            (
                "PUT",
                "/apis/loom.dev/v1/namespaces/a/finalize",
                "",
                ("update", "loom.dev", "a", "namespaces", "finalize", "a"),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/namespaces",
                "",
                ("list", "loom.dev", "", "namespaces", "", ""),
            ),
            (
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                "",
                (
                    "create",
                    "rbac.authorization.k8s.io",
                    "",
                    "clusterrolebindings",
                    "",
                    "",
                ),
            ),
            // The legacy watch path.
            (
                "GET",
                "/apis/loom.dev/v1/watch/namespaces/a/tasks",
                "",
                ("watch", "loom.dev", "a", "tasks", "", ""),
            ),
            // A list of one name is about that name.
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks",
                "fieldSelector=metadata.name%3Dt1&watch=true",
                ("watch", "loom.dev", "a", "tasks", "", "t1"),
            ),
            (
                "GET",
                "/apis/loom.dev/v1/namespaces/a/tasks",
                "fieldSelector=metadata.name%3Dt1%2Cspec.x%3Dy",
                ("list", "loom.dev", "a", "tasks", "", ""),
            ),
            (
                "OPTIONS",
                "/apis/loom.dev/v1/tasks",
                "",
                ("", "loom.dev", "", "tasks", "", ""),
            ),
        ];
        for (method, path, query, want) in cases {
            let got = attrs(method, path, query);
            assert_eq!(resource(&got), *want, "{method} {path}?{query}");
        }
    }

    #[test]
    fn non_resource_requests() {
        for (method, path, verb) in [
            ("GET", "/healthz", "get"),
            ("GET", "/metrics", "get"),
            ("GET", "/api", "get"),
            ("GET", "/api/v1", "get"),
            ("GET", "/apis", "get"),
            ("GET", "/apis/loom.dev", "get"),
            ("GET", "/apis/loom.dev/v1", "get"),
            ("GET", "/openapi/v3/apis/loom.dev/v1", "get"),
            ("POST", "/version", "post"),
            ("HEAD", "/", "head"),
        ] {
            let a = attrs(method, path, "watch=true");
            assert!(!a.resource_request, "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), (verb, path));
            assert!(a.resource.is_empty() && a.api_group.is_empty());
        }
    }

    #[test]
    fn the_user_is_carried() {
        let user = User {
            name: "alice".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            ..User::default()
        };
        let a = request_attributes(&user, "GET", "/apis/loom.dev/v1/tasks", "");
        assert_eq!(a.user.name, "alice");
        assert_eq!(a.user.groups, ["devs", "system:authenticated"]);
        let a = request_attributes(&User::anonymous(), "GET", "/healthz", "");
        assert_eq!(a.user.groups, ["system:unauthenticated"]);
    }

    #[test]
    fn queries_decode_as_the_handlers_do() {
        assert!(query_flag("a=b&watch=true", "watch"));
        assert!(!query_flag("watch=true&watch=false", "watch"));
        assert!(query_flag("watch=false&watch=1", "watch"));
        assert!(!query_flag("watch=yes", "watch"));
        assert!(!query_flag("", "watch"));
        assert_eq!(
            query_value("fieldSelector=a%3Db+c&x", "fieldSelector").as_deref(),
            Some("a=b c")
        );
        assert_eq!(query_value("x", "x").as_deref(), Some(""));
        assert_eq!(query_value("x=%zz%4", "x").as_deref(), Some("%zz%4"));
        assert_eq!(query_value("w%61tch=1", "watch").as_deref(), Some("1"));
    }
}
