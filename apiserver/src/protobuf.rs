//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`) of
//! the few core kinds kubectl's typed clients send that way — Namespace,
//! ServiceAccount, TokenRequest, TokenReview, SelfSubjectReview, the
//! access reviews of `kubectl auth can-i`, and the CertificateSigningRequest
//! of `kubectl certificate approve` — decoded
//! into their JSON form. Loom answers in JSON, which those clients accept.

use serde_json::{Map, Value, json};

/// The media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every body starts with these four bytes, then a `runtime.Unknown`.
const MAGIC: &[u8] = b"k8s\0";

/// Decodes a protobuf request body into the object's JSON.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("the protobuf body does not start with Kubernetes' k8s\\0 prefix")?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for field in Reader::new(envelope) {
        match field? {
            (1, Wire::Bytes(type_meta)) => {
                for field in Reader::new(type_meta) {
                    match field? {
                        (1, Wire::Bytes(v)) => api_version = text(v)?,
                        (2, Wire::Bytes(v)) => kind = text(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(bytes)) => raw = bytes,
            (3, Wire::Bytes(encoding)) if !encoding.is_empty() => {
                return Err("a protobuf body with a content encoding is not supported".to_owned());
            }
            _ => {}
        }
    }
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw)?,
        ("v1", "ServiceAccount") => service_account(raw)?,
        ("authentication.k8s.io/v1", "TokenRequest") => token_request(raw)?,
        ("authentication.k8s.io/v1", "TokenReview") => token_review(raw)?,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => metadata_only(raw)?,
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview",
        ) => access_review(raw)?,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => rules_review(raw)?,
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => {
            certificate_signing_request(raw)?
        }
        _ => {
            return Err(format!(
                "{kind} {api_version} cannot be sent as protobuf to Loom: send it as application/json"
            ));
        }
    };
    object.insert("apiVersion".to_owned(), json!(api_version));
    object.insert("kind".to_owned(), json!(kind));
    Ok(Value::Object(object))
}

/// A field's value by wire type.
#[derive(Debug)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in order.
struct Reader<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, failed: false }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or("a truncated varint")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint longer than 10 bytes".to_owned())
    }

    fn field(&mut self) -> Result<(u32, Wire<'a>), String> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number out of range")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                if self.buf.len() < width {
                    return Err("a truncated fixed-width field".to_owned());
                }
                self.buf = &self.buf[width..];
                Wire::Fixed
            }
            2 => {
                let length =
                    usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
                if self.buf.len() < length {
                    return Err("a length-delimited field longer than its message".to_owned());
                }
                let (bytes, rest) = self.buf.split_at(length);
                self.buf = rest;
                Wire::Bytes(bytes)
            }
            other => return Err(format!("wire type {other} is not supported")),
        };
        Ok((number, wire))
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let field = self.field();
        self.failed = field.is_err();
        Some(field.map_err(|e| format!("the protobuf body is malformed: {e}")))
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a protobuf string is not UTF-8".to_owned())
}

/// `string` fields of a message by number, into JSON names.
fn strings(raw: &[u8], names: &[(u32, &str)]) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for field in Reader::new(raw) {
        if let (number, Wire::Bytes(v)) = field?
            && let Some((_, name)) = names.iter().find(|(n, _)| *n == number)
        {
            object.insert((*name).to_owned(), json!(text(v)?));
        }
    }
    Ok(object)
}

/// A `map<string, string>` entry.
fn entry(raw: &[u8]) -> Result<(String, String), String> {
    let mut key = String::new();
    let mut value = String::new();
    for field in Reader::new(raw) {
        match field? {
            (1, Wire::Bytes(v)) => key = text(v)?,
            (2, Wire::Bytes(v)) => value = text(v)?,
            _ => {}
        }
    }
    Ok((key, value))
}

/// `ObjectMeta`, what a client may set of it (the server sets the rest).
fn object_meta(raw: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut owners = Vec::new();
    let mut finalizers = Vec::new();
    for field in Reader::new(raw) {
        match field? {
            (1, Wire::Bytes(v)) => _ = meta.insert("name".to_owned(), json!(text(v)?)),
            (2, Wire::Bytes(v)) => _ = meta.insert("generateName".to_owned(), json!(text(v)?)),
            (3, Wire::Bytes(v)) => _ = meta.insert("namespace".to_owned(), json!(text(v)?)),
            (5, Wire::Bytes(v)) => _ = meta.insert("uid".to_owned(), json!(text(v)?)),
            (6, Wire::Bytes(v)) => {
                _ = meta.insert("resourceVersion".to_owned(), json!(text(v)?));
            }
            (11, Wire::Bytes(v)) => {
                let (key, value) = entry(v)?;
                labels.insert(key, json!(value));
            }
            (12, Wire::Bytes(v)) => {
                let (key, value) = entry(v)?;
                annotations.insert(key, json!(value));
            }
            (13, Wire::Bytes(v)) => {
                let mut owner = strings(
                    v,
                    &[(1, "kind"), (3, "name"), (4, "uid"), (5, "apiVersion")],
                )?;
                for field in Reader::new(v) {
                    match field? {
                        (6, Wire::Varint(b)) => {
                            _ = owner.insert("controller".to_owned(), json!(b != 0))
                        }
                        (7, Wire::Varint(b)) => {
                            _ = owner.insert("blockOwnerDeletion".to_owned(), json!(b != 0));
                        }
                        _ => {}
                    }
                }
                owners.push(Value::Object(owner));
            }
            (14, Wire::Bytes(v)) => finalizers.push(json!(text(v)?)),
            _ => {}
        }
    }
    // An empty string is protobuf's unset: not a value the client chose.
    meta.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        meta.insert("labels".to_owned(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".to_owned(), Value::Object(annotations));
    }
    if !owners.is_empty() {
        meta.insert("ownerReferences".to_owned(), Value::Array(owners));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".to_owned(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// `certificates/v1` CertificateSigningRequest (what `kubectl certificate
/// approve` and `deny` send): spec 2 {request 1 (bytes), username 2, uid 3,
/// groups 4, usages 5, signerName 7, expirationSeconds 8}, status 3
/// {conditions 1 {type 1, reason 2, message 3, status 6}, certificate 2
/// (bytes)}; bytes become base64, as in JSON.
fn certificate_signing_request(raw: &[u8]) -> Result<Map<String, Value>, String> {
    use base64::Engine as _;
    let base64 = |v: &[u8]| json!(base64::engine::general_purpose::STANDARD.encode(v));
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        match field? {
            (2, Wire::Bytes(v)) => {
                let mut spec = strings(v, &[(2, "username"), (3, "uid"), (7, "signerName")])?;
                let (mut groups, mut usages) = (Vec::new(), Vec::new());
                for field in Reader::new(v) {
                    match field? {
                        (1, Wire::Bytes(r)) => _ = spec.insert("request".to_owned(), base64(r)),
                        (4, Wire::Bytes(g)) => groups.push(json!(text(g)?)),
                        (5, Wire::Bytes(u)) => usages.push(json!(text(u)?)),
                        (8, Wire::Varint(s)) => {
                            // An int32: negative values arrive sign-extended.
                            let seconds = s as i64 as i32;
                            _ = spec.insert("expirationSeconds".to_owned(), json!(seconds));
                        }
                        _ => {}
                    }
                }
                spec.insert("groups".to_owned(), Value::Array(groups));
                spec.insert("usages".to_owned(), Value::Array(usages));
                object.insert("spec".to_owned(), Value::Object(spec));
            }
            (3, Wire::Bytes(v)) => {
                let mut status = Map::new();
                let mut conditions = Vec::new();
                for field in Reader::new(v) {
                    match field? {
                        (1, Wire::Bytes(c)) => conditions.push(Value::Object(strings(
                            c,
                            &[(1, "type"), (2, "reason"), (3, "message"), (6, "status")],
                        )?)),
                        (2, Wire::Bytes(c)) => {
                            _ = status.insert("certificate".to_owned(), base64(c))
                        }
                        _ => {}
                    }
                }
                status.insert("conditions".to_owned(), Value::Array(conditions));
                object.insert("status".to_owned(), Value::Object(status));
            }
            _ => {}
        }
    }
    Ok(object)
}

fn metadata_only(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = Map::new();
    for field in Reader::new(raw) {
        if let (1, Wire::Bytes(v)) = field? {
            object.insert("metadata".to_owned(), object_meta(v)?);
        }
    }
    Ok(object)
}

/// `authorization/v1` access reviews: spec 2 {resourceAttributes 1
/// {namespace 1, verb 2, group 3, version 4, resource 5, subresource 6, name
/// 7}, nonResourceAttributes 2 {path 1, verb 2}, user 3, groups 4, uid 6}.
fn access_review(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        if let (2, Wire::Bytes(v)) = field? {
            let mut spec = Map::new();
            let mut groups = Vec::new();
            for field in Reader::new(v) {
                match field? {
                    (1, Wire::Bytes(r)) => {
                        let attributes = strings(
                            r,
                            &[
                                (1, "namespace"),
                                (2, "verb"),
                                (3, "group"),
                                (4, "version"),
                                (5, "resource"),
                                (6, "subresource"),
                                (7, "name"),
                            ],
                        )?;
                        spec.insert("resourceAttributes".to_owned(), Value::Object(attributes));
                    }
                    (2, Wire::Bytes(n)) => {
                        let attributes = strings(n, &[(1, "path"), (2, "verb")])?;
                        spec.insert(
                            "nonResourceAttributes".to_owned(),
                            Value::Object(attributes),
                        );
                    }
                    (3, Wire::Bytes(u)) => _ = spec.insert("user".to_owned(), json!(text(u)?)),
                    (4, Wire::Bytes(g)) => groups.push(json!(text(g)?)),
                    (6, Wire::Bytes(u)) => _ = spec.insert("uid".to_owned(), json!(text(u)?)),
                    _ => {}
                }
            }
            if !groups.is_empty() {
                spec.insert("groups".to_owned(), Value::Array(groups));
            }
            object.insert("spec".to_owned(), Value::Object(spec));
        }
    }
    Ok(object)
}

/// `authorization/v1 SelfSubjectRulesReview`: spec 2 {namespace 1}.
fn rules_review(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        if let (2, Wire::Bytes(v)) = field? {
            object.insert(
                "spec".to_owned(),
                Value::Object(strings(v, &[(1, "namespace")])?),
            );
        }
    }
    Ok(object)
}

/// `core/v1 Namespace`: metadata 1, spec 2 (finalizers 1); status is the server's.
fn namespace(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        if let (2, Wire::Bytes(spec)) = field? {
            let mut finalizers = Vec::new();
            for field in Reader::new(spec) {
                if let (1, Wire::Bytes(v)) = field? {
                    finalizers.push(json!(text(v)?));
                }
            }
            if !finalizers.is_empty() {
                object.insert("spec".to_owned(), json!({"finalizers": finalizers}));
            }
        }
    }
    Ok(object)
}

/// `core/v1 ServiceAccount`: metadata 1, secrets 2, automountServiceAccountToken 4.
fn service_account(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    let mut secrets = Vec::new();
    for field in Reader::new(raw) {
        match field? {
            (2, Wire::Bytes(v)) => secrets.push(Value::Object(strings(
                v,
                &[
                    (1, "kind"),
                    (2, "namespace"),
                    (3, "name"),
                    (4, "uid"),
                    (5, "apiVersion"),
                    (6, "resourceVersion"),
                    (7, "fieldPath"),
                ],
            )?)),
            (4, Wire::Varint(b)) => {
                object.insert("automountServiceAccountToken".to_owned(), json!(b != 0));
            }
            _ => {}
        }
    }
    if !secrets.is_empty() {
        object.insert("secrets".to_owned(), Value::Array(secrets));
    }
    Ok(object)
}

/// `authentication/v1 TokenRequest`: spec 2 {audiences 1, boundObjectRef 3,
/// expirationSeconds 4}.
fn token_request(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        if let (2, Wire::Bytes(v)) = field? {
            let mut spec = Map::new();
            let mut audiences = Vec::new();
            for field in Reader::new(v) {
                match field? {
                    (1, Wire::Bytes(a)) => audiences.push(json!(text(a)?)),
                    (3, Wire::Bytes(bound)) => {
                        let bound = strings(
                            bound,
                            &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")],
                        )?;
                        spec.insert("boundObjectRef".to_owned(), Value::Object(bound));
                    }
                    (4, Wire::Varint(seconds)) => {
                        // int64 on the wire: a negative number is its two's complement.
                        spec.insert("expirationSeconds".to_owned(), json!(seconds as i64));
                    }
                    _ => {}
                }
            }
            spec.insert("audiences".to_owned(), Value::Array(audiences));
            object.insert("spec".to_owned(), Value::Object(spec));
        }
    }
    Ok(object)
}

/// `authentication/v1 TokenReview`: spec 2 {token 1, audiences 2}.
fn token_review(raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut object = metadata_only(raw)?;
    for field in Reader::new(raw) {
        if let (2, Wire::Bytes(v)) = field? {
            let mut spec = Map::new();
            let mut audiences = Vec::new();
            for field in Reader::new(v) {
                match field? {
                    (1, Wire::Bytes(t)) => _ = spec.insert("token".to_owned(), json!(text(t)?)),
                    (2, Wire::Bytes(a)) => audiences.push(json!(text(a)?)),
                    _ => {}
                }
            }
            spec.insert("audiences".to_owned(), Value::Array(audiences));
            object.insert("spec".to_owned(), Value::Object(spec));
        }
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3 | 2, &mut out);
        varint(value.len() as u64, &mut out);
        out.extend_from_slice(value);
        out
    }

    fn number(number: u32, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3, &mut out);
        varint(value, &mut out);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let type_meta = [bytes(1, api_version.as_bytes()), bytes(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), bytes(1, &type_meta), bytes(2, raw)].concat()
    }

    #[test]
    fn kubectls_namespace_service_account_and_token_request_decode() {
        let label = [bytes(1, b"team"), bytes(2, b"a")].concat();
        let meta = [bytes(1, b"ci"), bytes(11, &label)].concat();
        let namespace = decode(&envelope("v1", "Namespace", &bytes(1, &meta))).unwrap();
        assert_eq!(
            namespace,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ci", "labels": {"team": "a"}}})
        );
        let meta = [bytes(1, b"deployer"), bytes(3, b"ci")].concat();
        let account = [bytes(1, &meta), number(4, 0)].concat();
        let account = decode(&envelope("v1", "ServiceAccount", &account)).unwrap();
        assert_eq!(account["metadata"]["namespace"], "ci");
        assert_eq!(account["automountServiceAccountToken"], false);
        let bound = [bytes(1, b"Task"), bytes(3, b"t1")].concat();
        let spec = [bytes(1, b"vault"), bytes(3, &bound), number(4, 1200)].concat();
        let request = [bytes(1, &bytes(1, b"deployer")), bytes(2, &spec)].concat();
        let request = decode(&envelope(
            "authentication.k8s.io/v1",
            "TokenRequest",
            &request,
        ))
        .unwrap();
        assert_eq!(
            request["spec"],
            json!({"audiences": ["vault"], "expirationSeconds": 1200, "boundObjectRef": {"kind": "Task", "name": "t1"}})
        );
    }

    #[test]
    fn malformed_or_unknown_bodies_are_errors_not_panics() {
        assert!(decode(b"").is_err());
        assert!(decode(b"{\"kind\":\"Namespace\"}").is_err());
        assert!(decode(b"k8s\0\x0a\xff\xff").is_err());
        assert!(decode(b"k8s\0\x0a\x05ab").is_err());
        assert!(decode(&[MAGIC, &[0x80; 20]].concat()).is_err());
        let unknown = decode(&envelope("apps/v1", "Deployment", &[])).unwrap_err();
        assert!(unknown.contains("send it as application/json"), "{unknown}");
        // Random bytes: an error or a value, never a panic.
        let mut seed = 7u64;
        for _ in 0..2_000 {
            let mut body = MAGIC.to_vec();
            for _ in 0..(seed % 64) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                body.push((seed >> 33) as u8);
            }
            let _ = decode(&body);
        }
    }
}
