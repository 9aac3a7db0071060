//! Credentials in request headers, read the same way by every Loom server
//! (the API server and the nodelet's endpoint).

use http::{HeaderMap, header};

/// The bearer token of an `Authorization` header: none without the header; an
/// error for one that is not `Bearer TOKEN`.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not \"Bearer TOKEN\"")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization header's scheme is not Bearer");
    }
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("the Authorization header's bearer token is empty or has spaces");
    }
    Ok(Some(token))
}
