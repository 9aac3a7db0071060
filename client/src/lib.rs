//! Typed API client, watcher, reflector and controller runtime: the library every Loom
//! component, and every user's own controller, talks to the API with.

pub mod api;
pub mod bootstrap;
pub mod client;
pub mod config;
pub mod error;
pub mod kubeconfig;

pub use api::{
    Api, DeleteParams, DynamicObject, ListParams, Object, ObjectList, Patch, PatchParams,
    PostParams, WatchParams, discover,
};
pub use client::Client;
pub use config::{Auth, Config, TlsConfig};
pub use error::{Error, Result};
pub use kubeconfig::{Credential, Kubeconfig, KubeconfigError};
pub mod reflector;
pub mod watcher;

pub use reflector::{Informer, ObjectKey, Store, StoreBuilder};
pub mod controller;

pub use controller::{Action, Controller};
pub mod leader;

pub use leader::{ApiLease, ElectionConfig, LeaderElector, Leadership, while_leading};
pub mod events;
pub mod finalizer;

pub use events::Recorder;
pub use finalizer::{FinalizerEvent, finalizer};
pub mod wait;

pub use wait::{await_condition, conditions};
