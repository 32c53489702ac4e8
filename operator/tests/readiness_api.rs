//! The readiness API over a real Unix socket, asked by a real hyper client.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nno::readiness::{
    BridgeReadiness, BridgeStatus, HEADER_READ_TIMEOUT, Readiness, ServeError, Server, reason,
};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server on a socket in its own temporary directory, stopped on drop.
struct Running {
    _dir: tempfile::TempDir,
    path: PathBuf,
    readiness: Readiness,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    async fn start(node: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/nno/agent.sock");
        let readiness = Readiness::new(node);
        let server = Server::bind(&path).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(readiness.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            _dir: dir,
            path,
            readiness,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("the server stops within 10 s")
            .unwrap();
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        get(&self.path, uri).await
    }

    async fn bridge(&self, uri: &str) -> BridgeStatus {
        let (status, body) = self.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        serde_json::from_value(body).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One request on a fresh connection.
async fn get(path: &Path, uri: &str) -> (StatusCode, Value) {
    let (status, headers, body) = request(path, "GET", uri).await;
    assert_eq!(headers.get("content-type").unwrap(), "application/json", "{uri}");
    (status, body)
}

async fn request(path: &Path, method: &str, uri: &str) -> (StatusCode, hyper::HeaderMap, Value) {
    let stream = UnixStream::connect(path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "nno-agent")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{uri}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, headers, body)
}

#[tokio::test]
async fn bridge_answers_follow_the_state() {
    let server = Running::start("node-a").await;

    let b = server.bridge("/v1/bridges/br-gw").await;
    assert_eq!((b.ready, b.reason.as_str()), (false, reason::AGENT_STARTING));
    assert_eq!(
        (b.api_version.as_str(), b.node.as_str(), b.bridge.as_str()),
        ("v1", "node-a", "br-gw")
    );

    server.readiness.set_synced(true);
    let b = server.bridge("/v1/bridges/br-gw").await;
    assert_eq!((b.ready, b.reason.as_str()), (false, reason::NOT_DESIRED));
    assert!(
        b.message.contains("node-a") && b.message.contains("br-gw"),
        "{}",
        b.message
    );

    server.readiness.set_bridge(
        "br-gw",
        BridgeReadiness::not_ready("CarrierMissing", "eth9 does not exist"),
    );
    let b = server.bridge("/v1/bridges/br-gw").await;
    assert_eq!(
        (b.ready, b.reason.as_str(), b.message.as_str()),
        (false, "CarrierMissing", "eth9 does not exist")
    );

    server
        .readiness
        .set_bridge("br-gw", BridgeReadiness::ready("bridge up, VXLAN enslaved"));
    let (status, body) = server.get("/v1/bridges/br-gw").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"apiVersion": "v1", "node": "node-a", "bridge": "br-gw", "ready": true,
            "reason": "Ready", "message": "bridge up, VXLAN enslaved"})
    );
}

#[tokio::test]
async fn status_reports_node_and_sync() {
    let server = Running::start("node-b").await;
    let (status, body) = server.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"apiVersion": "v1", "node": "node-b", "synced": false})
    );
    server.readiness.set_synced(true);
    let (_, body) = server.get("/v1/status").await;
    assert_eq!(body["synced"], true);
}

#[tokio::test]
async fn long_poll_returns_at_once_when_ready() {
    let server = Running::start("n").await;
    server.readiness.set_synced(true);
    server.readiness.set_bridge("br0", BridgeReadiness::ready("up"));
    let start = Instant::now();
    let b = server.bridge("/v1/bridges/br0?waitSeconds=30").await;
    assert!(b.ready);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn long_poll_returns_within_100ms_of_the_bridge_becoming_ready() {
    let server = Running::start("n").await;
    server.readiness.set_synced(true);
    server
        .readiness
        .set_bridge("br0", BridgeReadiness::not_ready("Creating", "being built"));

    let path = server.path.clone();
    let poll = tokio::spawn(async move {
        let (_, body) = get(&path, "/v1/bridges/br0?waitSeconds=20").await;
        (Instant::now(), body)
    });
    // Unrelated changes wake the poll but must not end it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.readiness.set_bridge("other", BridgeReadiness::ready("up"));
    server
        .readiness
        .set_bridge("br0", BridgeReadiness::not_ready("Creating", "enslaving"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the long poll answered before the bridge was Ready"
    );

    let flipped = Instant::now();
    server.readiness.set_bridge("br0", BridgeReadiness::ready("up"));
    let (answered, body) = poll.await.unwrap();
    let latency = answered - flipped;
    assert_eq!(body["ready"], true, "{body}");
    assert!(
        latency < Duration::from_millis(100),
        "answered {latency:?} after the flip"
    );
    println!("long poll answered {latency:?} after the bridge became Ready");
}

#[tokio::test]
async fn long_poll_from_agent_starting_to_ready() {
    let server = Running::start("n").await;
    let path = server.path.clone();
    let poll = tokio::spawn(async move { get(&path, "/v1/bridges/br0?waitSeconds=20").await.1 });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server
        .readiness
        .update([("br0".to_string(), BridgeReadiness::ready("up"))]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished(), "answered while the agent was not synced");
    server.readiness.set_synced(true);
    let body = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["ready"], true, "{body}");
}

#[tokio::test]
async fn long_poll_answers_the_latest_state_at_the_deadline() {
    let server = Running::start("n").await;
    server.readiness.set_synced(true);
    server
        .readiness
        .set_bridge("br0", BridgeReadiness::not_ready("Creating", "being built"));
    let path = server.path.clone();
    let start = Instant::now();
    let poll = tokio::spawn(async move { get(&path, "/v1/bridges/br0?waitSeconds=0.5").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.readiness.set_bridge(
        "br0",
        BridgeReadiness::not_ready("CarrierMissing", "eth9 is gone"),
    );
    let (status, body) = poll.await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], false);
    assert_eq!(body["reason"], "CarrierMissing", "{body}");
    assert!(
        elapsed >= Duration::from_millis(500),
        "answered after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn zero_wait_answers_at_once() {
    let server = Running::start("n").await;
    let start = Instant::now();
    let b = server.bridge("/v1/bridges/br0?waitSeconds=0").await;
    assert_eq!(b.reason, reason::AGENT_STARTING);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn many_waiters_all_wake() {
    let server = Running::start("n").await;
    server.readiness.set_synced(true);
    let polls: Vec<_> = (0..64)
        .map(|i| {
            let path = server.path.clone();
            let bridge = if i % 2 == 0 { "br-a" } else { "br-b" };
            tokio::spawn(async move {
                get(&path, &format!("/v1/bridges/{bridge}?waitSeconds=20"))
                    .await
                    .1
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.readiness.update([
        ("br-a".to_string(), BridgeReadiness::ready("up")),
        ("br-b".to_string(), BridgeReadiness::ready("up")),
    ]);
    for poll in polls {
        let body = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body["ready"], true, "{body}");
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_with_a_json_body() {
    let server = Running::start("n").await;
    let cases = [
        ("GET", "/", 404, "NotFound"),
        ("GET", "/v1/bridges", 404, "NotFound"),
        ("GET", "/v1/bridges/br0/extra", 404, "NotFound"),
        ("GET", "/v2/bridges/br0", 404, "NotFound"),
        (
            "GET",
            "/v1/bridges/this-name-is-too-long",
            400,
            "InvalidBridgeName",
        ),
        ("GET", "/v1/bridges/br%3A1", 400, "InvalidBridgeName"),
        ("GET", "/v1/bridges/br0?waitSeconds=-1", 400, "InvalidQuery"),
        ("GET", "/v1/bridges/br0?waitSeconds=soon", 400, "InvalidQuery"),
        ("GET", "/v1/bridges/br0?timeout=1", 400, "InvalidQuery"),
        ("GET", "/v1/status?verbose=1", 400, "InvalidQuery"),
        ("POST", "/v1/bridges/br0", 405, "MethodNotAllowed"),
        ("PUT", "/v1/status", 405, "MethodNotAllowed"),
    ];
    for (method, uri, code, reason) in cases {
        let (status, headers, body) = request(&server.path, method, uri).await;
        assert_eq!(status.as_u16(), code, "{method} {uri}: {body}");
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        assert_eq!(body["apiVersion"], "v1", "{method} {uri}: {body}");
        assert_eq!(body["code"], code, "{method} {uri}: {body}");
        assert_eq!(body["reason"], reason, "{method} {uri}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty());
        if code == 405 {
            assert_eq!(headers.get("allow").unwrap(), "GET");
        }
    }
}

#[tokio::test]
async fn one_connection_serves_several_requests() {
    let server = Running::start("n").await;
    let stream = UnixStream::connect(&server.path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for uri in ["/v1/status", "/v1/bridges/br0", "/nowhere", "/v1/status"] {
        let req = Request::get(uri)
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
}

#[tokio::test]
async fn socket_is_0600_in_a_created_directory_and_removed_on_shutdown() {
    let mut server = Running::start("n").await;
    let meta = std::fs::symlink_metadata(&server.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temporary name is left beside it.
    let entries: Vec<_> = std::fs::read_dir(server.path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("agent.sock")]);
    server.shutdown().await;
    assert!(!server.path.exists(), "the socket file outlived the server");
}

#[tokio::test]
async fn shutdown_answers_waiting_long_polls() {
    let mut server = Running::start("n").await;
    let path = server.path.clone();
    let poll = tokio::spawn(async move { get(&path, "/v1/bridges/br0?waitSeconds=60").await.1 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    server.shutdown().await;
    let body = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["reason"], reason::AGENT_STARTING);
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_a_live_one_or_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();

    // Stale: bound once, its listener gone.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let server = Server::bind(&stale).unwrap();
    let task = tokio::spawn(server.run(Readiness::new("n"), std::future::pending()));
    let (status, _) = get(&stale, "/v1/status").await;
    assert_eq!(status, StatusCode::OK);

    // Live: the server above still accepts.
    match Server::bind(&stale) {
        Err(ServeError::InUse { path }) => assert_eq!(path, stale),
        other => panic!("want InUse, got {other:?}"),
    }
    task.abort();

    // Not a socket: left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    match Server::bind(&file) {
        Err(ServeError::NotASocket { path }) => assert_eq!(path, file),
        other => panic!("want NotASocket, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[tokio::test]
async fn a_replaced_socket_is_not_removed_by_the_old_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let old = Server::bind(&path).unwrap();
    // Someone else moves a new socket into place (e.g. a newer agent after a stale
    // check); dropping the old server must not delete it.
    let newer = dir.path().join("newer.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&newer).unwrap();
    std::fs::rename(&newer, &path).unwrap();
    drop(old);
    assert!(path.exists());
}

#[tokio::test]
async fn a_long_poll_whose_client_hangs_up_stops_waiting() {
    use std::io::Write;

    let server = Running::start("n").await;
    let mut stream = std::os::unix::net::UnixStream::connect(&server.path).unwrap();
    stream
        .write_all(b"GET /v1/bridges/br0?waitSeconds=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.readiness.waiting() == 0 {
        assert!(Instant::now() < deadline, "the long poll never started waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(2);
    while server.readiness.waiting() != 0 {
        assert!(
            Instant::now() < deadline,
            "the long poll still waits after its client hung up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_silent_client_is_disconnected() {
    use std::io::Read;

    let server = Running::start("n").await;
    let path = server.path.clone();
    let start = Instant::now();
    let read = tokio::task::spawn_blocking(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).map(|_| buf.len())
    });
    let read = read.await.unwrap();
    let closed_after = start.elapsed();
    assert!(
        read.is_ok(),
        "the connection was not closed but timed out: {read:?}"
    );
    assert!(
        closed_after >= HEADER_READ_TIMEOUT,
        "closed after {closed_after:?}"
    );
    assert!(
        closed_after < HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
}

#[tokio::test]
async fn a_long_poll_outlives_the_header_timeout() {
    let server = Running::start("n").await;
    let wait = HEADER_READ_TIMEOUT + Duration::from_secs(1);
    let start = Instant::now();
    let b = server
        .bridge(&format!("/v1/bridges/br0?waitSeconds={}", wait.as_secs_f64()))
        .await;
    assert_eq!(b.reason, reason::AGENT_STARTING);
    assert!(start.elapsed() >= wait, "answered after {:?}", start.elapsed());
}
