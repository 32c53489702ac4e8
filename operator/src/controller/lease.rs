//! The leader's own check that it still holds the Lease. kube-lease-manager keeps
//! reporting "leader" while it cannot reach the API server to renew, and a replica
//! that can reach it takes the Lease once it expires: two leaders. So the leader
//! watches its Lease and steps down by itself when the last renewal it saw is about
//! to expire (`margin` before, for clock skew between replicas), as client-go's
//! renew deadline does. A watch costs no request in a steady state.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

/// Until when `lease` shows `identity` as holder, from its renewal time and
/// duration (`default_duration` when the Lease gives none); or why it is not ours.
pub fn held_until(lease: &Lease, identity: &str, default_duration: Duration) -> Result<SystemTime, String> {
    let spec = lease.spec.as_ref().ok_or("the Lease has no spec")?;
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => {}
        Some(other) => return Err(format!("the Lease is held by {other} now")),
        None => return Err("the Lease has no holder".into()),
    }
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .ok_or("the Lease has no renewal time")?;
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    Ok(SystemTime::from(renewed.0) + duration)
}

/// When the leader must have stepped down, given the Lease is held until `until`.
pub fn step_down_at(until: SystemTime, margin: Duration) -> SystemTime {
    until.checked_sub(margin).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Resolves, with the reason, when this leader must step down: its Lease shows
/// another holder, or the last renewal seen is `margin` from expiring (e.g. the API
/// server has been unreachable since).
pub async fn step_down(
    api: Api<Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    margin: Duration,
) -> String {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut leases = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    // Just elected: the Lease was renewed a moment ago.
    let mut until = SystemTime::now() + duration;
    loop {
        let wait = step_down_at(until, margin)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            lease = leases.next() => match lease {
                Some(Ok(lease)) => match held_until(&lease, identity, duration) {
                    Ok(held) => until = held,
                    Err(why) => return why,
                },
                // The watch retries by itself; meanwhile the deadline decides.
                Some(Err(_)) => {}
                None => return "the watch of the Lease ended".into(),
            },
            () = tokio::time::sleep(wait) => {
                return format!(
                    "the Lease's last renewal expires in less than {margin:?} and none newer was seen (is the API server reachable?)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: &str, seconds: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(renewed.parse().unwrap())),
                lease_duration_seconds: seconds,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_lease_is_held_until_its_renewal_plus_its_duration() {
        let at = |s: &str| SystemTime::from(s.parse::<jiff::Timestamp>().unwrap());
        let ours = lease(Some("a"), "2026-12-04T10:00:00Z", Some(15));
        assert_eq!(
            held_until(&ours, "a", Duration::from_secs(99)),
            Ok(at("2026-12-04T10:00:15Z"))
        );
        let no_duration = lease(Some("a"), "2026-12-04T10:00:00Z", None);
        assert_eq!(
            held_until(&no_duration, "a", Duration::from_secs(4)),
            Ok(at("2026-12-04T10:00:04Z"))
        );
        assert_eq!(
            held_until(
                &lease(Some("b"), "2026-12-04T10:00:00Z", Some(15)),
                "a",
                Duration::ZERO
            ),
            Err("the Lease is held by b now".into())
        );
        assert!(
            held_until(
                &lease(None, "2026-12-04T10:00:00Z", Some(15)),
                "a",
                Duration::ZERO
            )
            .is_err()
        );
        assert_eq!(
            step_down_at(at("2026-12-04T10:00:15Z"), Duration::from_secs(2)),
            at("2026-12-04T10:00:13Z")
        );
    }
}
