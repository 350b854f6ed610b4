//! cj-client
