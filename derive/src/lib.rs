//! `#[derive(Resource)]`: a kind's struct, its `Resource` impl and its ResourceDefinition, from a spec struct.
//!
//! In the style of kube-derive's `CustomResource`: put the derive on the struct that is the
//! kind's `spec`, name the kind in `#[resource(...)]`, and get the whole object type.
//!
//! ```
//! use api_types::{Resource, Validate};
//! use loom_derive::Resource;
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
//! #[resource(group = "example.com", version = "v1", kind = "Backup", plural = "backups", namespaced, status = "BackupStatus", shortname = "bk")]
//! #[serde(rename_all = "camelCase")]
//! pub struct BackupSpec {
//!     pub schedule: String,
//!     pub target: String,
//! }
//!
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
//! #[serde(rename_all = "camelCase")]
//! pub struct BackupStatus {
//!     pub last_run: Option<String>,
//! }
//!
//! let backup = Backup::new("nightly", BackupSpec { schedule: "0 3 * * *".into(), target: "s3://b".into() });
//! assert_eq!(backup.api_version, "example.com/v1");
//! assert_eq!(Backup::PLURAL, "backups");
//! assert!(Backup::NAMESPACED && Backup::HAS_STATUS);
//!
//! let rd = Backup::resource_definition();
//! assert_eq!(rd.metadata.name, "backups.example.com");
//! assert!(rd.validate().is_empty());
//! ```
//!
//! # What it generates
//!
//! For a spec struct `BackupSpec` with `kind = "Backup"`, with the spec's visibility:
//!
//! - `struct Backup { api_version, kind, metadata: ObjectMeta, spec: BackupSpec, status:
//!   Option<BackupStatus> }`, the `status` field only when `status = ".."` is given. It
//!   serializes as `{"apiVersion", "kind", "metadata", "spec", "status"}` (a `None` status is
//!   left out; missing fields take their defaults, as for the built-in kinds) and derives
//!   `Clone`, `Debug`, `PartialEq`, `Serialize`, `Deserialize` and `JsonSchema` (with
//!   `#[schemars(deny_unknown_fields)]`).
//! - `impl Default for Backup`, with `apiVersion` and `kind` filled in, and
//!   `Backup::new(name, spec)`.
//! - `impl api_types::Resource for Backup`, so `Backup::info()`, `Backup::api_version()` and
//!   the rest of the trait work.
//! - `Backup::resource_definition()`, the `api_types::ResourceDefinition` named
//!   `<plural>.<group>` that has the API serve the kind: its names, scope and one served,
//!   stored version whose `schema.openAPIV3Schema` is the object's OpenAPI v3 schema (self
//!   contained, subschemas inlined) describing `spec` and `status` under `properties`; the
//!   server adds `apiVersion`, `kind` and `metadata`. With a status, the version has a
//!   `status` subresource.
//!
//! # `#[resource(...)]`
//!
//! | key | | |
//! |---|---|---|
//! | `group = ".."` | required | The API group, a DNS subdomain with a dot (`example.com`); not `loom.dev`. |
//! | `version = ".."` | required | The API version, a DNS label (`v1`, `v1beta1`). |
//! | `kind = ".."` | required | The kind, CamelCase (`Backup`); also the generated struct's name. |
//! | `plural = ".."` | | The lower-case plural used in paths; the lower-cased kind + `s` by default. |
//! | `singular = ".."` | | The lower-case singular; the lower-cased kind by default. |
//! | `shortname = ".."` | repeatable | An abbreviation the CLI accepts. |
//! | `namespaced` | | Objects live in a namespace; without it the kind is cluster-scoped. |
//! | `status = ".."` | | The status type; adds the `status` field and subresource. |
//!
//! Mistakes (a missing or unknown key, a kind that is not CamelCase, a plural that is not
//! lower-case, the derive on an enum or a tuple struct…) are compile errors pointing at them.
//!
//! # Requirements
//!
//! The generated code names `::api_types`, `::serde` and `::schemars`, so the crate using the
//! derive must depend on `api-types`, `serde` (with `derive`) and `schemars` under those
//! names. The spec type must implement `Clone`, `Debug`, `Default`, `PartialEq`,
//! `Serialize`, `Deserialize` and `JsonSchema`; the status type the same but `Default`.
//! Types that refer to themselves (recursive types) cannot be inlined into a self-contained
//! schema and are not supported.

#![warn(missing_docs)]

mod attrs;
mod expand;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Generates a Loom kind from its spec struct: the kind's struct, `Default`, `new`, its
/// `api_types::Resource` impl and `resource_definition()`. See the [crate docs](crate) for
/// the `#[resource(...)]` keys and what is generated.
#[proc_macro_derive(Resource, attributes(resource))]
pub fn derive_resource(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match attrs::Kind::from_input(&input) {
        Ok(kind) => expand::expand(&input, &kind).into(),
        Err(error) => error.to_compile_error().into(),
    }
}
