//! The Scale of a kind with replicas (Kubernetes' `autoscaling/v1` Scale),
//! read and written at `services/NAME/scale`: what `kubectl scale` and
//! `loomctl scale` change, and what an autoscaler reads.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{DecodeError, FieldValidation, decode_value};
use crate::kinds::service::Service;
use crate::meta::ObjectMeta;
use crate::validation::{FieldError, FieldErrorKind, MAX_REPLICAS, Validate};
use crate::well_known::LABEL_SERVICE;

/// The group of Scale.
pub const AUTOSCALING_GROUP: &str = "autoscaling";
/// `autoscaling/v1`.
pub const AUTOSCALING_API_VERSION: &str = "autoscaling/v1";
/// The version of Scale in its group.
pub const AUTOSCALING_VERSION: &str = "v1";
/// `Scale`.
pub const SCALE_KIND: &str = "Scale";
/// The name of the subresource (`services/NAME/scale`).
pub const SCALE_SUBRESOURCE: &str = "scale";

/// How many replicas an object has and should have (`autoscaling/v1` Scale).
///
/// Its metadata is the scaled object's (name, namespace, uid,
/// resourceVersion, creationTimestamp); a write's `metadata.resourceVersion`,
/// when set, is a precondition on that object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Scale {
    /// `autoscaling/v1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `Scale`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The scaled object's name, namespace, uid, resourceVersion and creationTimestamp.
    pub metadata: ObjectMeta,
    /// The replicas wanted.
    pub spec: ScaleSpec,
    /// The replicas there are.
    pub status: ScaleStatus,
}

/// The replicas wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScaleSpec {
    /// How many replicas should run (0 to 100,000). Absent is 0, as in
    /// Kubernetes, whose clients leave a zero out.
    pub replicas: i32,
}

/// The replicas there are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ScaleStatus {
    /// How many replicas exist.
    pub replicas: i32,
    /// The label selector of the replicas, in the string form
    /// (`loom.dev/service=web`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

impl Scale {
    /// The Scale of a Service: its `spec.replicas` (1 when unset), its
    /// `status.replicas`, and the selector of its tasks.
    pub fn of_service(service: &Service) -> Scale {
        let meta = &service.metadata;
        Scale {
            api_version: AUTOSCALING_API_VERSION.to_owned(),
            kind: SCALE_KIND.to_owned(),
            metadata: ObjectMeta {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                creation_timestamp: meta.creation_timestamp,
                ..ObjectMeta::default()
            },
            spec: ScaleSpec {
                replicas: service.spec.replicas(),
            },
            status: ScaleStatus {
                replicas: service.status.as_ref().map_or(0, |s| s.replicas),
                selector: format!("{LABEL_SERVICE}={}", meta.name),
            },
        }
    }

    /// Decodes a Scale a client sent. Every problem names its field: a
    /// `spec.replicas` that is no 32-bit integer gets the rule it breaks;
    /// unknown fields are refused, reported or ignored as `mode` says
    /// (the warnings come back with the Scale).
    pub fn decode(
        value: Value,
        mode: FieldValidation,
    ) -> Result<(Scale, Vec<String>), Vec<FieldError>> {
        let mut errors = Vec::new();
        match value.pointer("/spec/replicas") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) => {}
            Some(Value::Number(n)) => {
                // Out of 32 bits: the bound it breaks, not a decoder's words.
                let rule = if n.is_f64() {
                    "must be an integer".to_owned()
                } else if n.as_f64().is_some_and(|f| f < 0.0) {
                    "must be greater than or equal to 0".to_owned()
                } else {
                    format!("must be less than or equal to {MAX_REPLICAS}")
                };
                errors.push(bare_invalid(n.to_string(), rule));
            }
            Some(other) => errors.push(bare_invalid(
                other.to_string(),
                "must be an integer".to_owned(),
            )),
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        match decode_value::<Scale>(value, mode) {
            Ok(decoded) => Ok((decoded.object, decoded.warnings)),
            Err(error) => Err(decode_errors(&error)),
        }
    }
}

/// An invalid `spec.replicas` shown as the client wrote it (JSON).
fn bare_invalid(value: String, rule: String) -> FieldError {
    FieldError {
        field: "spec.replicas".to_owned(),
        kind: FieldErrorKind::Invalid,
        value: Some(value),
        message: rule,
    }
}

fn decode_errors(error: &DecodeError) -> Vec<FieldError> {
    let problems = error.problems();
    if problems.is_empty() {
        return vec![FieldError::invalid("", "", error.to_string())];
    }
    problems
        .iter()
        .map(|p| FieldError {
            field: p.path.clone(),
            kind: FieldErrorKind::Invalid,
            value: None,
            message: p.message.clone(),
        })
        .collect()
}

impl Validate for Scale {
    /// The rules of `spec.replicas` (those of a Service's), and the type: an
    /// `apiVersion` or `kind` set must be `autoscaling/v1` `Scale`.
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !self.api_version.is_empty() && self.api_version != AUTOSCALING_API_VERSION {
            errors.push(FieldError::not_supported(
                "apiVersion",
                self.api_version.as_str(),
                &[AUTOSCALING_API_VERSION],
            ));
        }
        if !self.kind.is_empty() && self.kind != SCALE_KIND {
            errors.push(FieldError::not_supported(
                "kind",
                self.kind.as_str(),
                &[SCALE_KIND],
            ));
        }
        let replicas = self.spec.replicas;
        if replicas < 0 {
            errors.push(FieldError::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            ));
        }
        if replicas > MAX_REPLICAS {
            errors.push(FieldError::invalid(
                "spec.replicas",
                replicas,
                format!("must be less than or equal to {MAX_REPLICAS}"),
            ));
        }
        errors
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kinds::service::{ServiceSpec, ServiceStatus};

    fn scale(value: Value) -> Result<Scale, Vec<String>> {
        let (scale, _) = Scale::decode(value, FieldValidation::Strict)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let errors: Vec<String> = scale.validate().iter().map(ToString::to_string).collect();
        if errors.is_empty() {
            Ok(scale)
        } else {
            Err(errors)
        }
    }

    #[test]
    fn a_services_scale_has_its_identity_replicas_and_task_selector() {
        let mut service = Service::new("web", ServiceSpec::default());
        service.metadata.namespace = "prod".into();
        service.metadata.uid = "u-1".into();
        service.metadata.resource_version = "42".into();
        service.metadata.labels.insert("app".into(), "web".into());
        let unset = Scale::of_service(&service);
        assert_eq!(
            unset.spec.replicas, 1,
            "a Service without replicas runs one"
        );
        assert_eq!(unset.status.replicas, 0);
        service.spec.replicas = Some(3);
        service.status = Some(ServiceStatus {
            replicas: 2,
            ..ServiceStatus::default()
        });
        let scale = Scale::of_service(&service);
        assert_eq!(
            serde_json::to_value(&scale).unwrap(),
            json!({
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": "web", "namespace": "prod", "uid": "u-1", "resourceVersion": "42"},
                "spec": {"replicas": 3},
                "status": {"replicas": 2, "selector": "loom.dev/service=web"},
            })
        );
    }

    #[test]
    fn replicas_follow_the_services_bounds() {
        assert_eq!(
            scale(json!({"spec": {"replicas": 0}}))
                .unwrap()
                .spec
                .replicas,
            0
        );
        assert_eq!(
            scale(json!({"spec": {"replicas": MAX_REPLICAS}}))
                .unwrap()
                .spec
                .replicas,
            MAX_REPLICAS
        );
        // Go clients leave a zero out.
        assert_eq!(scale(json!({"spec": {}})).unwrap().spec.replicas, 0);
        for (replicas, rule) in [
            (
                json!(-1),
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                json!(MAX_REPLICAS + 1),
                "spec.replicas: Invalid value: 100001: must be less than or equal to 100000",
            ),
            (
                json!(5_000_000_000_i64),
                "must be less than or equal to 100000",
            ),
            (
                json!(-5_000_000_000_i64),
                "must be greater than or equal to 0",
            ),
            (
                json!(1.5),
                "spec.replicas: Invalid value: 1.5: must be an integer",
            ),
            (
                json!("5"),
                "spec.replicas: Invalid value: \"5\": must be an integer",
            ),
        ] {
            let errors = scale(json!({"spec": {"replicas": replicas}})).unwrap_err();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("spec.replicas: "), "{errors:?}");
            assert!(errors[0].contains(rule), "{replicas}: {errors:?}");
        }
    }

    #[test]
    fn the_type_and_unknown_fields_are_checked() {
        let ok = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 2}});
        assert!(scale(ok).is_ok());
        let errors = scale(json!({"apiVersion": "apps/v1", "kind": "Deployment"})).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("apiVersion: Unsupported value"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("kind: Unsupported value"),
            "{errors:?}"
        );
        let unknown = json!({"spec": {"replicas": 2, "replica": 3}});
        let errors = scale(unknown.clone()).unwrap_err();
        assert!(errors[0].contains("spec.replica"), "{errors:?}");
        let (ignored, _) = Scale::decode(unknown, FieldValidation::Ignore).unwrap();
        assert_eq!(ignored.spec.replicas, 2);
    }
}
