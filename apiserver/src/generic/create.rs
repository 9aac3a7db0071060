//! create: a new object, named (or named from `generateName`), with the fields
//! the server owns set, admitted, then written if absent.

use serde_json::{Value, json};

use super::{GenericStore, Part, WriteOptions, Written, now};
use crate::apply;
use crate::catalog::ServedResource;
use crate::error::{ApiError, ApiResult};
use crate::object;
use crate::store;

/// Five characters for `generateName`, from Kubernetes' alphabet (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Sets what the server owns on a new object: uid, creation time, generation
/// 1, and the status it starts with (a create's own status is ignored unless
/// the kind takes it).
fn set_server_fields(res: &ServedResource, object: &mut Value) {
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        object::set_meta(object, field, Value::Null);
    }
    object::set_meta(object, "uid", json!(uuid::Uuid::new_v4().to_string()));
    object::set_meta(object, "creationTimestamp", json!(now()));
    object::set_meta(object, "generation", json!(1));
    if res.info.has_status
        && !res.strategy.status_on_create()
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
        if let Some(status) = res.strategy.initial_status() {
            map.insert("status".to_owned(), status);
        }
    }
}

impl GenericStore {
    /// Creates an object.
    pub async fn create(
        &self,
        res: &ServedResource,
        namespace: Option<&str>,
        mut object: Value,
        options: &WriteOptions,
    ) -> ApiResult<Written> {
        self.check_identity(res, namespace, None, &mut object)?;
        let namespace = object::namespace(&object).to_owned();
        let generate = object::meta_str(&object, "generateName").map(str::to_owned);
        if object::name(&object).is_empty()
            && let Some(prefix) = &generate
        {
            object::set_meta(
                &mut object,
                "name",
                json!(format!("{prefix}{}", random_suffix())),
            );
        }
        set_server_fields(res, &mut object);
        let mut warnings = self
            .admit_write(res, Part::Main, &mut object, None, options)
            .await?;
        res.hooks.check_write(self, &object, None).await?;
        if !options.applied {
            object::set_meta(&mut object, "managedFields", Value::Null);
            apply::record_update(
                None,
                &mut object,
                &options.field_manager,
                &res.info.api_version(),
                false,
            );
        }
        if options.dry_run {
            return Ok(Written {
                object,
                warnings,
                created: true,
            });
        }
        res.hooks.before_create(self, &mut object).await?;
        for attempt in 0.. {
            let name = object::name(&object).to_owned();
            match self
                .store
                .create(&res.key(&namespace, &name), object::to_stored(&object))
                .await
            {
                Ok(kv) => {
                    let mut stored = object;
                    object::set_meta(
                        &mut stored,
                        "resourceVersion",
                        json!(kv.mod_revision.to_string()),
                    );
                    res.hooks.after_write(self, &stored);
                    warnings.shrink_to_fit();
                    return Ok(Written {
                        object: stored,
                        warnings,
                        created: true,
                    });
                }
                Err(store::Error::AlreadyExists { .. }) if generate.is_some() && attempt < 8 => {
                    let prefix = generate.clone().unwrap_or_default();
                    object::set_meta(
                        &mut object,
                        "name",
                        json!(format!("{prefix}{}", random_suffix())),
                    );
                }
                Err(error) => {
                    res.hooks.create_failed(self, &object).await;
                    return Err(ApiError::from_store(error, &res.group_resource(), &name));
                }
            }
        }
        res.hooks.create_failed(self, &object).await;
        Err(ApiError::internal("unreachable"))
    }
}
