//! The probe after a change: the API server still answers over the node's network,
//! and the peers' VTEPs are still reachable over the carrier. Needs no privilege: a
//! TCP connection attempt answered at all (accepted or refused) proves the path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future;

use super::pacing::{Outcome, reason};

/// How long one connection attempt to a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request to the API server may take.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// The API server answers an uncached request (its version, from the server itself)
/// within `within`, retrying each second.
pub async fn api_server(client: &kube::Client, within: Duration) -> Outcome {
    let deadline = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(API_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => return Outcome::Pass,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {API_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Outcome::Fail {
                reason: reason::API_SERVER_UNREACHABLE.to_string(),
                message: format!("the API server did not answer for {within:?} after the change: {last}"),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every peer answers a TCP connection attempt (accepted or refused) on its VXLAN
/// port number.
pub async fn peers(peers: &[SocketAddr]) -> Outcome {
    let attempts = peers.iter().map(|peer| async move {
        let outcome = tokio::time::timeout(PEER_TIMEOUT, tokio::net::TcpStream::connect(peer)).await;
        match outcome {
            Ok(Ok(_)) => None,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
            Ok(Err(e)) => Some(format!("{}: {e}", peer.ip())),
            Err(_) => Some(format!("{}: no answer within {PEER_TIMEOUT:?}", peer.ip())),
        }
    });
    let unreachable: Vec<String> = future::join_all(attempts).await.into_iter().flatten().collect();
    if unreachable.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail {
            reason: reason::PEER_UNREACHABLE.to_string(),
            message: format!(
                "peers' VTEPs not reachable after the change: {}",
                unreachable.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_proves_the_path() {
        // Bound then dropped: nothing listens, the kernel answers with a reset.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(peers(&[open, closed]).await, Outcome::Pass);
        assert_eq!(peers(&[]).await, Outcome::Pass);
    }

    #[tokio::test]
    async fn an_unroutable_peer_fails_with_its_address() {
        // The broadcast address: the kernel refuses a TCP connection to it at once,
        // and nothing leaves the machine.
        let outcome = peers(&[SocketAddr::from(([255, 255, 255, 255], 4789))]).await;
        assert!(matches!(outcome, Outcome::Fail { .. }), "{outcome:?}");
    }
}
