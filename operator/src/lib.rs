pub mod api;
pub mod runtime;
