//! Facts of the Linux kernel that the API, the engine and the readiness API all rely
//! on, each written once. (`nno-cni-shim` keeps its own copy of the interface-name
//! rule and the socket path to stay free of this crate; `operator/tests/shim.rs`
//! holds the two equal.)

/// The longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// VXLAN encapsulation overhead over an IPv4 underlay (outer IPv4 + UDP + VXLAN +
/// inner Ethernet).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN encapsulation overhead over an IPv6 underlay.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// Smallest MTU the kernel accepts for an Ethernet-like device.
pub const MIN_MTU: u32 = 68;

/// What is wrong with an interface name the kernel's `dev_valid_name` refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("an interface name cannot be empty")]
    Empty,
    #[error("an interface name is at most {MAX_INTERFACE_NAME} bytes")]
    TooLong,
    #[error("an interface name cannot contain '/', ':' or whitespace")]
    BadCharacter,
    #[error("an interface name cannot be '.' or '..'")]
    Dots,
}

/// Checks `name` as `dev_valid_name` does: 1 to 15 bytes, no '/', ':' or
/// whitespace, not "." or "..".
pub fn check_interface_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        Err(NameProblem::Empty)
    } else if name.len() > MAX_INTERFACE_NAME {
        Err(NameProblem::TooLong)
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Err(NameProblem::BadCharacter)
    } else if name == "." || name == ".." {
        Err(NameProblem::Dots)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_as_the_kernel_takes_them() {
        for ok in ["eth0", "br-gw", "a", "vxlan16777215", "x.y", "..."] {
            assert_eq!(check_interface_name(ok), Ok(()), "{ok}");
        }
        for (bad, problem) in [
            ("", NameProblem::Empty),
            ("a-name-of-16-byt", NameProblem::TooLong),
            ("br/0", NameProblem::BadCharacter),
            ("br:0", NameProblem::BadCharacter),
            ("br 0", NameProblem::BadCharacter),
            ("br\t0", NameProblem::BadCharacter),
            (".", NameProblem::Dots),
            ("..", NameProblem::Dots),
        ] {
            assert_eq!(check_interface_name(bad), Err(problem), "{bad:?}");
        }
    }
}
