//! The node agent: node registration and heartbeat, task drivers (libcontainer, exec), images, cgroups and logs.
