//! Session leases and the registry (issue 5; not built yet).
