//! Reading manifests: files, directories (`-R` for subdirectories) and stdin,
//! multi-document YAML or JSON, each document named by file and index in errors.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// One object from a manifest.
#[derive(Debug)]
pub(crate) struct Document {
    /// Where it came from (`jobs.yaml: document 2`).
    pub origin: String,
    /// The object.
    pub value: Value,
}

/// Every document in `paths`.
pub(crate) fn read(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<Document>> {
    if paths.is_empty() {
        bail!("no manifests given: use -f FILE, -f DIR or -f -");
    }
    let mut documents = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            parse("stdin", &text, &mut documents)?;
        } else if path.is_dir() {
            for file in files_in(path, recursive)? {
                read_file(&file, &mut documents)?;
            }
        } else {
            read_file(path, &mut documents)?;
        }
    }
    Ok(documents)
}

fn files_in(dir: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                files.extend(files_in(&path, true)?);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(files)
}

fn read_file(path: &Path, documents: &mut Vec<Document>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&path.display().to_string(), &text, documents)
}

pub(crate) fn parse(name: &str, text: &str, documents: &mut Vec<Document>) -> anyhow::Result<()> {
    // A JSON object is read as JSON (as kubectl does): YAML refuses some
    // characters JSON strings may hold unescaped (DEL, C1 controls), so
    // `get -o json` output would not apply again.
    let json = text
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Value>(text).ok())
        .flatten();
    let parsed = match json {
        Some(value) => vec![api_types::YamlDocument { index: 0, value }],
        None => {
            api_types::decode::yaml_documents(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        }
    };
    let several = parsed.len() > 1;
    for doc in parsed {
        let origin = if several {
            format!("{name}: document {}", doc.index + 1)
        } else {
            name.to_owned()
        };
        // A `List` (as `get -o yaml` prints) holds its objects in `items`.
        if doc
            .value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k == "List" || k.ends_with("List"))
            && let Some(items) = doc.value.get("items").and_then(Value::as_array)
        {
            for (i, item) in items.iter().enumerate() {
                documents.push(Document {
                    origin: format!("{origin}: item {}", i + 1),
                    value: item.clone(),
                });
            }
            continue;
        }
        if !doc.value.is_object() {
            bail!("{origin}: a manifest must be an object with apiVersion, kind and metadata");
        }
        documents.push(Document {
            origin,
            value: doc.value,
        });
    }
    Ok(())
}

/// A manifest's object resolved against the server: its kind, namespace, name,
/// and the Api that reaches it.
pub(crate) struct Target {
    /// The kind.
    pub info: api_types::ResourceInfo,
    /// The namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The kind in that namespace.
    pub api: client::Api<client::DynamicObject>,
}

impl Document {
    /// Resolves the document; the error names the document and what is wrong.
    pub fn target(
        &self,
        kinds: &crate::kinds::Kinds,
        ctx: &crate::Context,
    ) -> Result<Target, String> {
        let text = |pointer: &str| {
            self.value
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        let (api_version, kind, name) =
            (text("/apiVersion"), text("/kind"), text("/metadata/name"));
        if api_version.is_empty() || kind.is_empty() {
            return Err(format!("{}: apiVersion and kind are required", self.origin));
        }
        if name.is_empty() {
            return Err(format!(
                "{}: metadata.name: required (apply needs a name)",
                self.origin
            ));
        }
        let Some(info) = kinds.by_type(api_version, kind) else {
            return Err(format!(
                "{}: the server does not serve {kind} in {api_version}",
                self.origin
            ));
        };
        let namespace = match text("/metadata/namespace") {
            "" => ctx.namespace.as_str(),
            ns => ns,
        };
        let namespace = if info.namespaced {
            namespace.to_owned()
        } else {
            String::new()
        };
        Ok(Target {
            api: client::Api::namespaced_with(ctx.client.clone(), &namespace, info),
            info: info.clone(),
            namespace,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_characters_yaml_refuses_is_read_as_json() {
        // Found by loom-fuzz: DEL and C1 controls are valid unescaped in JSON
        // strings but not in YAML, so `get -o json` output did not read back.
        let text = "{\"apiVersion\":\"loom.dev/v1\",\"kind\":\"Task\",\"metadata\":{\"name\":\"a\"},\"spec\":{\"args\":[\"x\u{7f}\u{80}\"]}}";
        let mut documents = Vec::new();
        parse("t.json", text, &mut documents).expect("valid JSON reads");
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].value["spec"]["args"][0], "x\u{7f}\u{80}");
        assert_eq!(documents[0].origin, "t.json");
        // Not one JSON object: read as YAML, errors name the file.
        let mut documents = Vec::new();
        let error = parse("t.json", "{\"a\": 1}\n{\"b\": 2}", &mut documents)
            .expect_err("two JSON objects are not one document");
        assert!(error.to_string().starts_with("t.json: "), "{error}");
    }
}
