//! Loom's built-in kinds, one module each, and the list of them all.

pub mod authorization;
pub mod autoscaling;
pub mod certificates;
pub mod endpoints;
pub mod event;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod rbac;
pub mod resource_definition;
pub mod service;
pub mod service_account;
pub mod task;

pub use autoscaling::{Scale, ScaleSpec, ScaleStatus};
pub use certificates::{
    BootstrapToken, BootstrapTokenSpec, BootstrapTokenValue, CertificateSigningRequest,
    CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};
pub use endpoints::{EndpointAddress, EndpointPort, EndpointSubset, EndpointTargetRef, Endpoints};
pub use event::{Event, EventSource, EventType};
pub use job::{Indexes, IndexesError, Job, JobInput, JobPhase, JobSpec, JobStatus, TaskOverride};
pub use lease::{Lease, LeaseSpec};
pub use namespace::{
    DEFAULT_NAMESPACE, Namespace, NamespacePhase, NamespaceSpec, NamespaceStatus, SYSTEM_NAMESPACE,
};
pub use node::{Node, NodeAddress, NodeInfo, NodeSpec, NodeStatus, Taint, TaintEffect};
pub use rbac::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RBAC_GROUP, Role, RoleBinding, RoleKind, RoleRef,
    Subject, SubjectKind,
};
pub use resource_definition::{
    ResourceDefinition, ResourceDefinitionSpec, ResourceDefinitionStatus, ResourceNames,
    ResourceScope, ResourceSubresources, ResourceValidation, ResourceVersionDefinition,
    StatusSubresource,
};
pub use service::{
    ClusterIp, Service, ServicePort, ServiceRange, ServiceSpec, ServiceStatus, ServiceStrategy,
};
pub use service_account::{
    BoundObjectReference, ServiceAccount, TokenRequest, TokenRequestSpec, TokenRequestStatus,
};
pub use task::{
    ContainerPort, Driver, EnvVar, ExecAction, HttpGetAction, HttpHeader, Mount, Probe,
    ProbeHandler, Protocol, ResourceUsage, RestartPolicy, Scheme, Task, TaskPhase, TaskResources,
    TaskSpec, TaskStatus, TaskTemplate, TcpSocketAction, TemplateMeta, Toleration,
    TolerationOperator,
};

use crate::resource::{Resource, ResourceInfo};

/// The run-time description of every built-in kind.
pub fn builtin_kinds() -> Vec<ResourceInfo> {
    vec![
        Task::info(),
        Job::info(),
        Service::info(),
        Endpoints::info(),
        Node::info(),
        Namespace::info(),
        Event::info(),
        Lease::info(),
        ResourceDefinition::info(),
    ]
}
