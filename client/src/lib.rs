//! Typed API client, watcher, reflector cache and controller runtime: the library every Loom component and user controller talks to the API with.
