//! The small text decoders: label and field selectors, quantities (api-types,
//! as the API server parses them), loomctl's durations and manifests. Each
//! decoded value prints back to text that decodes to the same value.

use std::collections::BTreeMap;

use api_types::{FieldSelector, Quantity, Selector};
use serde_json::{Value, json};

/// The input as text; other bytes are not a case (the HTTP layer and
/// `read_to_string` refuse them first).
fn text(input: &[u8]) -> Option<&str> {
    std::str::from_utf8(input).ok()
}

/// Label sets a selector is matched against.
fn label_sets() -> Vec<BTreeMap<String, String>> {
    let set = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>()
    };
    vec![
        set(&[]),
        set(&[("app", "web")]),
        set(&[("app", "web"), ("tier", "front")]),
        set(&[("app", ""), ("x.io/y", "1")]),
        set(&[("env", "prod"), ("version", "10")]),
    ]
}

/// `label_selector`: `Selector::parse`; printed and parsed again it is the
/// same selector and matches the same labels.
pub fn label_selector(input: &[u8]) -> Result<(), String> {
    let Some(text) = text(input) else {
        return Ok(());
    };
    let Ok(selector) = Selector::parse(text) else {
        return Ok(());
    };
    let printed = selector.to_string();
    let again = Selector::parse(&printed)
        .map_err(|e| format!("{text:?} parsed, but its printed form {printed:?} does not: {e}"))?;
    if again != selector {
        return Err(format!(
            "{text:?} printed as {printed:?} parses to another selector: {selector:?} vs {again:?}"
        ));
    }
    for labels in label_sets() {
        if selector.matches(&labels) != again.matches(&labels) {
            return Err(format!("{text:?} and {printed:?} disagree on {labels:?}"));
        }
    }
    Ok(())
}

/// `field_selector`: `FieldSelector::parse`; printed and parsed again it is
/// the same selector.
pub fn field_selector(input: &[u8]) -> Result<(), String> {
    let Some(text) = text(input) else {
        return Ok(());
    };
    let Ok(selector) = FieldSelector::parse(text) else {
        return Ok(());
    };
    let printed = selector.to_string();
    let again = FieldSelector::parse(&printed)
        .map_err(|e| format!("{text:?} parsed, but its printed form {printed:?} does not: {e}"))?;
    if again != selector {
        return Err(format!(
            "{text:?} printed as {printed:?} parses to another selector: {selector:?} vs {again:?}"
        ));
    }
    let object = json!({"metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    if selector.matches_json(&object) != again.matches_json(&object) {
        return Err(format!("{text:?} and {printed:?} disagree"));
    }
    Ok(())
}

/// `quantity`: `Quantity::parse`; its printed form parses to the same amount
/// and prints the same, and JSON decoding agrees with parsing.
pub fn quantity(input: &[u8]) -> Result<(), String> {
    let Some(text) = text(input) else {
        return Ok(());
    };
    let parsed = Quantity::parse(text);
    let from_json = serde_json::from_value::<Quantity>(Value::String(text.to_owned()));
    if parsed.is_ok() != from_json.is_ok() {
        return Err(format!(
            "{text:?}: parse says {parsed:?}, JSON decoding says {from_json:?}"
        ));
    }
    let Ok(quantity) = parsed else {
        return Ok(());
    };
    let printed = quantity.to_string();
    let again = Quantity::parse(&printed)
        .map_err(|e| format!("{text:?} parsed, but its printed form {printed:?} does not: {e}"))?;
    if again != quantity || again.nano_value() != quantity.nano_value() {
        return Err(format!(
            "{text:?} is {} nano-units; printed as {printed:?} it is {}",
            quantity.nano_value(),
            again.nano_value()
        ));
    }
    if again.to_string() != printed {
        return Err(format!(
            "{text:?} prints as {printed:?}, which prints as {:?}",
            again.to_string()
        ));
    }
    let encoded = serde_json::to_value(quantity).map_err(|e| format!("cannot encode: {e}"))?;
    let decoded: Quantity = serde_json::from_value(encoded.clone())
        .map_err(|e| format!("{text:?} encodes as {encoded}, which does not decode: {e}"))?;
    if decoded != quantity {
        return Err(format!("{text:?} does not survive JSON: {encoded}"));
    }
    Ok(())
}

/// `duration`: loomctl's `--timeout` and `--for` durations: never more than
/// the year it allows, and a whole number of seconds reads back the same.
pub fn duration(input: &[u8]) -> Result<(), String> {
    let Some(text) = text(input) else {
        return Ok(());
    };
    let Ok(duration) = loomctl::fuzz::duration(text) else {
        return Ok(());
    };
    if duration.as_secs_f64() > 366.0 * 86400.0 {
        return Err(format!("{text:?} is {duration:?}, more than a year"));
    }
    let seconds = duration.as_secs();
    let again = loomctl::fuzz::duration(&format!("{seconds}s"))
        .map_err(|e| format!("{text:?} is {seconds} s, but \"{seconds}s\" is refused: {e}"))?;
    if again.as_secs() != seconds {
        return Err(format!("\"{seconds}s\" reads as {again:?}"));
    }
    Ok(())
}

/// `manifest`: loomctl's manifest reading (multi-document YAML or JSON,
/// `List`s unpacked). Errors name the file; every document is named after
/// it; each document written back as a JSON file reads the same.
pub fn manifest(input: &[u8]) -> Result<(), String> {
    const NAME: &str = "fuzz.yaml";
    let Some(text) = text(input) else {
        return Ok(());
    };
    let documents = match loomctl::fuzz::manifest(NAME, text) {
        Ok(documents) => documents,
        Err(e) => {
            let message = format!("{e:#}");
            if !message.starts_with(NAME) {
                return Err(format!("an error does not name the file: {message}"));
            }
            return Ok(());
        }
    };
    for (origin, _) in &documents {
        if !origin.starts_with(NAME) {
            return Err(format!(
                "a document is named {origin:?}, not after the file"
            ));
        }
    }
    // Written back; a List's items that are Lists themselves would unpack
    // the second time, so those are not compared.
    let nested = documents.iter().any(|(_, v)| {
        v.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
    });
    if nested || documents.iter().any(|(_, v)| !v.is_object()) {
        return Ok(());
    }
    // Each document written back as a JSON file (`get -o json`) reads the same.
    for (origin, value) in &documents {
        let written = serde_json::to_string(value).map_err(|e| format!("cannot encode: {e}"))?;
        let again = loomctl::fuzz::manifest(NAME, &written).map_err(|e| {
            format!("{origin} written back as JSON does not read: {e:#}\n{written}")
        })?;
        if again.len() != 1 || &again[0].1 != value {
            return Err(format!(
                "{origin} written back as JSON reads differently:\n  before {value}\n  after  {again:?}"
            ));
        }
    }
    Ok(())
}
