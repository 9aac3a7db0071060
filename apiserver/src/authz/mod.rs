//! Authorization: who may do what. [`attributes`] derives a request's
//! attributes (verb, group, resource, namespace, name or non-resource path)
//! from its method and path; [`rbac`] evaluates Kubernetes' RBAC rules (Role,
//! ClusterRole and their bindings) against them; the authorization layer in
//! front of the router and the escalation check of role writes use both.

pub mod attributes;
pub mod rbac;

pub use attributes::request_attributes;
