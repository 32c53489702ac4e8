//! Two routers sharing the gateway address (VRRP, the samples' keepalived): the
//! active one deleted, and then the active one's node cut off, during a client's
//! ping; each time the client's egress resumes through the other.

use super::repair::{background_ping, stop_background_ping};
use super::*;

const ROUTERS: &str = "app.kubernetes.io/name=gateway-ha-router";
const GATEWAY: &str = "192.168.54.1";
const PING_LOG: &str = "/tmp/ha-ping.log";

/// The router pods that run and are not being deleted: (pod, node).
fn routers(tb: &dyn Testbed) -> anyhow::Result<Vec<(String, String)>> {
    let list = json(tb, &["get", "pods", "-n", "default", "-l", ROUTERS])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running")
        .filter_map(|p| {
            Some((
                p["metadata"]["name"].as_str()?.to_string(),
                p["spec"]["nodeName"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Whether router `pod` holds the gateway address on net1.
fn holds_gateway(tb: &dyn Testbed, pod: &str) -> bool {
    in_pod(tb, pod, &["ip", "-4", "-o", "addr", "show", "dev", "net1"])
        .is_ok_and(|out| out.contains(&format!("{GATEWAY}/")))
}

/// The longest time between two answered pings of a `ping -D` log, among those
/// answered after `after` (Unix seconds): how long egress stopped.
pub(super) fn longest_gap(log: &str, after: f64) -> Option<f64> {
    let answered: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    answered
        .windows(2)
        .filter(|w| w[1] > after)
        .map(|w| w[1] - w[0])
        .max_by(f64::total_cmp)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The HA samples applied with kubectl: two routers on two nodes, a client on a
/// third, one router holding the gateway address. The active router deleted during
/// the client's ping to the outside host: the other takes the address over, the
/// client's egress resumes through it (counted at the outside host); how long it
/// stopped is printed.
pub(super) async fn ha(tb: &dyn Testbed) -> anyhow::Result<()> {
    let network = repo("samples/gateway-network/multi-node-ha.yaml")
        .display()
        .to_string();
    let pods = repo("samples/gateway-network/ha-pods.yaml").display().to_string();
    kubectl(tb, &["apply", "-f", &network])?;
    kubectl(
        tb,
        &[
            "wait",
            "--for=condition=Ready",
            "network/gateway-ha",
            "--timeout=120s",
        ],
    )?;
    kubectl(tb, &["apply", "-n", "default", "-f", &pods])?;
    rollout_done(tb)?;
    pods_ready(tb, &["pod/ha-client"], 180)?;
    let (active, standby) = holder(tb).await?;
    let client_node = pod_node(tb, "default", "ha-client").await?;
    anyhow::ensure!(
        client_node != active.1 && client_node != standby.1 && active.1 != standby.1,
        "client on {client_node}, routers on {} and {}",
        active.1,
        standby.1
    );
    let outside = tb.outside();
    let active_ip = node_ip(tb, &active.1).await?.to_string();
    let standby_ip = node_ip(tb, &standby.1).await?.to_string();
    let client_ip = node_ip(tb, &client_node).await?.to_string();
    for ip in [&active_ip, &standby_ip, &client_ip] {
        outside.count_from(ip)?;
    }
    let count = |ip: &str| outside.received_from(ip);
    let before = (count(&active_ip)?, count(&standby_ip)?, count(&client_ip)?);

    let mut ping = background_ping(tb, "ha-client", PING_LOG)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let through_active = count(&active_ip)? - before.0;
    let standby_before = count(&standby_ip)?;
    let deleted_at = unix_now();
    kubectl(tb, &["delete", "pod", "-n", "default", &active.0, "--wait=false"])?;
    let took_over = until("the other router holds the gateway address", WAIT, || async {
        anyhow::ensure!(holds_gateway(tb, &standby.0), "not yet");
        Ok(unix_now())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = stop_background_ping(tb, "ha-client", &mut ping, PING_LOG);
    let (sent, received, log) = stopped?;
    let through_standby = count(&standby_ip)? - standby_before;
    let from_client_node = count(&client_ip)? - before.2;
    let gap = longest_gap(&log, deleted_at);
    println!(
        "HA: client on {client_node}; {} on {} held {GATEWAY} ({through_active} pings through it), deleted; {} on {} held it {:.2} s later; egress stopped for {}; {through_standby} pings through the new router, {from_client_node} straight from the client's node; {received} of {sent} answered",
        active.0,
        active.1,
        standby.0,
        standby.1,
        took_over - deleted_at,
        gap.map_or("-".into(), |g| format!("{g:.2} s")),
    );
    anyhow::ensure!(
        through_active >= 5,
        "egress through the active router first: {through_active}"
    );
    anyhow::ensure!(
        through_standby >= 10,
        "egress resumed through the other router: {through_standby} pings there\n{}",
        tail(&log, 30)
    );
    anyhow::ensure!(
        from_client_node == 0,
        "{from_client_node} pings left from the client's node"
    );
    anyhow::ensure!(
        last_answered(&log, 10),
        "the last pings were answered:\n{}",
        tail(&log, 30)
    );

    isolated(tb).await?;

    kubectl(
        tb,
        &[
            "delete",
            "-n",
            "default",
            "-f",
            &pods,
            "--wait=true",
            "--timeout=60s",
        ],
    )?;
    kubectl(
        tb,
        &["delete", "network/gateway-ha", "--wait=true", "--timeout=60s"],
    )?;
    Ok(())
}

/// Which router holds the gateway address, once exactly one of two does:
/// (holder, other), each (pod, node).
async fn holder(tb: &dyn Testbed) -> anyhow::Result<((String, String), (String, String))> {
    until("one of two routers holds the gateway address", WAIT, || async {
        let all = routers(tb)?;
        let (holding, other): (Vec<_>, Vec<_>) = all.into_iter().partition(|(pod, _)| holds_gateway(tb, pod));
        match (holding.as_slice(), other.as_slice()) {
            ([active], [standby]) => Ok((active.clone(), standby.clone())),
            _ => anyhow::bail!("holding {holding:?}, not holding {other:?}"),
        }
    })
    .await
}

/// Whether the last `n` pings of a `ping -O` log were answered.
fn last_answered(log: &str, n: usize) -> bool {
    log.lines()
        .rev()
        .filter(|l| l.contains("bytes from") || l.contains("no answer"))
        .take(n)
        .all(|l| l.contains("bytes from"))
}

fn rollout_done(tb: &dyn Testbed) -> anyhow::Result<()> {
    kubectl(
        tb,
        &[
            "rollout",
            "status",
            "-n",
            "default",
            "deployment/gateway-ha-router",
            "--timeout=180s",
        ],
    )
    .map(|_| ())
}

/// Cuts `node` off its underlay, or connects it again: every packet in or out of its
/// eth0 dropped (firewall rules first in line; the link, its addresses and its
/// routes stay as they are, so that the node is whole again once they go).
fn cut(tb: &dyn Testbed, node: &str, off: bool) -> anyhow::Result<()> {
    let op = if off { "-I" } else { "-D" };
    for (chain, dir) in [
        ("INPUT", "-i"),
        ("OUTPUT", "-o"),
        ("FORWARD", "-i"),
        ("FORWARD", "-o"),
    ] {
        let mut args = vec![op, chain];
        if off {
            args.push("1");
        }
        args.extend([
            dir,
            "eth0",
            "-m",
            "comment",
            "--comment",
            "nno-e2e-cut",
            "-j",
            "DROP",
        ]);
        tb.on_node(node, "iptables", &args)?;
    }
    Ok(())
}

/// The node of the router holding the gateway cut off (its underlay dropped)
/// during the client's ping: the other router notices the missing advertisements
/// and takes the address over; the client's egress resumes through it. The link is
/// brought back after.
async fn isolated(tb: &dyn Testbed) -> anyhow::Result<()> {
    rollout_done(tb)?;
    let (active, standby) = holder(tb).await?;
    let outside = tb.outside();
    let standby_ip = node_ip(tb, &standby.1).await?.to_string();
    outside.count_from(&standby_ip)?;
    let mut ping = background_ping(tb, "ha-client", PING_LOG)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let standby_before = outside.received_from(&standby_ip)?;
    let cut_at = unix_now();
    cut(tb, &active.1, true)?;
    let took_over = until("the other router takes the gateway address", WAIT, || async {
        anyhow::ensure!(holds_gateway(tb, &standby.0), "not yet");
        Ok(unix_now())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = stop_background_ping(tb, "ha-client", &mut ping, PING_LOG);
    let through_standby = outside.received_from(&standby_ip);
    cut(tb, &active.1, false)?;
    let through_standby = through_standby? - standby_before;
    let took_over = took_over?;
    let (sent, received, log) = stopped?;
    let gap = longest_gap(&log, cut_at);
    println!(
        "HA: {} on {} held {GATEWAY}, its node cut off; {} on {} held it {:.2} s later; egress stopped for {}; {through_standby} pings through it; {received} of {sent} answered",
        active.0,
        active.1,
        standby.0,
        standby.1,
        took_over - cut_at,
        gap.map_or("-".into(), |g| format!("{g:.2} s")),
    );
    anyhow::ensure!(
        through_standby >= 10,
        "egress resumed through the other router: {through_standby} pings there\n{}",
        tail(&log, 30)
    );
    anyhow::ensure!(
        last_answered(&log, 10),
        "the last pings were answered:\n{}",
        tail(&log, 30)
    );
    // The node back, with its kubelet and agent, for what comes next.
    let node = format!("node/{}", active.1);
    kubectl(tb, &["wait", "--for=condition=Ready", &node, "--timeout=120s"])?;
    agents_rolled_out(tb, 120)?;
    rollout_done(tb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_the_longest_silence_that_ends_after_the_mark() {
        let log = "PING 198.18.0.9 56(84) bytes of data.\n\
            [100.0] 64 bytes from 198.18.0.9: icmp_seq=1 ttl=62 time=0.5 ms\n\
            [100.5] 64 bytes from 198.18.0.9: icmp_seq=2 ttl=62 time=0.5 ms\n\
            [101.0] 64 bytes from 198.18.0.9: icmp_seq=3 ttl=62 time=0.5 ms\n\
            [102.0] no answer yet for icmp_seq=4\n\
            [102.3] 64 bytes from 198.18.0.9: icmp_seq=5 ttl=62 time=0.5 ms\n\
            [102.4] 64 bytes from 198.18.0.9: icmp_seq=6 ttl=62 time=0.5 ms\n";
        let gap = longest_gap(log, 100.8).unwrap();
        assert!((gap - 1.3).abs() < 1e-9, "{gap}");
        assert_eq!(longest_gap(log, 200.0), None);
    }
}
