//! `nno-cni-shim`: the first plugin of every NetworkAttachmentDefinition the
//! operator writes. It holds a pod's attachment until the node agent reports the
//! network's bridge Ready, so that the bridge plugin after it never creates a bridge
//! of its own. See `docs/cni-shim.md`.
//!
//! [`run`] is the whole plugin: environment and stdin in, stdout and exit code out.

pub mod agent;
pub mod cni;
mod log;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use agent::{Agent, BridgeStatus, Wait};
use cni::{CniError, CniVersion, Command, Env, MAX_STDIN, NetConf, Request, code};

/// How long STATUS and CHECK wait for the agent's answer.
const QUICK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Self { stdout, exit_code: 0 }
    }

    fn error(err: &CniError, version: CniVersion) -> Self {
        Self {
            stdout: err.to_json(version),
            exit_code: 1,
        }
    }
}

/// Runs one CNI call.
pub fn run(env: &Env, stdin: &mut dyn Read) -> Outcome {
    let started = Instant::now();
    let command = cni::parse_command(env);
    let input = read_stdin(stdin);
    let parsed = match (&command, &input) {
        (Err(e), _) | (_, Err(e)) => Err(cni::Refusal {
            error: e.clone(),
            version: input.as_deref().ok().and_then(version_of),
        }),
        (Ok(command), Ok(bytes)) => cni::parse_as(*command, env, bytes),
    };
    let request = match parsed {
        Ok(request) => request,
        Err(cni::Refusal { error: err, .. }) if command == Ok(Command::Del) => {
            // DEL must never fail: a failed DEL wedges the pod's teardown, and the
            // shim has nothing to undo anyway.
            eprintln!(
                "nno-cni-shim: DEL with unusable input succeeds anyway: {}",
                err.msg
            );
            return Outcome::ok(String::new());
        }
        Err(refusal) => {
            let version = refusal.version.unwrap_or(CniVersion::LATEST);
            return Outcome::error(&refusal.error, version);
        }
    };
    let Some(conf) = &request.conf else {
        return Outcome::ok(cni::version_result(request.version_asked.as_deref()));
    };
    let result = execute(&request, conf);
    if let Some(path) = &conf.log_file {
        log::append(path, log_fields(&request, conf, &result, started.elapsed()));
    }
    match result {
        Ok(stdout) => Outcome::ok(stdout),
        Err(err) => Outcome::error(&err, conf.cni_version),
    }
}

fn execute(request: &Request, conf: &NetConf) -> Result<String, CniError> {
    let agent = Agent::new(&conf.socket).for_network(conf.network.clone());
    match request.command {
        Command::Add => match agent.wait_ready(&conf.bridge, conf.timeout) {
            Wait::Ready(_) => Ok(cni::add_result(conf)),
            Wait::NotReady(status) => Err(not_ready(&status, conf.timeout)),
            Wait::Failed(err) => Err(unreachable(&conf.bridge, conf.timeout, &err)),
        },
        Command::Check => match agent.bridge(&conf.bridge, None) {
            Ok(status) if status.ready => Ok(String::new()),
            Ok(status) => Err(not_ready(&status, Duration::ZERO)),
            Err(err) => Err(unreachable(&conf.bridge, Duration::ZERO, &err)),
        },
        Command::Status => match agent.status(QUICK_TIMEOUT) {
            Ok(_) => Ok(String::new()),
            Err(err) => Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("plugin not available: {err}"),
            )),
        },
        Command::Del | Command::Gc => Ok(String::new()),
        Command::Version => Ok(cni::version_result(request.version_asked.as_deref())),
    }
}

fn not_ready(status: &BridgeStatus, waited: Duration) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "bridge {} is not Ready on node {}{}: {}",
            status.bridge,
            status.node,
            after(waited),
            status.reason
        ),
    )
    .with_details(status.message.clone())
}

fn unreachable(bridge: &str, waited: Duration, err: &agent::AgentError) -> CniError {
    CniError::new(
        code::TRY_AGAIN_LATER,
        format!(
            "bridge {bridge} is not known to be Ready on node {}{}: AgentUnreachable",
            hostname(),
            after(waited)
        ),
    )
    .with_details(err.to_string())
}

fn after(waited: Duration) -> String {
    if waited.is_zero() {
        String::new()
    } else {
        format!(" after waiting {waited:?}")
    }
}

/// The node's name as far as the shim can tell without the agent.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "(unknown)".to_string())
}

/// Reads stdin, refusing more than [`MAX_STDIN`] bytes.
fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("error reading from stdin: {e}")))?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            format!("the network configuration on stdin is larger than {MAX_STDIN} bytes"),
        ));
    }
    Ok(buf)
}

/// The request's version when it names a supported one, for error answers.
fn version_of(stdin: &[u8]) -> Option<CniVersion> {
    let top: Map<String, Value> = serde_json::from_slice(stdin).ok()?;
    CniVersion::parse(top.get("cniVersion")?.as_str()?)
}

fn log_fields(
    request: &Request,
    conf: &NetConf,
    result: &Result<String, CniError>,
    elapsed: Duration,
) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("command".into(), request.command.as_str().into());
    fields.insert("containerID".into(), request.params.container_id.clone().into());
    fields.insert("ifname".into(), request.params.ifname.clone().into());
    fields.insert("network".into(), conf.name.clone().into());
    fields.insert("bridge".into(), conf.bridge.clone().into());
    fields.insert("cniVersion".into(), conf.cni_version.as_str().into());
    match result {
        Ok(_) => {
            fields.insert("result".into(), "ok".into());
        }
        Err(err) => {
            fields.insert("result".into(), "error".into());
            fields.insert("code".into(), err.code.into());
            fields.insert("msg".into(), err.msg.clone().into());
            fields.insert("details".into(), err.details.clone().into());
        }
    }
    fields.insert(
        "elapsedMs".into(),
        ((elapsed.as_secs_f64() * 1e6).round() / 1e3).into(),
    );
    fields
}

#[cfg(test)]
mod tests {
    //! Dispatch, without a process, against the real readiness server of the agent.

    use std::path::{Path, PathBuf};

    use nno::readiness::{BridgeReadiness, Readiness, Server};

    use super::*;

    /// The agent's readiness server on a socket in a temporary directory.
    struct TestAgent {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        readiness: Readiness,
        rt: tokio::runtime::Runtime,
    }

    impl TestAgent {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("agent.sock");
            let readiness = Readiness::new("node-a");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let agent = Self {
                _dir: dir,
                socket,
                readiness,
                rt,
            };
            agent.serve();
            agent
        }

        fn serve(&self) {
            let _guard = self.rt.enter();
            let server = Server::bind(&self.socket).unwrap();
            self.rt
                .spawn(server.run(self.readiness.clone(), std::future::pending()));
        }

        fn set_ready(&self, bridge: &str) {
            self.readiness.set_synced(true);
            self.readiness.set_bridge(bridge, BridgeReadiness::ready("up"));
        }
    }

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

    fn conf(version: &str, socket: &Path, timeout: f64, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"gw","type":"nno-cni-shim","bridge":"br-gw",
               "socket":"{}","timeoutSeconds":{timeout}{extra}}}"#,
            socket.display()
        )
    }

    fn call(command: &str, stdin: &str) -> Outcome {
        run(&env(command), &mut stdin.as_bytes())
    }

    fn error_of(outcome: &Outcome) -> Value {
        assert_ne!(outcome.exit_code, 0, "want an error, got {outcome:?}");
        serde_json::from_str(&outcome.stdout).unwrap()
    }

    #[test]
    fn add_when_ready_prints_an_empty_result_of_each_version() {
        let agent = TestAgent::start();
        agent.set_ready("br-gw");
        for version in CniVersion::ALL {
            let out = call("ADD", &conf(version.as_str(), &agent.socket, 5.0, ""));
            assert_eq!(out.exit_code, 0, "{version}: {out:?}");
            let result: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(
                result,
                serde_json::json!({"cniVersion": version.as_str(), "dns": {}})
            );
        }
    }

    #[test]
    fn add_when_ready_passes_prev_result_through() {
        let agent = TestAgent::start();
        agent.set_ready("br-gw");
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"net1","sandbox":"/x"}],"ips":[{"address":"192.0.2.9/24","interface":0}]}"#;
        let out = call(
            "ADD",
            &conf("1.0.0", &agent.socket, 5.0, &format!(r#","prevResult":{prev}"#)),
        );
        assert_eq!(out, Outcome::ok(prev.to_string()));
    }

    #[test]
    fn add_waits_for_the_bridge_then_succeeds() {
        let agent = TestAgent::start();
        agent.readiness.set_synced(true);
        let readiness = agent.readiness.clone();
        let flipper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let flipped = Instant::now();
            readiness.set_bridge("br-gw", BridgeReadiness::ready("up"));
            flipped
        });
        let out = call("ADD", &conf("1.1.0", &agent.socket, 10.0, ""));
        let done = Instant::now();
        let flipped = flipper.join().unwrap();
        assert_eq!(out.exit_code, 0, "{out:?}");
        assert!(done > flipped, "ADD succeeded before the bridge was Ready");
        assert!(
            done - flipped < Duration::from_millis(100),
            "took {:?}",
            done - flipped
        );
    }

    #[test]
    fn add_times_out_with_code_11_naming_node_bridge_and_reason() {
        let agent = TestAgent::start();
        agent.readiness.set_synced(true);
        agent.readiness.set_bridge(
            "br-gw",
            BridgeReadiness::not_ready("CarrierMissing", "eth9 does not exist"),
        );
        let start = Instant::now();
        let out = call("ADD", &conf("0.4.0", &agent.socket, 0.4, ""));
        let waited = start.elapsed();
        let err = error_of(&out);
        assert_eq!(err["code"], 11);
        assert_eq!(err["cniVersion"], "0.4.0");
        let msg = err["msg"].as_str().unwrap();
        for part in ["br-gw", "node-a", "CarrierMissing"] {
            assert!(msg.contains(part), "{msg:?} lacks {part}");
        }
        assert_eq!(err["details"], "eth9 does not exist");
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }

    #[test]
    fn add_not_desired_and_agent_starting_are_code_11() {
        let agent = TestAgent::start();
        let err = error_of(&call("ADD", &conf("1.0.0", &agent.socket, 0.0, "")));
        assert_eq!(err["code"], 11);
        assert!(err["msg"].as_str().unwrap().ends_with("AgentStarting"), "{err}");
        agent.readiness.set_synced(true);
        let err = error_of(&call("ADD", &conf("1.0.0", &agent.socket, 0.0, "")));
        assert!(err["msg"].as_str().unwrap().ends_with("NotDesired"), "{err}");
    }

    #[test]
    fn add_without_an_agent_times_out_with_code_11() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let start = Instant::now();
        let err = error_of(&call("ADD", &conf("1.0.0", &socket, 0.3, "")));
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(err["code"], 11);
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("br-gw") && msg.contains(&hostname()) && msg.contains("AgentUnreachable"),
            "{msg}"
        );
        assert!(err["details"].as_str().unwrap().contains("absent.sock"), "{err}");
    }

    #[test]
    fn add_succeeds_when_the_agent_comes_up_during_the_wait() {
        let agent = TestAgent::start();
        std::fs::remove_file(&agent.socket).unwrap(); // as if the agent were not up yet
        agent.set_ready("br-gw");
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                agent.serve();
            });
            let out = call("ADD", &conf("1.0.0", &agent.socket, 10.0, ""));
            assert_eq!(out.exit_code, 0, "{out:?}");
        });
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }

    #[test]
    fn del_never_blocks_and_always_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let mut no_netns = env("DEL");
        no_netns.set("CNI_NETNS", "");
        let cases: Vec<(Env, String)> = vec![
            (env("DEL"), conf("1.0.0", &socket, 300.0, "")),
            (no_netns, conf("0.3.1", &socket, 300.0, r#","prevResult":{}"#)),
            (env("DEL"), conf("1.1.0", &socket, 300.0, r#","prevResult":null"#)),
            (env("DEL"), "garbage".to_string()),
            (env("DEL"), r#"{"cniVersion":"9.9.9"}"#.to_string()),
            ([("CNI_COMMAND", "DEL")].into_iter().collect(), String::new()),
        ];
        for (env, stdin) in cases {
            let start = Instant::now();
            let out = run(&env, &mut stdin.as_bytes());
            assert_eq!(out, Outcome::ok(String::new()), "{stdin}");
            assert!(
                start.elapsed() < Duration::from_millis(100),
                "{stdin}: {:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn check_asks_once_without_waiting() {
        let agent = TestAgent::start();
        agent.readiness.set_synced(true);
        let start = Instant::now();
        let err = error_of(&call("CHECK", &conf("1.0.0", &agent.socket, 300.0, "")));
        assert_eq!(err["code"], 11);
        assert!(err["msg"].as_str().unwrap().contains("NotDesired"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(1));
        agent.set_ready("br-gw");
        assert_eq!(
            call("CHECK", &conf("1.0.0", &agent.socket, 300.0, "")),
            Outcome::ok(String::new())
        );
    }

    #[test]
    fn status_reports_whether_the_agent_is_reachable() {
        let agent = TestAgent::start();
        assert_eq!(
            call("STATUS", &conf("1.1.0", &agent.socket, 1.0, "")),
            Outcome::ok(String::new())
        );
        let absent = agent.socket.with_file_name("absent.sock");
        let err = error_of(&call("STATUS", &conf("1.1.0", &absent, 1.0, "")));
        assert_eq!(err["code"], 50);
        assert!(err["msg"].as_str().unwrap().contains("absent.sock"), "{err}");
    }

    #[test]
    fn gc_succeeds() {
        let stdin = r#"{"cniVersion":"1.1.0","name":"gw","type":"nno-cni-shim",
            "cni.dev/valid-attachments":[{"containerID":"c0ffee","ifname":"net1"}]}"#;
        assert_eq!(call("GC", stdin), Outcome::ok(String::new()));
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let out = run(
            &[("CNI_COMMAND", "VERSION")].into_iter().collect(),
            &mut &br#"{"cniVersion":"1.0.0"}"#[..],
        );
        assert_eq!(out.exit_code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn errors_carry_the_request_version_when_it_is_known() {
        let err = error_of(&call("ADD", r#"{"cniVersion":"0.3.1","name":"gw"}"#));
        assert_eq!(
            (err["code"].as_u64(), err["cniVersion"].as_str()),
            (Some(7), Some("0.3.1"))
        );
        let err = error_of(&call("ADD", "{"));
        assert_eq!(
            (err["code"].as_u64(), err["cniVersion"].as_str()),
            (Some(6), Some("1.1.0"))
        );
    }

    #[test]
    fn oversized_stdin_is_code_6() {
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"gw","pad":"{}"}}"#,
            "x".repeat(MAX_STDIN)
        );
        let err = error_of(&call("ADD", &stdin));
        assert_eq!(err["code"], 6);
        assert!(err["msg"].as_str().unwrap().contains("larger than"), "{err}");
    }

    #[test]
    fn unreadable_stdin_is_code_5() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("broken pipe"))
            }
        }
        let err = error_of(&run(&env("ADD"), &mut Broken));
        assert_eq!(err["code"], 5);
    }

    #[test]
    fn every_call_logs_one_line_to_the_log_file() {
        let agent = TestAgent::start();
        agent.set_ready("br-gw");
        let log = agent.socket.with_file_name("logs/shim.log");
        let extra = format!(r#","logFile":"{}""#, log.display());
        assert_eq!(
            call("ADD", &conf("1.0.0", &agent.socket, 1.0, &extra)).exit_code,
            0
        );
        agent.readiness.remove_bridge("br-gw");
        assert_ne!(
            call("CHECK", &conf("1.0.0", &agent.socket, 1.0, &extra)).exit_code,
            0
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["command"], "ADD");
        assert_eq!(lines[0]["result"], "ok");
        assert_eq!(lines[0]["containerID"], "c0ffee");
        assert_eq!(lines[0]["bridge"], "br-gw");
        assert_eq!(lines[1]["command"], "CHECK");
        assert_eq!(lines[1]["code"], 11);
        assert!(lines[1]["elapsedMs"].as_f64().is_some());
    }
}
