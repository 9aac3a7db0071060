//! Authorization: who may do what. [`rbac`] evaluates Kubernetes' RBAC rules
//! (Role, ClusterRole and their bindings) against a request's attributes; the
//! authorization layer in front of the router and the escalation check of
//! role writes use it.

pub mod rbac;
