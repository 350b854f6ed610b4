//! cj-normalize
