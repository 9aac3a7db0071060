//! Loom API types: the kinds, object metadata, quantities, label selectors, schemas, strict decoding and pure validation.
//!
//! Pure data and pure functions: no I/O and no async runtime. Every kind implements
//! [`Resource`] (its group, version, names and scope), [`Validate`] (all problems at once,
//! Kubernetes-style messages) and `schemars::JsonSchema`.
//!
//! ```
//! use api_types::{Quantity, Selector, Task, TaskSpec, Validate};
//!
//! let mut task = Task::new("hello", TaskSpec { image: "busybox".into(), ..TaskSpec::default() });
//! task.metadata.namespace = "default".into();
//! task.metadata.labels.insert("app".into(), "hello".into());
//! assert!(task.validate().is_empty());
//! assert!(Selector::parse("app in (hello, world)").unwrap().matches(&task.metadata.labels));
//! assert_eq!(Quantity::parse("1024Mi").unwrap().to_string(), "1Gi");
//! ```

#![warn(missing_docs)]

pub mod decode;
pub mod kinds;
pub mod meta;
pub mod names;
pub mod options;
pub mod quantity;
pub mod resource;
pub mod schema;
pub mod selector;
pub mod status;
pub mod validation;
pub mod watch;
pub mod well_known;

pub use decode::{
    DecodeError, DecodeProblem, DecodeProblemKind, Decoded, FieldValidation, YamlDocument,
    decode_value, from_json_str, from_json_value, from_json_value_with, from_yaml_str,
    yaml_documents,
};
pub use kinds::*;
pub use meta::{
    Condition, ConditionStatus, List, ListMeta, ObjectMeta, ObjectReference, OwnerReference,
    TypeMeta, find_condition, set_condition,
};
pub use quantity::{Format, IntOrString, IntOrStringError, Quantity, QuantityError};
pub use resource::{API_VERSION, GROUP, GroupKind, GroupResource, Resource, ResourceInfo, VERSION};
pub use schema::{json_schema, openapi_v3_components, openapi_v3_schema};
pub use selector::{
    FieldSelector, FieldSelectorError, Operator, Requirement, RequirementError, Selector,
    SelectorError,
};
pub use status::{Status, StatusCause, StatusDetails, StatusOutcome};
pub use validation::{FieldError, FieldErrorKind, Validate};
pub use watch::{Bookmark, WatchEvent};
