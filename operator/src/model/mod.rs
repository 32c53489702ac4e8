//! Pure logic shared by the controller and the agents: who claims which interface
//! and VNI, and the MTU arithmetic. No I/O, no clients.

pub mod claims;
pub mod mtu;
pub mod routes;
pub mod vtep;
