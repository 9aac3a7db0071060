//! Authorization: who may do what. [`attributes`] derives a request's
//! attributes (verb, group, resource, namespace, name or non-resource path)
//! from its method and path; [`rbac`] evaluates Kubernetes' RBAC rules (Role,
//! ClusterRole and their bindings) against them; [`authorizer`] is the layer
//! in front of the router that decides every request from the RBAC kinds'
//! watch caches; [`escalation`] is the admission step that keeps role and
//! binding writers from granting more than they hold; [`review`] answers the
//! access reviews of `authorization.k8s.io`; [`bootstrap`] creates the roles
//! every cluster has; [`node`] limits a node to its own objects.

pub mod attributes;
pub mod authorizer;
pub mod bootstrap;
pub mod escalation;
pub mod node;
pub mod rbac;
pub mod registry;
pub mod review;

pub use attributes::request_attributes;
pub use authorizer::{Authorization, Authorized, Authorizer, middleware};
pub use escalation::Escalation;
pub use rbac::Decision;
