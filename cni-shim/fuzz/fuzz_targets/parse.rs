//! The CNI request parser: environment and stdin in, a request or a CNI error out,
//! and whatever comes out renders as valid JSON. Never a panic.
//!
//! Input layout: `NAME=VALUE` lines (the environment) up to the first NUL byte, then
//! stdin. Without a NUL, everything is stdin and the environment is an ADD's.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use nno_cni_shim::cni::{self, CniVersion, Env, code};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (env, stdin) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (parse_env(&data[..nul]), &data[nul + 1..]),
        None => (add_env(), data),
    };
    match cni::parse(&env, stdin) {
        Ok(request) => {
            let out = match &request.conf {
                Some(conf) => {
                    assert!(conf.timeout <= cni::MAX_TIMEOUT);
                    cni::add_result(conf)
                }
                None => cni::version_result(request.version_asked.as_deref()),
            };
            let out: Value = serde_json::from_str(&out).expect("a result is JSON");
            assert!(out.is_object(), "a result is an object: {out}");
        }
        Err(err) => {
            assert!(
                [
                    code::INCOMPATIBLE_VERSION,
                    code::INVALID_ENVIRONMENT,
                    code::DECODING_FAILURE,
                    code::INVALID_CONFIG
                ]
                .contains(&err.code),
                "unexpected code {err:?}"
            );
            let out: Value =
                serde_json::from_str(&err.to_json(CniVersion::LATEST)).expect("an error is JSON");
            assert_eq!(out["code"], err.code);
        }
    }
});

fn parse_env(head: &[u8]) -> Env {
    head.split(|&b| b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|&b| b == b'=')?;
            Some((
                OsString::from_vec(line[..eq].to_vec()),
                OsString::from_vec(line[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

fn add_env() -> Env {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .collect()
}
