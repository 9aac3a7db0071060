//! The `#[resource(...)]` attribute: parsed, checked against the API's naming rules, defaults filled in.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitStr, Token, Type};

/// The keys `#[resource(...)]` accepts, as listed in error messages.
const KEYS: &str = "group, version, kind, plural, singular, shortname, namespaced, status";

/// The group the apiserver keeps for its built-in kinds.
const RESERVED_GROUP: &str = "loom.dev";

/// What `#[resource(...)]` says about a kind, checked, with defaults filled in.
pub(crate) struct Kind {
    /// The spec struct the derive is on.
    pub spec: Ident,
    /// The generated struct's name: the kind, spanned at its `kind = ".."`.
    pub ident: Ident,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    pub status: Option<Type>,
}

/// The attribute as written, before checks and defaults.
#[derive(Default)]
struct Written {
    group: Option<LitStr>,
    version: Option<LitStr>,
    kind: Option<LitStr>,
    plural: Option<LitStr>,
    singular: Option<LitStr>,
    short_names: Vec<LitStr>,
    namespaced: Option<Span>,
    status: Option<LitStr>,
}

/// Errors found so far; all are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Kind {
    /// Reads and checks the spec struct and its `#[resource(...)]` attributes.
    pub(crate) fn from_input(input: &DeriveInput) -> syn::Result<Kind> {
        let mut errors = Errors::default();
        check_shape(input, &mut errors);
        let attrs: Vec<&Attribute> = input
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("resource"))
            .collect();
        let mut written = Written::default();
        for attr in &attrs {
            if let Err(error) = parse_attr(attr, &mut written, &mut errors) {
                errors.push(error);
            }
        }
        // Where to point when a key is missing: the attribute, else the struct's name.
        let missing = |message: String| match attrs.first() {
            Some(attr) => syn::Error::new_spanned(attr, message),
            None => syn::Error::new(input.ident.span(), message),
        };
        let example = "#[resource(group = \"example.com\", version = \"v1\", kind = \"Backup\")]";
        if attrs.is_empty() {
            errors.push(missing(format!(
                "#[derive(Resource)] needs the kind's names: add {example}"
            )));
        } else {
            for (key, value, hint) in [
                (
                    "group",
                    &written.group,
                    "the API group, e.g. `group = \"example.com\"`",
                ),
                (
                    "version",
                    &written.version,
                    "the API version, e.g. `version = \"v1\"`",
                ),
                ("kind", &written.kind, "the kind, e.g. `kind = \"Backup\"`"),
            ] {
                if value.is_none() {
                    errors.push(missing(format!(
                        "#[resource(...)] is missing `{key}`: {hint}"
                    )));
                }
            }
        }

        if let Some(group) = &written.group {
            check_group(group, &mut errors);
        }
        if let Some(version) = &written.version
            && !is_dns_label(&version.value())
        {
            errors.at(
                version.span(),
                format_args!(
                    "version `{}` must be lower-case (a DNS label: letters a-z, digits and `-`), e.g. `v1` or `v1beta1`",
                    version.value()
                ),
            );
        }
        if let Some(kind) = &written.kind {
            check_kind(kind, &input.ident, &mut errors);
        }
        for (key, value) in [("plural", &written.plural), ("singular", &written.singular)] {
            if let Some(value) = value {
                check_lower_case(key, value, &mut errors);
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for short in &written.short_names {
            check_lower_case("shortname", short, &mut errors);
            if seen.contains(&short.value()) {
                errors.at(
                    short.span(),
                    format_args!("duplicate shortname `{}`", short.value()),
                );
            }
            seen.push(short.value());
        }
        let status = match &written.status {
            Some(status) => match status.parse::<Type>() {
                Ok(ty) => Some(ty),
                Err(_) => {
                    errors.at(
                        status.span(),
                        format_args!(
                            "status `{}` is not a type: name the status struct, e.g. `status = \"BackupStatus\"`",
                            status.value()
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        errors.finish()?;

        let (Some(group), Some(version), Some(kind_lit)) =
            (written.group, written.version, written.kind)
        else {
            // Unreachable: a missing key was reported above.
            return Err(missing("#[resource(...)] is incomplete".to_string()));
        };
        let kind = kind_lit.value();
        let lower = kind.to_ascii_lowercase();
        Ok(Kind {
            spec: input.ident.clone(),
            ident: Ident::new(&kind, kind_lit.span()),
            group: group.value(),
            version: version.value(),
            plural: written
                .plural
                .map_or_else(|| format!("{lower}s"), |p| p.value()),
            singular: written.singular.map_or(lower, |s| s.value()),
            short_names: written.short_names.iter().map(LitStr::value).collect(),
            namespaced: written.namespaced.is_some(),
            status,
            kind,
        })
    }
}

/// The spec must be a plain struct with named fields: it becomes the `spec` object.
fn check_shape(input: &DeriveInput, errors: &mut Errors) {
    let what = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(_) => None,
            Fields::Unnamed(fields) => Some((fields.span(), "a tuple struct")),
            Fields::Unit => Some((input.ident.span(), "a unit struct")),
        },
        Data::Enum(data) => Some((data.enum_token.span, "an enum")),
        Data::Union(data) => Some((data.union_token.span, "a union")),
    };
    if let Some((span, what)) = what {
        errors.at(
            span,
            format_args!(
                "#[derive(Resource)] goes on the spec struct, a struct with named fields (`struct BackupSpec {{ .. }}`), not on {what}"
            ),
        );
    }
    if !input.generics.params.is_empty() {
        errors.at(
            input.generics.span(),
            "#[derive(Resource)] does not support generic spec structs: a kind has one schema",
        );
    }
}

/// Reads one `#[resource(...)]` into `written`; errors in a key are recorded and parsing goes on.
fn parse_attr(attr: &Attribute, written: &mut Written, errors: &mut Errors) -> syn::Result<()> {
    attr.parse_nested_meta(|meta| {
        let Some(key) = meta.path.get_ident().map(Ident::to_string) else {
            errors.at(
                meta.path.span(),
                format_args!("unknown key in #[resource(...)]; expected one of: {KEYS}"),
            );
            return skip_value(&meta);
        };
        let slot = match key.as_str() {
            "group" => &mut written.group,
            "version" => &mut written.version,
            "kind" => &mut written.kind,
            "plural" => &mut written.plural,
            "singular" => &mut written.singular,
            "status" => &mut written.status,
            "shortname" => {
                written.short_names.push(meta.value()?.parse()?);
                return Ok(());
            }
            "namespaced" => {
                if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                    errors.at(
                        meta.path.span(),
                        "`namespaced` takes no value: write `namespaced` for a namespaced kind, leave it out for a cluster-scoped one",
                    );
                    skip_value(&meta)?;
                } else if written.namespaced.is_some() {
                    errors.at(meta.path.span(), "duplicate `namespaced`");
                }
                written.namespaced = Some(meta.path.span());
                return Ok(());
            }
            _ => {
                let hint = match key.as_str() {
                    "shortnames" | "short_name" | "short_names" | "shortName" | "shortNames" => {
                        "; write `shortname = \"..\"` once per short name".to_string()
                    }
                    "scope" | "cluster" | "namespace" => {
                        "; write `namespaced` for a namespaced kind, leave it out for a cluster-scoped one"
                            .to_string()
                    }
                    _ => format!("; expected one of: {KEYS}"),
                };
                errors.at(
                    meta.path.span(),
                    format_args!("unknown key `{key}` in #[resource(...)]{hint}"),
                );
                return skip_value(&meta);
            }
        };
        let value: LitStr = meta.value()?.parse()?;
        if slot.is_some() {
            errors.at(meta.path.span(), format_args!("duplicate `{key}`"));
        }
        *slot = Some(value);
        Ok(())
    })
}

/// Consumes a key's `= value` or `(...)`, so parsing can go on after an error in it.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::Group>()?;
    }
    Ok(())
}

fn check_group(group: &LitStr, errors: &mut Errors) {
    let value = group.value();
    if !is_dns_subdomain(&value) || !value.contains('.') {
        errors.at(
            group.span(),
            format_args!(
                "group `{value}` must be a lower-case DNS subdomain with at least one dot, e.g. `example.com`"
            ),
        );
    } else if value == RESERVED_GROUP {
        errors.at(
            group.span(),
            format_args!("the `{RESERVED_GROUP}` group is reserved for Loom's built-in kinds"),
        );
    }
}

fn check_kind(kind: &LitStr, spec: &Ident, errors: &mut Errors) {
    let value = kind.value();
    if !is_camel_case(&value) {
        let suggestion = camel_case(&value);
        let hint = if is_camel_case(&suggestion) {
            format!(": did you mean `{suggestion}`?")
        } else {
            ", e.g. `Backup`".to_string()
        };
        errors.at(
            kind.span(),
            format_args!(
                "kind `{value}` must be CamelCase (an upper-case letter, then letters and digits){hint}"
            ),
        );
    } else if value == "Self" {
        errors.at(kind.span(), "kind `Self` is not a usable struct name");
    } else if *spec == value {
        errors.at(
            kind.span(),
            format_args!(
                "kind `{value}` is the spec struct's own name: the derive generates the struct `{value}`, so name the spec `{value}Spec`"
            ),
        );
    }
}

fn check_lower_case(key: &str, value: &LitStr, errors: &mut Errors) {
    let text = value.value();
    if is_dns_label(&text) {
        return;
    }
    let lower = text.to_ascii_lowercase();
    let hint = if is_dns_label(&lower) {
        format!(": did you mean `{lower}`?")
    } else {
        String::new()
    };
    errors.at(
        value.span(),
        format_args!(
            "{key} `{text}` must be lower-case (a DNS label: letters a-z, digits and `-`){hint}"
        ),
    );
}

/// `[A-Z][A-Za-z0-9]*`, as the apiserver checks a kind.
fn is_camel_case(value: &str) -> bool {
    value.starts_with(|c: char| c.is_ascii_uppercase())
        && value.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `backup-job` → `BackupJob`, for a suggestion.
fn camel_case(value: &str) -> String {
    value
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// An RFC 1123 label: at most 63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

/// An RFC 1123 subdomain: at most 253 characters of dot-separated labels.
fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_camel_case("Backup2"));
        assert!(!is_camel_case("backup"));
        assert!(!is_camel_case("Back-up"));
        assert!(!is_camel_case(""));
        assert_eq!(camel_case("backup-job"), "BackupJob");
        assert!(is_dns_label("v1beta1"));
        assert!(!is_dns_label("Backups"));
        assert!(!is_dns_label("-b"));
        assert!(is_dns_subdomain("example.com"));
        assert!(!is_dns_subdomain("example..com"));
    }
}
