//! The `Resource` trait every kind implements, and `ResourceInfo`, the same facts at run time for built-in and custom kinds.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::meta::{ObjectMeta, TypeMeta};

/// Loom's API group.
pub const GROUP: &str = "loom.dev";
/// Loom's API version.
pub const VERSION: &str = "v1";
/// `GROUP/VERSION`.
pub const API_VERSION: &str = "loom.dev/v1";

/// A kind of object the API serves, known at compile time.
pub trait Resource:
    Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The API group, `loom.dev`.
    const GROUP: &'static str;
    /// The API version, `v1`.
    const VERSION: &'static str;
    /// The kind, CamelCase and singular: `Task`.
    const KIND: &'static str;
    /// The lower-case plural used in paths: `tasks`.
    const PLURAL: &'static str;
    /// The lower-case singular: `task`.
    const SINGULAR: &'static str;
    /// Abbreviations the CLI accepts: `t`.
    const SHORT_NAMES: &'static [&'static str];
    /// Whether objects live in a namespace.
    const NAMESPACED: bool;
    /// Whether the kind has a `status` subresource.
    const HAS_STATUS: bool;

    /// `GROUP/VERSION`, e.g. `loom.dev/v1`.
    fn api_version() -> String {
        if Self::GROUP.is_empty() {
            Self::VERSION.to_string()
        } else {
            format!("{}/{}", Self::GROUP, Self::VERSION)
        }
    }

    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;

    /// The object's metadata, to change.
    fn meta_mut(&mut self) -> &mut ObjectMeta;

    /// The kind's facts as a run-time value.
    fn info() -> ResourceInfo {
        ResourceInfo {
            group: Self::GROUP.to_string(),
            version: Self::VERSION.to_string(),
            kind: Self::KIND.to_string(),
            plural: Self::PLURAL.to_string(),
            singular: Self::SINGULAR.to_string(),
            short_names: Self::SHORT_NAMES.iter().map(|s| s.to_string()).collect(),
            list_kind: format!("{}List", Self::KIND),
            namespaced: Self::NAMESPACED,
            has_status: Self::HAS_STATUS,
        }
    }

    /// `apiVersion` and `kind` for this kind.
    fn type_meta() -> TypeMeta {
        TypeMeta {
            api_version: Self::api_version(),
            kind: Self::KIND.to_string(),
        }
    }
}

/// What the API needs to know about a kind, as owned data, so kinds defined by a
/// `ResourceDefinition` can be described at run time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ResourceInfo {
    /// The API group.
    pub group: String,
    /// The API version.
    pub version: String,
    /// The kind.
    pub kind: String,
    /// The lower-case plural used in paths.
    pub plural: String,
    /// The lower-case singular.
    pub singular: String,
    /// Abbreviations.
    pub short_names: Vec<String>,
    /// The kind of its lists, normally `<Kind>List`.
    pub list_kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the kind has a `status` subresource.
    pub has_status: bool,
}

impl ResourceInfo {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group and plural, as error messages name the resource (`jobs.loom.dev`).
    pub fn group_resource(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.plural.clone(),
        }
    }

    /// The group and kind, as validation errors name the kind (`Job.loom.dev`).
    pub fn group_kind(&self) -> GroupKind {
        GroupKind {
            group: self.group.clone(),
            kind: self.kind.clone(),
        }
    }

    /// Whether `name` is the plural, the singular, the kind (any case) or a short name.
    pub fn is_named(&self, name: &str) -> bool {
        name == self.plural
            || name == self.singular
            || name.eq_ignore_ascii_case(&self.kind)
            || self.short_names.iter().any(|s| s == name)
    }
}

/// A resource (plural) in a group, as Kubernetes' `schema.GroupResource`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupResource {
    /// The API group; empty for the core group.
    pub group: String,
    /// The plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// A group and a plural.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> GroupResource {
        GroupResource {
            group: group.into(),
            resource: resource.into(),
        }
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// A kind in a group, as Kubernetes' `schema.GroupKind`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupKind {
    /// The API group; empty for the core group.
    pub group: String,
    /// The kind.
    pub kind: String,
}

impl GroupKind {
    /// A group and a kind.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> GroupKind {
        GroupKind {
            group: group.into(),
            kind: kind.into(),
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// Implements [`Resource`] for a kind struct with `api_version`, `kind` and `metadata` fields.
macro_rules! impl_resource {
    (
        $ty:ident,
        kind: $kind:literal,
        $($rest:tt)*
    ) => {
        $crate::resource::impl_resource!(
            $ty,
            group: $crate::resource::GROUP,
            version: $crate::resource::VERSION,
            kind: $kind,
            $($rest)*
        );
    };
    (
        $ty:ident,
        group: $group:expr,
        version: $version:expr,
        kind: $kind:literal,
        plural: $plural:literal,
        singular: $singular:literal,
        short_names: [$($short:literal),*],
        namespaced: $namespaced:literal,
        has_status: $has_status:literal $(,)?
    ) => {
        impl $crate::resource::Resource for $ty {
            const GROUP: &'static str = $group;
            const VERSION: &'static str = $version;
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            const SINGULAR: &'static str = $singular;
            const SHORT_NAMES: &'static [&'static str] = &[$($short),*];
            const NAMESPACED: bool = $namespaced;
            const HAS_STATUS: bool = $has_status;

            fn meta(&self) -> &$crate::meta::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut $crate::meta::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// For a kind struct of the shape `{api_version, kind, metadata, spec, status: Option<_>}`:
/// `Default` with the right `apiVersion`/`kind` and a `new(name, spec)` constructor.
macro_rules! impl_spec_kind {
    ($ty:ident, $spec:ty) => {
        impl Default for $ty {
            fn default() -> Self {
                $ty {
                    api_version: $crate::resource::API_VERSION.to_string(),
                    kind: <$ty as $crate::resource::Resource>::KIND.to_string(),
                    metadata: $crate::meta::ObjectMeta::default(),
                    spec: <$spec>::default(),
                    status: None,
                }
            }
        }
        $crate::resource::impl_spec_kind!(@new $ty, $spec);
    };
    ($ty:ident, $spec:ty, no_status) => {
        impl Default for $ty {
            fn default() -> Self {
                $ty {
                    api_version: $crate::resource::API_VERSION.to_string(),
                    kind: <$ty as $crate::resource::Resource>::KIND.to_string(),
                    metadata: $crate::meta::ObjectMeta::default(),
                    spec: <$spec>::default(),
                }
            }
        }
        $crate::resource::impl_spec_kind!(@new $ty, $spec);
    };
    (@new $ty:ident, $spec:ty) => {
        impl $ty {
            /// An object with this name and spec (and no status).
            pub fn new(name: impl Into<String>, spec: $spec) -> Self {
                $ty {
                    metadata: $crate::meta::ObjectMeta::named(name),
                    spec,
                    ..Self::default()
                }
            }
        }
    };
}

pub(crate) use impl_resource;
pub(crate) use impl_spec_kind;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        assert_eq!(
            GroupResource::new("loom.dev", "jobs").to_string(),
            "jobs.loom.dev"
        );
        assert_eq!(GroupResource::new("", "pods").to_string(), "pods");
        assert_eq!(
            GroupKind::new("loom.dev", "Job").to_string(),
            "Job.loom.dev"
        );
        assert_eq!(GroupKind::new("", "Pod").to_string(), "Pod");
    }
}
