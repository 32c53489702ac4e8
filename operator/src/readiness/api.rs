//! The wire contract (v1): request routing and the JSON bodies, as pure functions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{BridgeOwner, BridgeReadiness, ForNetwork};

/// The `apiVersion` of every body.
pub const API_VERSION: &str = "v1";

/// The longest a long poll waits; a longer `waitSeconds` is capped to this.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// `GET /v1/bridges/{name}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeStatus {
    pub api_version: String,
    pub node: String,
    pub bridge: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    /// The Network or Link the bridge belongs to on this node, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<BridgeOwner>,
}

impl BridgeStatus {
    pub fn new(node: &str, bridge: &str, readiness: BridgeReadiness) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            node: node.to_string(),
            bridge: bridge.to_string(),
            ready: readiness.ready,
            reason: readiness.reason,
            message: readiness.message,
            owner: readiness.owner,
        }
    }
}

/// `GET /v1/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub api_version: String,
    pub node: String,
    pub synced: bool,
}

/// The body of every 4xx answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub api_version: String,
    /// The HTTP status code, repeated.
    pub code: u16,
    /// A CamelCase word: `NotFound`, `MethodNotAllowed`, `InvalidBridgeName`,
    /// `InvalidQuery`.
    pub reason: String,
    pub message: String,
}

/// A request the API refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no such path {0:?}: the API serves GET /v1/bridges/{{name}} and GET /v1/status")]
    NotFound(String),
    #[error("method {0} is not allowed: the API serves GET only")]
    MethodNotAllowed(String),
    #[error("invalid bridge name {name:?}: {reason}")]
    InvalidBridgeName { name: String, reason: String },
    #[error("invalid query {query:?}: {reason}")]
    InvalidQuery { query: String, reason: String },
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::InvalidBridgeName { .. } | ApiError::InvalidQuery { .. } => 400,
        }
    }

    /// The CamelCase reason of the body.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::InvalidBridgeName { .. } => "InvalidBridgeName",
            ApiError::InvalidQuery { .. } => "InvalidQuery",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            api_version: API_VERSION.to_string(),
            code: self.code(),
            reason: self.reason().to_string(),
            message: self.to_string(),
        }
    }
}

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// Bridge `name`; with `wait`, a long poll of at most that long; with
    /// `network`, Ready only when the bridge belongs to that Network.
    Bridge {
        name: String,
        wait: Option<Duration>,
        network: Option<ForNetwork>,
    },
    Status,
}

/// Routes a request by method, path and query (without the `?`).
pub(crate) fn route(method: &str, path: &str, query: Option<&str>) -> Result<Route, ApiError> {
    let route = if path == "/v1/status" {
        no_query(query)?;
        Route::Status
    } else if let Some(segment) = path.strip_prefix("/v1/bridges/") {
        if segment.contains('/') {
            return Err(ApiError::NotFound(path.to_string()));
        }
        let name = percent_decode(segment).ok_or_else(|| ApiError::InvalidBridgeName {
            name: segment.to_string(),
            reason: "it is not valid percent-encoded UTF-8".to_string(),
        })?;
        crate::linux::check_interface_name(&name).map_err(|e| ApiError::InvalidBridgeName {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        let (wait, network) = bridge_query(query)?;
        Route::Bridge { name, wait, network }
    } else {
        return Err(ApiError::NotFound(path.to_string()));
    };
    // Routing first, so that a wrong method on a wrong path says "not found".
    if method != "GET" {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    Ok(route)
}

fn no_query(query: Option<&str>) -> Result<(), ApiError> {
    match query {
        None | Some("") => Ok(()),
        Some(q) => Err(ApiError::InvalidQuery {
            query: q.to_string(),
            reason: "this path takes no parameters".to_string(),
        }),
    }
}

/// The parameters of `/v1/bridges/{name}`: `waitSeconds` (a non-negative decimal
/// number of seconds, capped to [`MAX_WAIT`]), `network` (the name of the Network
/// the caller attaches for) and `uid` (its UID; only with `network`).
fn bridge_query(query: Option<&str>) -> Result<(Option<Duration>, Option<ForNetwork>), ApiError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok((None, None));
    };
    let invalid = |reason: String| ApiError::InvalidQuery {
        query: query.to_string(),
        reason,
    };
    let (mut wait, mut network, mut uid) = (None, None, None);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let seen = match key {
            "waitSeconds" => wait.is_some(),
            "network" => network.is_some(),
            "uid" => uid.is_some(),
            _ => {
                return Err(invalid(format!(
                    "unknown parameter {key:?}: they are waitSeconds, network and uid"
                )));
            }
        };
        if seen {
            return Err(invalid(format!("{key} is given more than once")));
        }
        match key {
            "waitSeconds" => {
                let seconds = parse_seconds(value).ok_or_else(|| {
                    invalid(format!(
                        "waitSeconds must be a non-negative decimal number of seconds, not {value:?}"
                    ))
                })?;
                wait = Some(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64())));
            }
            "network" => {
                if !object_name(value) {
                    return Err(invalid(format!(
                        "network must be the name of a Network (lower-case letters, digits, '-' and '.', at most 253), not {value:?}"
                    )));
                }
                network = Some(value.to_string());
            }
            _ => {
                let ok = !value.is_empty()
                    && value.len() <= 64
                    && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
                if !ok {
                    return Err(invalid(format!("uid must be an object UID, not {value:?}")));
                }
                uid = Some(value.to_string());
            }
        }
    }
    let network = match (network, uid) {
        (Some(name), uid) => Some(ForNetwork { name, uid }),
        (None, Some(_)) => return Err(invalid("uid is given without network".to_string())),
        (None, None) => None,
    };
    Ok((wait, network))
}

/// The characters of a Kubernetes object name (a DNS-1123 subdomain), which need no
/// percent-encoding.
fn object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A plain decimal: digits with at most one '.', no sign, exponent, `inf` or `NaN`.
fn parse_seconds(value: &str) -> Option<f64> {
    let plain = !value.is_empty()
        && value != "."
        && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && value.bytes().filter(|&b| b == b'.').count() <= 1;
    if !plain {
        return None;
    }
    value.parse::<f64>().ok().filter(|s| s.is_finite())
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(name: &str, wait: Option<f64>) -> Route {
        Route::Bridge {
            name: name.to_string(),
            wait: wait.map(Duration::from_secs_f64),
            network: None,
        }
    }

    fn bridge_for(name: &str, wait: Option<f64>, network: &str, uid: Option<&str>) -> Route {
        Route::Bridge {
            name: name.to_string(),
            wait: wait.map(Duration::from_secs_f64),
            network: Some(ForNetwork {
                name: network.to_string(),
                uid: uid.map(String::from),
            }),
        }
    }

    /// Method, path, query, and the route or the error reason.
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Result<Route, &'static str>,
    );

    #[test]
    fn routes() {
        let cases: &[Case] = &[
            ("GET", "/v1/status", None, Ok(Route::Status)),
            ("GET", "/v1/status", Some(""), Ok(Route::Status)),
            ("GET", "/v1/status", Some("x=1"), Err("InvalidQuery")),
            ("GET", "/v1/bridges/br-gw", None, Ok(bridge("br-gw", None))),
            ("GET", "/v1/bridges/br-gw", Some(""), Ok(bridge("br-gw", None))),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=2"),
                Ok(bridge("br0", Some(2.0))),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=0.25"),
                Ok(bridge("br0", Some(0.25))),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=0"),
                Ok(bridge("br0", Some(0.0))),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=.5"),
                Ok(bridge("br0", Some(0.5))),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=86400"),
                Ok(bridge("br0", Some(300.0))),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=99999999999999999999999999"),
                Ok(bridge("br0", Some(300.0))),
            ),
            ("GET", "/v1/bridges/br%40x", None, Ok(bridge("br@x", None))),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=-1"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds="),
                Err("InvalidQuery"),
            ),
            ("GET", "/v1/bridges/br0", Some("waitSeconds"), Err("InvalidQuery")),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=."),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=1.2.3"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=NaN"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=inf"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=1e3"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=1&waitSeconds=2"),
                Err("InvalidQuery"),
            ),
            ("GET", "/v1/bridges/br0", Some("wait=1"), Err("InvalidQuery")),
            (
                "GET",
                "/v1/bridges/br0",
                Some("network=gw"),
                Ok(bridge_for("br0", None, "gw", None)),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("waitSeconds=2&network=gw.a-1&uid=0f9e-AB12"),
                Ok(bridge_for("br0", Some(2.0), "gw.a-1", Some("0f9e-AB12"))),
            ),
            ("GET", "/v1/bridges/br0", Some("network=GW"), Err("InvalidQuery")),
            ("GET", "/v1/bridges/br0", Some("network="), Err("InvalidQuery")),
            (
                "GET",
                "/v1/bridges/br0",
                Some("network=a%2Fb"),
                Err("InvalidQuery"),
            ),
            ("GET", "/v1/bridges/br0", Some("uid=0f9e"), Err("InvalidQuery")),
            (
                "GET",
                "/v1/bridges/br0",
                Some("network=gw&uid=x/y"),
                Err("InvalidQuery"),
            ),
            (
                "GET",
                "/v1/bridges/br0",
                Some("network=a&network=b"),
                Err("InvalidQuery"),
            ),
            ("GET", "/v1/bridges/", None, Err("InvalidBridgeName")),
            (
                "GET",
                "/v1/bridges/a-name-longer-than-15",
                None,
                Err("InvalidBridgeName"),
            ),
            ("GET", "/v1/bridges/br%3A0", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/br%200", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/..", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/br%zz", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/br%", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/%ff", None, Err("InvalidBridgeName")),
            ("GET", "/v1/bridges/br0/x", None, Err("NotFound")),
            ("GET", "/v1/bridges", None, Err("NotFound")),
            ("GET", "/v2/status", None, Err("NotFound")),
            ("GET", "/", None, Err("NotFound")),
            ("POST", "/v1/status", None, Err("MethodNotAllowed")),
            ("DELETE", "/v1/bridges/br0", None, Err("MethodNotAllowed")),
            ("POST", "/nowhere", None, Err("NotFound")),
        ];
        for (method, path, query, want) in cases {
            let got = route(method, path, *query);
            match (want, &got) {
                (Ok(want), Ok(got)) => assert_eq!(want, got, "{method} {path} {query:?}"),
                (Err(reason), Err(err)) => assert_eq!(*reason, err.reason(), "{method} {path} {query:?}"),
                _ => panic!("{method} {path} {query:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn error_bodies_carry_code_reason_and_message() {
        let err = route("GET", "/v1/bridges/br0", Some("waitSeconds=x")).unwrap_err();
        let body = serde_json::to_value(err.body()).unwrap();
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["code"], 400);
        assert_eq!(body["reason"], "InvalidQuery");
        assert!(
            body["message"].as_str().unwrap().contains("waitSeconds"),
            "{body}"
        );
    }

    #[test]
    fn bridge_status_json_shape() {
        let status = BridgeStatus::new("node-a", "br0", BridgeReadiness::ready("up"));
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            serde_json::json!({"apiVersion": "v1", "node": "node-a", "bridge": "br0",
                "ready": true, "reason": "Ready", "message": "up"})
        );
    }
}
