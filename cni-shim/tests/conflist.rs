//! The shim in a real conflist (shim, then the reference bridge plugin with static or
//! host-local IPAM), run the way libcni runs it, in network namespaces these tests
//! create, against the agent's real readiness server. Needs root.
//!
//! Addresses: only 192.0.2.0/24 (documentation range), only inside the namespaces
//! created here.

mod support;

use std::time::{Duration, Instant};

use nno::readiness::BridgeReadiness;
use serde_json::Value;
use support::*;

/// A node (namespace + agent + runtime) and one pod namespace on it.
struct Setup {
    node: Netns,
    agent: Agent,
    runtime: Runtime,
}

impl Setup {
    fn new() -> Self {
        require_root();
        let node = Netns::new("node");
        let agent = Agent::start(&node.name);
        let runtime = Runtime::new(&node);
        Self { node, agent, runtime }
    }

    /// The node has no trace of an attachment: no bridge, no veth.
    fn assert_untouched(&self, pod: &Netns) {
        assert_eq!(
            self.node.links(),
            vec!["lo"],
            "the node namespace gained interfaces"
        );
        assert_eq!(pod.links(), vec!["lo"], "the pod namespace gained interfaces");
    }
}

fn ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .map(|ip| ip["address"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn attachment_waits_while_the_bridge_is_not_ready_and_completes_within_200ms_of_ready() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    s.agent.readiness.set_synced(true);
    s.agent
        .readiness
        .set_bridge("br-gw", BridgeReadiness::not_ready("Creating", "being built"));
    let list = conflist("1.0.0", &s.agent, 20.0, static_ipam(10));
    let att = Attachment::new(&pod);

    let (result, done) = std::thread::scope(|scope| {
        let add = scope.spawn(|| {
            let result = s.runtime.add(&list, &att);
            (result, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            !add.is_finished(),
            "ADD finished while the bridge was not Ready: {:?}",
            add.join()
        );
        s.assert_untouched(&pod);

        s.node.ip(&["link", "add", "br-gw", "type", "bridge"]);
        s.node.ip(&["link", "set", "br-gw", "up"]);
        let flipped = Instant::now();
        s.agent
            .readiness
            .set_bridge("br-gw", BridgeReadiness::ready("up"));
        let (result, done) = add.join().unwrap();
        (result, done - flipped)
    });
    let result = result.unwrap_or_else(|e| panic!("ADD failed: {e:?}"));
    println!("attachment completed {done:?} after the bridge became Ready");
    assert!(
        done < Duration::from_millis(200),
        "attachment completed {done:?} after Ready"
    );

    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(ips(&result), vec!["192.0.2.10/24"]);
    assert_eq!(pod.addresses("net1"), vec!["192.0.2.10/24"]);
    s.runtime.del(&list, &att, Some(&result)).unwrap();
    assert!(!pod.has_link("net1"));
}

#[test]
fn a_refused_attachment_times_out_with_code_11_and_the_bridge_plugin_never_runs() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let att = Attachment::new(&pod);
    let timeout = 0.5;

    // Agent starting, bridge not desired, bridge desired but not Ready: each refused.
    let cases: [(&str, &dyn Fn()); 3] = [
        ("AgentStarting", &|| {}),
        ("NotDesired", &|| {
            s.agent.readiness.set_synced(true);
        }),
        ("CarrierMissing", &|| {
            s.agent.readiness.set_bridge(
                "br-gw",
                BridgeReadiness::not_ready("CarrierMissing", "carrier eth9 does not exist"),
            );
        }),
    ];
    for (reason, prepare) in cases {
        prepare();
        let list = conflist("1.1.0", &s.agent, timeout, static_ipam(11));
        let start = Instant::now();
        let err = s.runtime.add(&list, &att).expect_err("ADD must be refused");
        let waited = start.elapsed();
        assert_eq!(err.plugin, "nno-cni-shim", "{err:?}");
        assert_eq!(err.code(), 11, "{err:?}");
        assert_eq!(err.exit_code, Some(1));
        assert_eq!(err.error["cniVersion"], "1.1.0");
        let msg = err.msg();
        for part in ["br-gw", s.node.name.as_str(), reason] {
            assert!(msg.contains(part), "{msg:?} does not name {part}");
        }
        assert!(
            waited >= Duration::from_secs_f64(timeout),
            "{reason}: refused after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "{reason}: refused after {waited:?}"
        );
        println!("{reason}: {msg} ({})", err.error["details"]);
        s.assert_untouched(&pod);
    }
}

#[test]
fn without_an_agent_the_attachment_is_refused_with_code_11() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let mut list = conflist("0.4.0", &s.agent, 0.3, static_ipam(12));
    list["plugins"][0]["socket"] = s
        .agent
        .dir
        .path()
        .join("nobody/agent.sock")
        .to_string_lossy()
        .into();
    let err = s
        .runtime
        .add(&list, &Attachment::new(&pod))
        .expect_err("ADD must be refused");
    assert_eq!((err.plugin.as_str(), err.code()), ("nno-cni-shim", 11), "{err:?}");
    assert!(
        err.msg().contains("AgentUnreachable") && err.msg().contains("br-gw"),
        "{err:?}"
    );
    assert!(
        err.error["details"]
            .as_str()
            .unwrap()
            .contains("nobody/agent.sock"),
        "{err:?}"
    );
    s.assert_untouched(&pod);
}

/// The reason the shim exists: without it, the bridge plugin builds a bridge of its own
/// when the agent has not built one yet. (This is what the tests above show does not
/// happen with the shim.)
#[test]
fn without_the_shim_the_bridge_plugin_creates_the_missing_bridge() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let list = conflist_without_shim("1.0.0", static_ipam(13));
    let att = Attachment::new(&pod);
    let result = s.runtime.add(&list, &att).unwrap();
    assert!(s.node.has_link("br-gw"), "the bridge plugin did not create br-gw");
    s.runtime.del(&list, &att, Some(&result)).unwrap();
}

#[test]
fn del_always_succeeds() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let att = Attachment::new(&pod);
    s.agent.build_bridge(&s.node, "br-gw");
    let list = conflist("1.0.0", &s.agent, 300.0, static_ipam(14));
    let result = s.runtime.add(&list, &att).unwrap();
    assert!(pod.has_link("net1"));

    // The agent goes away; DEL must neither wait for it nor fail.
    let mut gone = list.clone();
    gone["plugins"][0]["socket"] = s.agent.dir.path().join("gone.sock").to_string_lossy().into();
    let start = Instant::now();
    s.runtime.del(&gone, &att, Some(&result)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "DEL took {:?}",
        start.elapsed()
    );
    assert!(!pod.has_link("net1"));

    // Again (DEL is idempotent), without prevResult, with an empty prevResult.
    s.runtime.del(&gone, &att, Some(&result)).unwrap();
    s.runtime.del(&gone, &att, None).unwrap();
    let shim = &list["plugins"][0];
    s.runtime
        .exec("DEL", &list, shim, Some(&serde_json::json!({})), &att)
        .unwrap();

    // The pod's namespace is gone.
    let att_gone = Attachment {
        netns: pod.path(),
        ..Attachment::new(&pod)
    };
    drop(pod);
    s.runtime.del(&gone, &att_gone, Some(&result)).unwrap();

    // No namespace at all: the shim alone with CNI_NETNS empty.
    let no_netns = Attachment {
        netns: "".into(),
        ..att_gone
    };
    s.runtime.exec("DEL", &gone, shim, None, &no_netns).unwrap();
}

#[test]
fn each_cni_version_round_trips() {
    let s = Setup::new();
    s.agent.build_bridge(&s.node, "br-gw");
    let data_dir = tempfile::tempdir().unwrap();
    let cases = [
        ("0.3.0", None),
        ("0.3.1", None),
        ("0.4.0", None),
        ("1.0.0", None),
        ("1.1.0", None),
        // A 1.1.0 conflist may list versions; libcni picks the highest it knows.
        ("1.1.0", Some(vec!["0.4.0", "1.0.0", "1.1.0"])),
    ];
    for (i, (version, versions)) in cases.into_iter().enumerate() {
        let pod = Netns::new("pod");
        let att = Attachment::new(&pod);
        let host = 20 + i as u8;
        let ipam = if i % 2 == 0 {
            static_ipam(host)
        } else {
            host_local_ipam(data_dir.path())
        };
        let mut list = conflist(version, &s.agent, 5.0, ipam);
        if let Some(versions) = &versions {
            list.as_object_mut().unwrap().remove("cniVersion");
            list["cniVersions"] = serde_json::json!(versions);
        }

        // The shim alone answers in the request's version.
        let shim_out = s
            .runtime
            .exec("ADD", &list, &list["plugins"][0], None, &att)
            .unwrap();
        let shim_result: Value = serde_json::from_str(&shim_out).unwrap();
        assert_eq!(shim_result["cniVersion"], version, "{shim_out}");

        let result = s
            .runtime
            .add(&list, &att)
            .unwrap_or_else(|e| panic!("{version}: {e:?}"));
        assert_eq!(result["cniVersion"], version, "{result}");
        let addrs = ips(&result);
        assert_eq!(addrs.len(), 1, "{version}: {result}");
        assert_eq!(pod.addresses("net1"), addrs, "{version}");
        let checked = version != "0.3.0" && version != "0.3.1";
        if checked {
            s.runtime
                .check(&list, &att, &result)
                .unwrap_or_else(|e| panic!("{version}: CHECK {e:?}"));
        }
        s.runtime
            .del(&list, &att, Some(&result))
            .unwrap_or_else(|e| panic!("{version}: DEL {e:?}"));
        assert!(!pod.has_link("net1"), "{version}: net1 outlived DEL");
        let check = if checked {
            "CHECK ok"
        } else {
            "no CHECK before 0.4.0"
        };
        println!("{version} {versions:?}: ADD {addrs:?}, {check}, DEL ok");
    }
}

#[test]
fn check_fails_once_the_bridge_is_no_longer_ready() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let att = Attachment::new(&pod);
    s.agent.build_bridge(&s.node, "br-gw");
    let list = conflist("1.0.0", &s.agent, 5.0, static_ipam(30));
    let result = s.runtime.add(&list, &att).unwrap();
    s.runtime.check(&list, &att, &result).unwrap();
    s.agent.readiness.set_bridge(
        "br-gw",
        BridgeReadiness::not_ready("VxlanMissing", "vxlan-gw is gone"),
    );
    let err = s
        .runtime
        .check(&list, &att, &result)
        .expect_err("CHECK must fail");
    assert_eq!((err.plugin.as_str(), err.code()), ("nno-cni-shim", 11), "{err:?}");
    assert!(err.msg().contains("VxlanMissing"), "{err:?}");
    s.runtime.del(&list, &att, Some(&result)).unwrap();
}

#[test]
fn the_shim_logs_each_call_to_its_log_file() {
    let s = Setup::new();
    let pod = Netns::new("pod");
    let att = Attachment::new(&pod);
    s.agent.build_bridge(&s.node, "br-gw");
    let list = conflist("1.0.0", &s.agent, 5.0, static_ipam(31));
    let result = s.runtime.add(&list, &att).unwrap();
    s.runtime.del(&list, &att, Some(&result)).unwrap();
    let log = std::fs::read_to_string(s.agent.dir.path().join("shim.log")).unwrap();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let commands: Vec<&str> = lines.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(commands, vec!["ADD", "DEL"], "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["result"] == "ok" && l["containerID"] == att.container_id.as_str())
    );
}
