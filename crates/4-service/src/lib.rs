//! cj-service
