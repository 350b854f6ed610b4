//! cj-capture
