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
            format!("{} (errno {})", m.to_io(), -m.raw_code())
        }
        other => other.to_string(),
    }
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
        assert!(text.contains("errno 95"), "{text}");
        assert_eq!(e.raw_code(), Some(-libc::EOPNOTSUPP));
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
