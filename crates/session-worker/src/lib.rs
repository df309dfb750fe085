//! Runs sessions on the wire protocol (issues 3 and 5; not built yet).
