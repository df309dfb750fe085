//! The bus contract between backends, the coordinator and workers (issue 5; not built yet).
