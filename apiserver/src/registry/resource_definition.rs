//! ResourceDefinitions: each makes the API serve a custom kind, at once on
//! this server (others follow the stored definitions); its objects go with it.

use api_types::{FieldError, ResourceDefinition};
use async_trait::async_trait;
use serde_json::Value;

use super::{Column, Hooks, Rest, Typed, field};
use crate::generic::GenericStore;
use crate::object;

/// The ResourceDefinition REST storage: its strategy and the hooks that serve
/// and retire its kind.
pub fn rest() -> Rest {
    Rest::new(strategy()).hooks(DefinitionHooks)
}

/// The ResourceDefinition strategy.
pub fn strategy() -> Typed<ResourceDefinition> {
    Typed::new(vec![
        Column {
            name: "Group",
            kind: "string",
            description: "The API group of the kind",
            priority: 0,
            cell: |o| field(o, "spec.group"),
        },
        Column {
            name: "Kind",
            kind: "string",
            description: "The kind served",
            priority: 0,
            cell: |o| field(o, "spec.names.kind"),
        },
    ])
    .validate_admitted(check_definition)
}

/// The schema of every version must compile; the built-in group is taken.
fn check_definition(object: &Value) -> Vec<FieldError> {
    let definition: ResourceDefinition = match serde_json::from_value(object.clone()) {
        Ok(definition) => definition,
        Err(error) => return vec![FieldError::invalid("", "", error.to_string())],
    };
    let mut errors = Vec::new();
    if definition.spec.group == api_types::resource::GROUP {
        errors.push(FieldError::invalid(
            "spec.group",
            definition.spec.group.as_str(),
            "the loom.dev group is reserved for built-in kinds",
        ));
    }
    for (i, version) in definition.spec.versions.iter().enumerate() {
        if let Some(schema) = &version.schema
            && let Err(error) = crate::schema::SchemaValidator::new(
                schema.open_api_v3_schema.clone(),
                crate::schema::Dialect::OpenApiV3,
            )
        {
            errors.push(FieldError::invalid(
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "",
                error.to_string(),
            ));
        }
    }
    errors
}

/// Serves a written definition's kind at once; a deleted one's stops, and its
/// objects go.
#[derive(Clone, Copy, Debug)]
struct DefinitionHooks;

#[async_trait]
impl Hooks for DefinitionHooks {
    fn after_write(&self, store: &GenericStore, object: &Value) {
        match serde_json::from_value::<ResourceDefinition>(object.clone()) {
            Ok(definition) => {
                if let Err(error) = store.catalog.apply_definition(&definition) {
                    tracing::warn!(%error, "cannot serve resource definition");
                }
            }
            Err(error) => tracing::warn!(%error, "unreadable resource definition"),
        }
    }

    async fn after_remove(&self, store: &GenericStore, object: &Value) {
        store.catalog.remove_definition(object::name(object));
        let group = api_types::selector::json_field(object, "spec.group").unwrap_or_default();
        let plural =
            api_types::selector::json_field(object, "spec.names.plural").unwrap_or_default();
        if group.is_empty() || plural.is_empty() {
            return;
        }
        if let Err(error) = store.delete_prefix(&format!("{group}/{plural}/")).await {
            tracing::warn!(error = %error.0.message, "cannot delete the objects of a removed custom kind");
        }
    }
}
