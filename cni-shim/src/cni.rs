//! The CNI protocol as far as the shim needs it, hand-written on serde_json: the
//! environment, the plugin configuration on stdin, versions, errors and results.
//! Pure: nothing here does I/O, so the fuzz target drives it directly.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;

/// The most stdin the shim reads; a larger configuration is refused (code 6).
pub const MAX_STDIN: usize = 1 << 20;
/// Where the agent listens unless the configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/nno/agent.sock";
/// How long ADD waits for the bridge unless the configuration says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `timeoutSeconds` accepted (also the agent's cap on one long poll).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Well-known CNI error codes (spec section 5).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
}

/// The CNI spec versions the shim speaks, oldest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CNI error result: printed on stdout as `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error result JSON for `version`.
    pub fn to_json(&self, version: CniVersion) -> String {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        out.insert("code".into(), self.code.into());
        out.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            out.insert("details".into(), self.details.clone().into());
        }
        Value::Object(out).to_string()
    }
}

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// The environment variables the spec requires for this command, besides
    /// `CNI_COMMAND`.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Status | Command::Version => &[],
        }
    }

    /// The oldest configuration version that has this command.
    fn since(self) -> CniVersion {
        match self {
            Command::Check => CniVersion::V0_4_0,
            Command::Status | Command::Gc => CniVersion::V1_1_0,
            _ => CniVersion::V0_3_0,
        }
    }
}

/// The process environment, passed in so that dispatch is tested without a process.
#[derive(Clone, Debug, Default)]
pub struct Env(BTreeMap<OsString, OsString>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars_os().collect())
    }

    /// A variable; an empty one counts as missing, as in libcni.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.0
            .get(OsStr::new(name))
            .map(OsString::as_os_str)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        self.0.insert(name.into(), value.into());
    }
}

impl<K: Into<OsString>, V: Into<OsString>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

/// The CNI_* parameters of one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

/// The plugin configuration on stdin, with the shim's own keys.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// The network name.
    pub name: String,
    /// The bridge to wait for. Checked for ADD and CHECK; empty for other commands
    /// when the configuration has none.
    pub bridge: String,
    pub socket: PathBuf,
    pub timeout: Duration,
    /// The Network the attachment is for: the bridge must belong to it.
    pub network: Option<NetworkRef>,
    pub log_file: Option<PathBuf>,
    /// The previous plugin's result, exactly as given (never `null`).
    pub prev_result: Option<Box<RawValue>>,
}

/// The Network an attachment is for (`"network": {"name": ..., "uid": ...}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRef {
    /// A Kubernetes object name: lower-case letters, digits, '-' and '.'.
    pub name: String,
    /// Its UID (hex digits and '-'), when the configuration gives it.
    pub uid: Option<String>,
}

/// One parsed call.
#[derive(Clone, Debug)]
pub struct Request {
    pub command: Command,
    pub params: Params,
    /// `None` for VERSION.
    pub conf: Option<NetConf>,
    /// What VERSION echoes: the `cniVersion` on stdin, when there is one.
    pub version_asked: Option<String>,
}

/// Reads `CNI_COMMAND`.
pub fn parse_command(env: &Env) -> Result<Command, CniError> {
    let raw = env.get("CNI_COMMAND").ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "required env variables [CNI_COMMAND] missing",
        )
    })?;
    match raw.to_str() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("STATUS") => Ok(Command::Status),
        Some("GC") => Ok(Command::Gc),
        Some("VERSION") => Ok(Command::Version),
        _ => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("unknown CNI_COMMAND: {}", raw.to_string_lossy()),
        )),
    }
}

/// Parses a whole call: the environment, then the configuration on stdin.
pub fn parse(env: &Env, stdin: &[u8]) -> Result<Request, CniError> {
    let command = parse_command(env)?;
    parse_as(command, env, stdin).map_err(|r| r.error)
}

/// Why a call is refused, and the version to answer in: the configuration's, when
/// it names one this plugin supports.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub error: CniError,
    pub version: Option<CniVersion>,
}

/// Parses a call of `command` (already read from the environment), reading stdin
/// once: the refusal carries the version the configuration asked for.
pub fn parse_as(command: Command, env: &Env, stdin: &[u8]) -> Result<Request, Refusal> {
    if command == Command::Version {
        return Ok(Request {
            command,
            params: Params::default(),
            conf: None,
            version_asked: version_asked(stdin),
        });
    }
    let top = decode_top(stdin);
    let version = top.as_ref().ok().and_then(version_in);
    let refuse = |error| Refusal { error, version };
    let params = parse_params(env, command).map_err(refuse)?;
    let top = top.map_err(|error| Refusal { error, version: None })?;
    let conf = parse_conf(&top, command).map_err(refuse)?;
    Ok(Request {
        command,
        params,
        conf: Some(conf),
        version_asked: None,
    })
}

/// The configuration's top-level keys, undecoded.
fn decode_top(stdin: &[u8]) -> Result<BTreeMap<String, &RawValue>, CniError> {
    let decode = |msg: String| CniError::new(code::DECODING_FAILURE, msg);
    let text = std::str::from_utf8(stdin)
        .map_err(|e| decode(format!("error unmarshalling network config: not UTF-8 ({e})")))?;
    serde_json::from_str(text).map_err(|e| decode(format!("error unmarshalling network config: {e}")))
}

/// The supported version the configuration names, if any.
fn version_in(top: &BTreeMap<String, &RawValue>) -> Option<CniVersion> {
    let raw = top.get("cniVersion")?;
    CniVersion::parse(&serde_json::from_str::<String>(raw.get()).ok()?)
}

fn parse_params(env: &Env, command: Command) -> Result<Params, CniError> {
    let missing: Vec<&str> = command
        .required()
        .iter()
        .copied()
        .filter(|name| env.get(name).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let var = |name: &str| -> Result<String, CniError> {
        match env.get(name) {
            None => Ok(String::new()),
            Some(v) => v.to_str().map(str::to_string).ok_or_else(|| {
                CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not valid UTF-8"))
            }),
        }
    };
    let params = Params {
        container_id: var("CNI_CONTAINERID")?,
        netns: var("CNI_NETNS")?,
        ifname: var("CNI_IFNAME")?,
        args: var("CNI_ARGS")?,
        path: var("CNI_PATH")?,
    };
    if !params.container_id.is_empty() && !valid_name(&params.container_id) {
        return Err(
            CniError::new(code::INVALID_ENVIRONMENT, "invalid characters in CNI_CONTAINERID")
                .with_details(params.container_id.clone()),
        );
    }
    if !params.ifname.is_empty()
        && let Err(why) = check_interface_name(&params.ifname)
    {
        return Err(
            CniError::new(code::INVALID_ENVIRONMENT, format!("invalid CNI_IFNAME: {why}"))
                .with_details(params.ifname.clone()),
        );
    }
    Ok(params)
}

/// What VERSION reports as the version asked: stdin's `cniVersion` when stdin is a
/// JSON object with a string there.
fn version_asked(stdin: &[u8]) -> Option<String> {
    let top: BTreeMap<String, Value> = serde_json::from_slice(stdin).ok()?;
    top.get("cniVersion")?.as_str().map(str::to_string)
}

fn parse_conf(top: &BTreeMap<String, &RawValue>, command: Command) -> Result<NetConf, CniError> {
    let decode = |msg: String| CniError::new(code::DECODING_FAILURE, msg);
    let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);

    // A string field; `Ok(None)` when absent or null.
    let string = |key: &str| -> Result<Option<String>, CniError> {
        match top.get(key) {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Option<String>>(raw.get())
                .map_err(|_| decode(format!("{key} must be a string, not {}", raw.get()))),
        }
    };

    let cni_version = match string("cniVersion")? {
        None => return Err(incompatible("0.1.0 (no cniVersion given)")),
        Some(v) => CniVersion::parse(&v).ok_or_else(|| incompatible(&v))?,
    };
    if cni_version < command.since() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {cni_version} does not allow {}", command.as_str()),
        ));
    }

    let name = string("name")?.unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("missing network name".to_string()));
    }
    if !valid_name(&name) {
        return Err(invalid(format!(
            "invalid characters found in network name {name:?}"
        )));
    }
    string("type")?;

    let bridge = string("bridge")?.unwrap_or_default();
    if matches!(command, Command::Add | Command::Check) {
        if bridge.is_empty() {
            return Err(invalid(
                "missing bridge: the name of the bridge to wait for".to_string(),
            ));
        }
        check_interface_name(&bridge).map_err(|why| invalid(format!("invalid bridge {bridge:?}: {why}")))?;
    }

    let socket = string("socket")?.unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    if !socket.starts_with('/') || socket.len() > MAX_SOCKET_PATH || socket.contains('\0') {
        return Err(invalid(format!(
            "socket must be an absolute path of at most {MAX_SOCKET_PATH} bytes, not {socket:?}"
        )));
    }

    let timeout = match top.get("timeoutSeconds") {
        None => DEFAULT_TIMEOUT,
        Some(raw) => {
            let seconds = match serde_json::from_str::<Option<f64>>(raw.get()) {
                Ok(Some(s)) => s,
                Ok(None) => DEFAULT_TIMEOUT.as_secs_f64(),
                Err(_) => {
                    return Err(decode(format!(
                        "timeoutSeconds must be a number, not {}",
                        raw.get()
                    )));
                }
            };
            if !(0.0..=MAX_TIMEOUT.as_secs_f64()).contains(&seconds) {
                return Err(invalid(format!(
                    "timeoutSeconds must be between 0 and {}, not {seconds}",
                    MAX_TIMEOUT.as_secs()
                )));
            }
            Duration::from_secs_f64(seconds)
        }
    };

    let network = match top.get("network") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => Some(parse_network(raw.get()).map_err(|why| invalid(format!("network: {why}")))?),
    };

    let log_file = string("logFile")?;
    if let Some(path) = &log_file
        && (!path.starts_with('/') || path.contains('\0'))
    {
        return Err(invalid(format!("logFile must be an absolute path, not {path:?}")));
    }

    let prev_result = match top.get("prevResult") {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) if raw.get().starts_with('{') => Some((*raw).to_owned()),
        Some(raw) => {
            return Err(decode(format!("prevResult must be an object, not {}", raw.get())));
        }
    };

    Ok(NetConf {
        cni_version,
        name,
        bridge,
        socket: PathBuf::from(socket),
        timeout,
        network,
        log_file: log_file.map(PathBuf::from),
        prev_result,
    })
}

/// `{"name": "...", "uid": "..."}`, both strings that need no percent-encoding in a
/// query (the agent refuses other characters too).
fn parse_network(raw: &str) -> Result<NetworkRef, String> {
    let obj: BTreeMap<String, Value> =
        serde_json::from_str(raw).map_err(|_| format!("must be an object with a name, not {raw}"))?;
    let text = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    };
    let name = text("name")?.ok_or("name is missing")?;
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !name_ok {
        return Err(format!("name must be a Kubernetes object name, not {name:?}"));
    }
    let uid = text("uid")?;
    if let Some(uid) = &uid
        && (uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    {
        return Err(format!("uid must be an object UID, not {uid:?}"));
    }
    Ok(NetworkRef { name, uid })
}

fn incompatible(asked: &str) -> CniError {
    let supported: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(format!(
        "config is {asked:?}, plugin supports [{}]",
        supported.join(" ")
    ))
}

/// A container ID or network name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What the kernel's `dev_valid_name` accepts.
pub fn check_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 15 {
        return Err("it is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("it is . or ..");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("it contains '/', ':' or whitespace");
    }
    Ok(())
}

/// The ADD result: `prevResult` byte for byte when there is one, else an empty
/// result of the request's version.
pub fn add_result(conf: &NetConf) -> String {
    match &conf.prev_result {
        Some(prev) => prev.get().to_string(),
        None => format!(r#"{{"cniVersion":"{}","dns":{{}}}}"#, conf.cni_version),
    }
}

/// The VERSION result.
pub fn version_result(asked: Option<&str>) -> String {
    let supported: Vec<Value> = CniVersion::ALL.iter().map(|v| v.as_str().into()).collect();
    let mut out = serde_json::Map::new();
    out.insert(
        "cniVersion".into(),
        asked.unwrap_or(CniVersion::LATEST.as_str()).into(),
    );
    out.insert("supportedVersions".into(), supported.into());
    Value::Object(out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/run/netns/pod"),
            ("CNI_IFNAME", "net1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .into_iter()
        .collect()
    }

    fn conf(version: &str) -> String {
        format!(r#"{{"cniVersion":"{version}","name":"gw","type":"nno-cni-shim","bridge":"br-gw"}}"#)
    }

    fn err(env: &Env, stdin: &str) -> CniError {
        parse(env, stdin.as_bytes()).expect_err("want an error")
    }

    #[test]
    fn parses_a_full_add() {
        let stdin = r#"{"cniVersion":"1.0.0","name":"gw","type":"nno-cni-shim","bridge":"br-gw",
            "socket":"/var/run/x.sock","timeoutSeconds":2.5,"logFile":"/var/log/shim.log",
            "network":{"name":"gateway","uid":"6f1c9b2e-0d4a-4e55-9b1a-3c2d1e0f9a8b"},
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"192.0.2.1/24"}]},
            "runtimeConfig":{},"args":{"cni":{}}}"#;
        let req = parse(&env("ADD"), stdin.as_bytes()).unwrap();
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.params.container_id, "c0ffee");
        assert_eq!(req.params.netns, "/run/netns/pod");
        assert_eq!(req.params.ifname, "net1");
        let conf = req.conf.unwrap();
        assert_eq!(conf.cni_version, CniVersion::V1_0_0);
        assert_eq!(conf.bridge, "br-gw");
        assert_eq!(conf.socket, PathBuf::from("/var/run/x.sock"));
        assert_eq!(conf.timeout, Duration::from_millis(2500));
        assert_eq!(conf.log_file, Some(PathBuf::from("/var/log/shim.log")));
        assert_eq!(
            conf.network,
            Some(NetworkRef {
                name: "gateway".into(),
                uid: Some("6f1c9b2e-0d4a-4e55-9b1a-3c2d1e0f9a8b".into())
            })
        );
        assert_eq!(
            conf.prev_result.unwrap().get(),
            r#"{"cniVersion":"1.0.0","ips":[{"address":"192.0.2.1/24"}]}"#
        );
    }

    #[test]
    fn defaults() {
        let conf = parse(&env("ADD"), conf("0.3.1").as_bytes())
            .unwrap()
            .conf
            .unwrap();
        assert_eq!(conf.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(conf.timeout, DEFAULT_TIMEOUT);
        assert_eq!(conf.log_file, None);
        assert!(conf.prev_result.is_none());
    }

    #[test]
    fn every_version_parses_and_gives_an_empty_result_of_its_own_version() {
        for version in CniVersion::ALL {
            let conf = parse(&env("ADD"), conf(version.as_str()).as_bytes())
                .unwrap()
                .conf
                .unwrap();
            assert_eq!(conf.cni_version, version);
            let result: Value = serde_json::from_str(&add_result(&conf)).unwrap();
            assert_eq!(
                result,
                serde_json::json!({"cniVersion": version.as_str(), "dns": {}})
            );
        }
    }

    #[test]
    fn prev_result_passes_through_byte_for_byte() {
        // Key order, spacing and number spelling as given: nothing is re-encoded.
        let prev = r#"{ "ips" : [ {"address":"192.0.2.7/24","gateway":"192.0.2.1"} ], "cniVersion":"0.4.0","x":1.50 }"#;
        let stdin =
            format!(r#"{{"cniVersion":"0.4.0","name":"gw","type":"t","bridge":"br0","prevResult":{prev}}}"#);
        let conf = parse(&env("ADD"), stdin.as_bytes()).unwrap().conf.unwrap();
        assert_eq!(add_result(&conf), prev);
    }

    #[test]
    fn null_prev_result_is_no_prev_result() {
        let stdin = r#"{"cniVersion":"1.1.0","name":"gw","bridge":"br0","prevResult":null}"#;
        let conf = parse(&env("ADD"), stdin.as_bytes()).unwrap().conf.unwrap();
        assert!(conf.prev_result.is_none());
    }

    #[test]
    fn version_echoes_the_version_asked() {
        let req = parse(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#).unwrap();
        let out: Value = serde_json::from_str(&version_result(req.version_asked.as_deref())).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"cniVersion": "0.4.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        // VERSION ignores what it cannot read, like libcni's skel.
        let req = parse(&[("CNI_COMMAND", "VERSION")].into_iter().collect(), b"garbage").unwrap();
        let out: Value = serde_json::from_str(&version_result(req.version_asked.as_deref())).unwrap();
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn error_json() {
        let e = CniError::new(11, "not ready").with_details("why");
        let v: Value = serde_json::from_str(&e.to_json(CniVersion::V0_3_1)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"0.3.1","code":11,"msg":"not ready","details":"why"})
        );
        let v: Value = serde_json::from_str(&CniError::new(7, "x").to_json(CniVersion::V1_1_0)).unwrap();
        assert_eq!(v, serde_json::json!({"cniVersion":"1.1.0","code":7,"msg":"x"}));
    }

    #[test]
    fn commands_outside_their_versions_are_incompatible() {
        assert_eq!(
            err(&env("CHECK"), &conf("0.3.1")).code,
            code::INCOMPATIBLE_VERSION
        );
        assert!(parse(&env("CHECK"), conf("0.4.0").as_bytes()).is_ok());
        assert_eq!(
            err(&env("STATUS"), &conf("1.0.0")).code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(err(&env("GC"), &conf("1.0.0")).code, code::INCOMPATIBLE_VERSION);
        assert!(parse(&env("STATUS"), conf("1.1.0").as_bytes()).is_ok());
        assert!(parse(&env("GC"), conf("1.1.0").as_bytes()).is_ok());
    }

    #[test]
    fn bad_environment_is_code_4() {
        let cases: Vec<(Env, &str)> = vec![
            (Env::default(), "CNI_COMMAND"),
            ([("CNI_COMMAND", "")].into_iter().collect(), "CNI_COMMAND"),
            ([("CNI_COMMAND", "add")].into_iter().collect(), "add"),
            (
                [("CNI_COMMAND", "ADD")].into_iter().collect(),
                "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME",
            ),
            (
                [
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_IFNAME", "eth0"),
                ]
                .into_iter()
                .collect(),
                "CNI_NETNS",
            ),
            ([("CNI_COMMAND", "GC")].into_iter().collect(), "CNI_PATH"),
            (
                {
                    let mut e = env("ADD");
                    e.set("CNI_CONTAINERID", "-starts-with-dash");
                    e
                },
                "CNI_CONTAINERID",
            ),
            (
                {
                    let mut e = env("ADD");
                    e.set("CNI_IFNAME", "much-too-long-name");
                    e
                },
                "CNI_IFNAME",
            ),
            (
                {
                    let mut e = env("ADD");
                    e.set("CNI_IFNAME", "a b");
                    e
                },
                "CNI_IFNAME",
            ),
            (
                {
                    use std::os::unix::ffi::OsStringExt;
                    let mut e = env("ADD");
                    e.set("CNI_NETNS", OsString::from_vec(vec![b'/', 0xff]));
                    e
                },
                "CNI_NETNS",
            ),
        ];
        for (env, mention) in cases {
            let e = err(&env, &conf("1.0.0"));
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{env:?}: {e:?}");
            assert!(
                e.msg.contains(mention) || e.details.contains(mention),
                "{env:?}: {e:?} does not mention {mention}"
            );
        }
    }

    #[test]
    fn bad_configuration_gets_its_code() {
        let cases: &[(&str, u32)] = &[
            ("", code::DECODING_FAILURE),
            ("not json", code::DECODING_FAILURE),
            ("[]", code::DECODING_FAILURE),
            ("null", code::DECODING_FAILURE),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0""#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":1,"name":"gw","bridge":"br0"}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":["gw"],"bridge":"br0"}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":7}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","type":{},"bridge":"br0"}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","socket":false}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","timeoutSeconds":"5"}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","logFile":1}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","prevResult":[]}"#,
                code::DECODING_FAILURE,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","prevResult":"x"}"#,
                code::DECODING_FAILURE,
            ),
            (r#"{"name":"gw","bridge":"br0"}"#, code::INCOMPATIBLE_VERSION),
            (
                r#"{"cniVersion":"0.2.0","name":"gw","bridge":"br0"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"gw","bridge":"br0"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"","name":"gw","bridge":"br0"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (r#"{"cniVersion":"1.0.0","bridge":"br0"}"#, code::INVALID_CONFIG),
            (
                r#"{"cniVersion":"1.0.0","name":"g w","bridge":"br0"}"#,
                code::INVALID_CONFIG,
            ),
            (r#"{"cniVersion":"1.0.0","name":"gw"}"#, code::INVALID_CONFIG),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":""}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"bridge-name-too-long"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br:0"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","socket":"agent.sock"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","timeoutSeconds":-1}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","timeoutSeconds":301}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","logFile":"shim.log"}"#,
                code::INVALID_CONFIG,
            ),
        ];
        for (stdin, want) in cases {
            let e = err(&env("ADD"), stdin);
            assert_eq!(e.code, *want, "{stdin}: {e:?}");
        }
        let long_socket = format!(
            r#"{{"cniVersion":"1.0.0","name":"gw","bridge":"br0","socket":"/{}"}}"#,
            "s".repeat(107)
        );
        assert_eq!(err(&env("ADD"), &long_socket).code, code::INVALID_CONFIG);
    }

    #[test]
    fn the_network_must_be_a_name_and_uid_that_need_no_encoding() {
        let with = |network: &str| {
            format!(r#"{{"cniVersion":"1.0.0","name":"gw","bridge":"br0","network":{network}}}"#)
        };
        let ok = parse(&env("ADD"), with(r#"{"name":"gw.a-1"}"#).as_bytes()).unwrap();
        assert_eq!(ok.conf.unwrap().network.unwrap().uid, None);
        let none = parse(&env("ADD"), with("null").as_bytes()).unwrap();
        assert_eq!(none.conf.unwrap().network, None);
        for bad in [
            r#""gw""#,
            r#"{}"#,
            r#"{"name":""}"#,
            r#"{"name":"GW"}"#,
            r#"{"name":"a&b"}"#,
            r#"{"name":"gw","uid":"x y"}"#,
            r#"{"name":"gw","uid":5}"#,
        ] {
            let e = err(&env("ADD"), &with(bad));
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}: {}", e.msg);
            assert!(e.msg.starts_with("network: "), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn only_add_and_check_need_a_bridge() {
        let stdin = r#"{"cniVersion":"1.1.0","name":"gw","type":"nno-cni-shim"}"#;
        for command in ["DEL", "STATUS", "GC"] {
            assert!(parse(&env(command), stdin.as_bytes()).is_ok(), "{command}");
        }
        for command in ["ADD", "CHECK"] {
            assert_eq!(err(&env(command), stdin).code, code::INVALID_CONFIG, "{command}");
        }
    }

    #[test]
    fn del_needs_no_netns() {
        let mut e = env("DEL");
        e.set("CNI_NETNS", "");
        assert!(parse(&e, conf("1.0.0").as_bytes()).is_ok());
    }

    #[test]
    fn interface_names() {
        for good in ["br0", "br-gw", "a", "fifteen-chars-x", "br@1", "br%x"] {
            assert_eq!(check_interface_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "br/0",
            "br:0",
            "br 0",
            "br\t0",
            "br\u{a0}",
        ] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
    }
}
