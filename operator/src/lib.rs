pub mod api;
pub mod netlink;
pub mod runtime;
