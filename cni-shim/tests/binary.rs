//! The real `nno-cni-shim` binary, run as a process the way a runtime runs it (env,
//! stdin, exit code, stdout): bad input of every kind gets its CNI error code, and
//! never a panic.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const SHIM: &str = env!("CARGO_BIN_EXE_nno-cni-shim");

struct Run {
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn shim(env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut child = Command::new(SHIM)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The shim may answer before reading everything (it refuses oversized input).
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        exit_code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Environment variables, as name and value.
type Vars = Vec<(&'static str, &'static str)>;

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c0ffee"),
    ("CNI_NETNS", "/run/netns/none"),
    ("CNI_IFNAME", "net1"),
    ("CNI_PATH", "/opt/cni/bin"),
];

fn with(base: &[(&'static str, &'static str)], key: &'static str, value: &'static str) -> Vars {
    let mut env: Vec<_> = base.iter().copied().filter(|(k, _)| *k != key).collect();
    env.push((key, value));
    env
}

fn without(base: &[(&'static str, &'static str)], key: &str) -> Vars {
    base.iter().copied().filter(|(k, _)| *k != key).collect()
}

const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"gw","type":"nno-cni-shim","bridge":"br-gw","socket":"/nonexistent/agent.sock","timeoutSeconds":0}"#;

#[test]
fn bad_inputs_each_get_their_error_code() {
    let huge = format!(
        r#"{{"cniVersion":"1.0.0","name":"gw","bridge":"br0","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    let check = with(ADD, "CNI_COMMAND", "CHECK");
    let cases: Vec<(&str, Vars, &[u8], u64)> = vec![
        ("no CNI_COMMAND", without(ADD, "CNI_COMMAND"), GOOD.as_bytes(), 4),
        (
            "unknown CNI_COMMAND",
            with(ADD, "CNI_COMMAND", "ATTACH"),
            GOOD.as_bytes(),
            4,
        ),
        (
            "no CNI_CONTAINERID",
            without(ADD, "CNI_CONTAINERID"),
            GOOD.as_bytes(),
            4,
        ),
        (
            "bad CNI_CONTAINERID",
            with(ADD, "CNI_CONTAINERID", "../etc"),
            GOOD.as_bytes(),
            4,
        ),
        ("no CNI_NETNS", without(ADD, "CNI_NETNS"), GOOD.as_bytes(), 4),
        ("no CNI_IFNAME", without(ADD, "CNI_IFNAME"), GOOD.as_bytes(), 4),
        (
            "long CNI_IFNAME",
            with(ADD, "CNI_IFNAME", "net1-much-too-long"),
            GOOD.as_bytes(),
            4,
        ),
        (
            "CHECK without CNI_NETNS",
            without(&check, "CNI_NETNS"),
            GOOD.as_bytes(),
            4,
        ),
        (
            "GC without CNI_PATH",
            vec![("CNI_COMMAND", "GC")],
            GOOD.as_bytes(),
            4,
        ),
        ("empty stdin", ADD.to_vec(), b"", 6),
        ("not JSON", ADD.to_vec(), b"cniVersion=1.0.0", 6),
        (
            "truncated JSON",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"#,
            6,
        ),
        ("JSON array", ADD.to_vec(), b"[1,2]", 6),
        ("binary", ADD.to_vec(), b"\xff\xfe\x00\x01", 6),
        ("oversized", ADD.to_vec(), huge.as_bytes(), 6),
        (
            "cniVersion a number",
            ADD.to_vec(),
            br#"{"cniVersion":1.0,"name":"gw","bridge":"br0"}"#,
            6,
        ),
        (
            "bridge a number",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":0}"#,
            6,
        ),
        (
            "prevResult a list",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","prevResult":[]}"#,
            6,
        ),
        (
            "no cniVersion",
            ADD.to_vec(),
            br#"{"name":"gw","bridge":"br0"}"#,
            1,
        ),
        (
            "unknown cniVersion",
            ADD.to_vec(),
            br#"{"cniVersion":"0.2.0","name":"gw","bridge":"br0"}"#,
            1,
        ),
        (
            "future cniVersion",
            ADD.to_vec(),
            br#"{"cniVersion":"1.2.0","name":"gw","bridge":"br0"}"#,
            1,
        ),
        (
            "CHECK on 0.3.1",
            check.clone(),
            br#"{"cniVersion":"0.3.1","name":"gw","bridge":"br0"}"#,
            1,
        ),
        (
            "STATUS on 1.0.0",
            vec![("CNI_COMMAND", "STATUS")],
            GOOD.as_bytes(),
            1,
        ),
        (
            "no network name",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","bridge":"br0"}"#,
            7,
        ),
        (
            "no bridge",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw"}"#,
            7,
        ),
        (
            "bad bridge",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br/gw"}"#,
            7,
        ),
        (
            "relative socket",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","socket":"a.sock"}"#,
            7,
        ),
        (
            "negative timeout",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","timeoutSeconds":-3}"#,
            7,
        ),
        (
            "huge timeout",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","timeoutSeconds":1e9}"#,
            7,
        ),
        (
            "relative logFile",
            ADD.to_vec(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","logFile":"x.log"}"#,
            7,
        ),
        ("no agent", ADD.to_vec(), GOOD.as_bytes(), 11),
        (
            "STATUS, no agent",
            vec![("CNI_COMMAND", "STATUS")],
            br#"{"cniVersion":"1.1.0","name":"gw","socket":"/nonexistent/a.sock"}"#,
            50,
        ),
    ];
    println!("{:<28} {:>4}  msg", "input", "code");
    for (name, env, stdin, want) in cases {
        let run = shim(&env, stdin);
        assert!(
            !run.stderr.contains("panicked"),
            "{name}: the shim panicked: {}",
            run.stderr
        );
        assert_eq!(run.exit_code, Some(1), "{name}: {}", run.stdout);
        let err: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{name}: stdout is not a CNI error ({e}): {:?}", run.stdout));
        assert_eq!(err["code"], want, "{name}: {err}");
        assert!(err["cniVersion"].is_string(), "{name}: {err}");
        assert!(!err["msg"].as_str().unwrap().is_empty(), "{name}: {err}");
        println!("{name:<28} {want:>4}  {}", err["msg"]);
    }
}

#[test]
fn del_succeeds_whatever_it_is_given() {
    let del = with(ADD, "CNI_COMMAND", "DEL");
    let cases: Vec<(&str, Vars, &[u8])> = vec![
        ("good, no agent", del.clone(), GOOD.as_bytes()),
        ("no CNI_NETNS", without(&del, "CNI_NETNS"), GOOD.as_bytes()),
        (
            "no CNI_CONTAINERID",
            without(&del, "CNI_CONTAINERID"),
            GOOD.as_bytes(),
        ),
        ("garbage stdin", del.clone(), b"\x00garbage"),
        ("empty stdin", del.clone(), b""),
        (
            "unknown version",
            del.clone(),
            br#"{"cniVersion":"7.0.0","name":"gw"}"#,
        ),
        (
            "empty prevResult",
            del.clone(),
            br#"{"cniVersion":"1.0.0","name":"gw","bridge":"br0","prevResult":{}}"#,
        ),
    ];
    for (name, env, stdin) in cases {
        let start = std::time::Instant::now();
        let run = shim(&env, stdin);
        assert_eq!(
            (run.exit_code, run.stdout.as_str()),
            (Some(0), ""),
            "{name}: {}",
            run.stderr
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{name}: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn version_gc_and_the_no_command_case() {
    let run = shim(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.3.1"}"#);
    assert_eq!(run.exit_code, Some(0));
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "0.3.1", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    assert!(run.stdout.ends_with('\n'));

    let gc = shim(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        br#"{"cniVersion":"1.1.0","name":"gw","type":"nno-cni-shim","cni.dev/valid-attachments":[]}"#,
    );
    assert_eq!((gc.exit_code, gc.stdout.as_str()), (Some(0), ""));
}

#[test]
fn a_log_file_that_cannot_be_written_does_not_fail_the_call() {
    let stdin = br#"{"cniVersion":"1.1.0","name":"gw","logFile":"/proc/version/x.log"}"#;
    let run = shim(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")], stdin);
    assert_eq!((run.exit_code, run.stdout.as_str()), (Some(0), ""));
    assert!(run.stderr.contains("cannot write log file"), "{}", run.stderr);
}
