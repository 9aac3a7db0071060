//! Built-in reconcilers (Job, Service, garbage collector, node lifecycle) and the controller-manager that runs them.
