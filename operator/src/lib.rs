pub mod api;
pub mod controller;
pub mod model;
pub mod multus;
pub mod runtime;
