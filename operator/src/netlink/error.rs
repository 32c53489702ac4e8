//! Errors of the engine: every kernel error carries the operation and the
//! interface (or other target) it was about, and keeps the raw errno.

use std::fmt;

/// What the engine was doing when the kernel answered with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    DumpLinks,
    DumpAddresses,
    DumpFdb,
    RouteLookup,
    GetLink,
    CreateBridge,
    CreateVxlan,
    ChangeBridge,
    ChangeVxlan,
    SetLink,
    DeleteLink,
    AddFdbEntry,
    DeleteFdbEntry,
    Subscribe,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::DumpLinks => "list links",
            Operation::DumpAddresses => "list addresses",
            Operation::DumpFdb => "list FDB entries",
            Operation::RouteLookup => "look up the route",
            Operation::GetLink => "read link",
            Operation::CreateBridge => "create bridge",
            Operation::CreateVxlan => "create vxlan",
            Operation::ChangeBridge => "change bridge",
            Operation::ChangeVxlan => "change vxlan",
            Operation::SetLink => "set link",
            Operation::DeleteLink => "delete link",
            Operation::AddFdbEntry => "add FDB entry on",
            Operation::DeleteFdbEntry => "delete FDB entry on",
            Operation::Subscribe => "subscribe to events in",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or the netlink connection) refused a request.
    #[error("cannot {op} {target}: {}", describe(.source))]
    Netlink {
        op: Operation,
        /// The interface (or route destination, or namespace) concerned.
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A netlink socket could not be opened or set up.
    #[error("cannot {op} {target}: {source}")]
    Io {
        op: Operation,
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The master bridge of an interface is not there (any more).
    #[error("cannot enslave {interface} to {master}: {master} does not exist")]
    MasterMissing { interface: String, master: String },
    /// A step referred to an interface that is not there (any more).
    #[error("cannot {op} {target}: the interface does not exist")]
    Missing { op: Operation, target: String },
}

impl Error {
    pub(crate) fn netlink(op: Operation, target: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            op,
            target: target.into(),
            source,
        }
    }

    /// The kernel's errno, negative as on the wire (e.g. `-libc::EEXIST`), if the
    /// kernel answered with one.
    pub fn raw_code(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code()),
            Error::Io { source, .. } => source.raw_os_error().map(|c| -c),
            _ => None,
        }
    }
}

fn describe(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            // e.g. "EOPNOTSUPP: Operation not supported on transport endpoint"
            let errno = nix::errno::Errno::from_raw(-m.raw_code());
            match extack_message(&m.header) {
                Some(why) => format!("{errno}: {why}"),
                None => errno.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Length of the request header the kernel echoes in an error message.
const NLMSG_HDRLEN: usize = 16;
/// `NLMSGERR_ATTR_MSG`: the kernel's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// The kernel's extended-ack text ("Cannot change VNI", ...) from what follows
/// the error code. The engine's socket sets `NETLINK_CAP_ACK` and
/// `NETLINK_EXT_ACK`, so that is the request's header, then attributes.
fn extack_message(echo: &[u8]) -> Option<String> {
    let mut rest = echo.get(NLMSG_HDRLEN..)?;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &rest[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned()).filter(|t| !t.is_empty());
        }
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn kernel(code: i32) -> rtnetlink::Error {
        let mut m = ErrorMessage::default();
        m.code = NonZeroI32::new(code);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn message_names_operation_interface_and_errno() {
        let e = Error::netlink(Operation::ChangeVxlan, "vx0", kernel(-libc::EOPNOTSUPP));
        let text = e.to_string();
        assert!(text.starts_with("cannot change vxlan vx0: "), "{text}");
        assert!(text.contains("EOPNOTSUPP: "), "{text}");
        assert_eq!(e.raw_code(), Some(-libc::EOPNOTSUPP));
    }

    /// What the kernel sends after the error code when changing a VXLAN's VNI in
    /// place (request header, then NLMSGERR_ATTR_MSG and NLMSGERR_ATTR_OFFS).
    const VNI_REFUSED: &[u8] = &[
        0x40, 0x00, 0x00, 0x00, 0x10, 0x00, 0x05, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x16,
        0x00, 0x01, 0x00, b'C', b'a', b'n', b'n', b'o', b't', b' ', b'c', b'h', b'a', b'n', b'g', b'e', b' ',
        b'V', b'N', b'I', 0x00, 0x00, 0x00, 0x08, 0x00, 0x02, 0x00, 0x30, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn kernel_reason_is_appended_when_sent() {
        let mut m = ErrorMessage::default();
        m.code = NonZeroI32::new(-libc::EOPNOTSUPP);
        m.header = VNI_REFUSED.to_vec();
        let e = Error::netlink(Operation::ChangeVxlan, "vx0", rtnetlink::Error::NetlinkError(m));
        let text = e.to_string();
        assert!(
            text.starts_with("cannot change vxlan vx0: EOPNOTSUPP: "),
            "{text}"
        );
        assert!(text.ends_with(": Cannot change VNI"), "{text}");
    }

    #[test]
    fn malformed_or_absent_extack_is_ignored() {
        assert_eq!(extack_message(&[]), None);
        assert_eq!(extack_message(&VNI_REFUSED[..16]), None);
        assert_eq!(extack_message(&VNI_REFUSED[..20]), None, "truncated attribute");
        let mut only_offset = VNI_REFUSED[..16].to_vec();
        only_offset.extend_from_slice(&VNI_REFUSED[40..]);
        assert_eq!(extack_message(&only_offset), None);
    }

    #[test]
    fn non_kernel_errors_have_no_code() {
        let e = Error::Missing {
            op: Operation::SetLink,
            target: "br0".into(),
        };
        assert_eq!(e.raw_code(), None);
        assert_eq!(e.to_string(), "cannot set link br0: the interface does not exist");
    }
}
