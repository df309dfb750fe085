//! TODO(issue 2): filled in by the proto work.
