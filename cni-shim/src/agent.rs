//! A tiny blocking HTTP/1.1 client for the node agent's readiness API (v1, see
//! `docs/readiness-api.md`) over a Unix socket. One request per connection.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cni::NetworkRef;

/// The largest answer accepted; a real one is a few hundred bytes.
const MAX_RESPONSE: u64 = 64 * 1024;
/// How much longer than the long poll itself the shim waits for an answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);
/// How long to wait before asking again when the agent cannot be reached.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// The least time between two long polls, in case an agent answers "not Ready"
/// early (it does when it shuts down).
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why the agent gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the nno agent is not reachable on {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the nno agent on {socket} answered {what}")]
    BadAnswer { socket: PathBuf, what: String },
}

/// The agent's answer for one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeStatus {
    pub node: String,
    pub bridge: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// The agent's `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub node: String,
    pub synced: bool,
}

/// The agent at a socket path, asked on behalf of one Network's attachment.
#[derive(Debug, Clone)]
pub struct Agent {
    socket: PathBuf,
    network: Option<NetworkRef>,
}

/// How a wait for a bridge ended.
#[derive(Debug)]
pub enum Wait {
    Ready(BridgeStatus),
    /// The deadline passed; the agent's last answer.
    NotReady(BridgeStatus),
    /// The deadline passed without a usable answer; the last error.
    Failed(AgentError),
}

impl Agent {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            network: None,
        }
    }

    /// Asks about bridges as the attachment of `network`: the agent answers Ready
    /// only for a bridge that belongs to that Network.
    pub fn for_network(self, network: Option<NetworkRef>) -> Self {
        Self { network, ..self }
    }

    /// Waits until `bridge` is Ready or `timeout` has passed, long-polling the agent
    /// and retrying while it cannot be reached. Asks at least once.
    pub fn wait_ready(&self, bridge: &str, timeout: Duration) -> Wait {
        let deadline = Instant::now() + timeout;
        loop {
            let asked = Instant::now();
            let remaining = deadline.saturating_duration_since(asked);
            let last = match self.bridge(bridge, Some(remaining)) {
                Ok(status) if status.ready => return Wait::Ready(status),
                Ok(status) => Wait::NotReady(status),
                Err(e) => Wait::Failed(e),
            };
            let now = Instant::now();
            if now >= deadline {
                return last;
            }
            let pause = match last {
                Wait::Failed(_) => RETRY_INTERVAL,
                _ => MIN_POLL_INTERVAL.saturating_sub(now - asked),
            };
            std::thread::sleep(pause.min(deadline - now));
        }
    }

    /// One `GET /v1/bridges/{bridge}`, a long poll when `wait` is given.
    pub fn bridge(&self, bridge: &str, wait: Option<Duration>) -> Result<BridgeStatus, AgentError> {
        let mut params = Vec::new();
        if let Some(network) = &self.network {
            // Names and UIDs are checked to need no encoding (cni::parse_network).
            params.push(format!("network={}", network.name));
            if let Some(uid) = &network.uid {
                params.push(format!("uid={uid}"));
            }
        }
        if let Some(wait) = wait {
            params.push(format!("waitSeconds={:.3}", wait.as_secs_f64()));
        }
        let mut target = format!("/v1/bridges/{}", percent_encode(bridge));
        if !params.is_empty() {
            target.push('?');
            target.push_str(&params.join("&"));
        }
        let io_timeout = wait.unwrap_or_default() + ANSWER_MARGIN;
        let body = self.get(&target, io_timeout)?;
        let field = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_string);
        let status = (|| {
            Some(BridgeStatus {
                node: field("node")?,
                bridge: field("bridge")?,
                ready: body.get("ready")?.as_bool()?,
                reason: field("reason")?,
                message: field("message")?,
            })
        })();
        status.ok_or_else(|| self.bad(format!("a bridge status without the v1 fields: {body}")))
    }

    /// `GET /v1/status`: whether the agent is up, and synced.
    pub fn status(&self, timeout: Duration) -> Result<AgentStatus, AgentError> {
        let body = self.get("/v1/status", timeout)?;
        let node = body.get("node").and_then(Value::as_str);
        let synced = body.get("synced").and_then(Value::as_bool);
        match (node, synced) {
            (Some(node), Some(synced)) => Ok(AgentStatus {
                node: node.to_string(),
                synced,
            }),
            _ => Err(self.bad(format!("a status without the v1 fields: {body}"))),
        }
    }

    fn bad(&self, what: String) -> AgentError {
        AgentError::BadAnswer {
            socket: self.socket.clone(),
            what,
        }
    }

    /// One GET; the JSON body of a 200 answer with `apiVersion: v1`.
    fn get(&self, target: &str, timeout: Duration) -> Result<Value, AgentError> {
        let unreachable = |source| AgentError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
        stream
            .set_write_timeout(Some(ANSWER_MARGIN))
            .map_err(unreachable)?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: nno-agent\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::with_capacity(512);
        (&mut stream)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut raw)
            .map_err(unreachable)?;
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(self.bad(format!("more than {MAX_RESPONSE} bytes")));
        }
        let (code, body) = parse_response(&raw).map_err(|what| self.bad(what))?;
        let json: Value = serde_json::from_slice(body)
            .map_err(|e| self.bad(format!("HTTP {code} with a body that is not JSON ({e})")))?;
        if code != 200 {
            let message = json.get("message").and_then(Value::as_str).unwrap_or("");
            return Err(self.bad(format!("HTTP {code} to GET {target}: {message}")));
        }
        if json.get("apiVersion").and_then(Value::as_str) != Some("v1") {
            return Err(self.bad(format!("an unknown apiVersion: {json}")));
        }
        Ok(json)
    }
}

/// Splits an HTTP/1.1 response read to EOF into status code and body. Understands
/// `Content-Length` and close-delimited bodies, which is what the agent sends.
pub fn parse_response(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an incomplete HTTP response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "an HTTP head that is not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.x: {status_line:?}"));
    }
    let code: u16 = code
        .parse()
        .map_err(|_| format!("a bad status line: {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(format!("a bad header line: {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("a bad Content-Length: {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(format!("an unsupported Transfer-Encoding: {value:?}"));
        }
    }
    match length {
        Some(n) if n > body.len() => Err(format!("{} of {n} body bytes", body.len())),
        Some(n) => Ok((code, &body[..n])),
        None => Ok((code, body)),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: x\r\n\r\n{}";
        assert_eq!(parse_response(ok), Ok((200, &b"{}"[..])));
        let close_delimited = b"HTTP/1.1 404 Not Found\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(close_delimited), Ok((404, &b"{\"a\":1}"[..])));
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk";
        assert_eq!(parse_response(extra), Ok((200, &b"{}"[..])));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bridge_names_are_percent_encoded() {
        assert_eq!(percent_encode("br-gw_1.x~"), "br-gw_1.x~");
        assert_eq!(percent_encode("br@1%?#"), "br%401%25%3F%23");
        assert_eq!(percent_encode("bré"), "br%C3%A9");
    }

    #[test]
    fn an_absent_socket_is_unreachable() {
        let dir = std::env::temp_dir().join(format!("nno-shim-absent-{}", std::process::id()));
        let agent = Agent::new(dir.join("agent.sock"));
        assert!(matches!(
            agent.bridge("br0", None),
            Err(AgentError::Unreachable { .. })
        ));
        let start = Instant::now();
        match agent.wait_ready("br0", Duration::from_millis(300)) {
            Wait::Failed(AgentError::Unreachable { .. }) => {}
            other => panic!("want Failed(Unreachable), got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
