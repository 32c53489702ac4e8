pub mod api;
pub mod readiness;
pub mod runtime;
