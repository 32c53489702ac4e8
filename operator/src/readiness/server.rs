//! The HTTP/1.1 server on the Unix socket (hyper 1 on tokio).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::api::{self, API_VERSION, AgentStatus, ApiError, BridgeStatus, Route};
use super::state::{BridgeReadiness, ForNetwork, Readiness};

/// How long shutdown waits for open connections to finish their answer.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a client may take to send its request head (also how long an idle
/// connection stays open), so that a silent client cannot hold a connection forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the readiness socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create directory {path} for the readiness socket")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket: refusing to replace it with the readiness socket")]
    NotASocket { path: PathBuf },
    #[error("another process is already serving on {path}")]
    InUse { path: PathBuf },
    #[error("cannot {op} the readiness socket {path}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound readiness socket, not serving yet.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    socket: SocketFile,
}

impl Server {
    /// Binds the socket at `path` with mode 0600, creating its parent directory. A
    /// stale socket file (nobody accepts on it) is replaced; a live one, or a file that
    /// is not a socket, is an error. The socket appears at `path` atomically, already
    /// with its final mode. Must be called within a tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, ServeError> {
        let path = path.as_ref().to_path_buf();
        let err = |op, source| ServeError::Socket {
            op,
            path: path.clone(),
            source,
        };
        let file_name = path.file_name().ok_or_else(|| {
            err(
                "bind",
                io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
            )
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    return Err(ServeError::InUse { path });
                }
            }
            Ok(_) => return Err(ServeError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("inspect", e)),
        }

        // Bind under a temporary name, set the mode, then rename over `path`: nobody
        // ever sees the socket at `path` with a looser mode, and a stale file is
        // replaced in one step.
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| err("bind", e))?;
        let tmp_guard = TmpFile(&tmp);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err("set the mode of", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err("move into place", e))?;
        std::mem::forget(tmp_guard);
        let socket = SocketFile::new(path.clone()).map_err(|e| err("inspect", e))?;

        listener.set_nonblocking(true).map_err(|e| err("configure", e))?;
        let listener = UnixListener::from_std(listener).map_err(|e| err("register", e))?;
        Ok(Self { listener, socket })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves until `shutdown` completes. Then it stops accepting, removes the socket
    /// file (unless another process has replaced it), answers waiting long polls with
    /// the current state, and gives open connections a few seconds to finish.
    pub async fn run(self, readiness: Readiness, shutdown: impl Future<Output = ()>) {
        let Server { listener, socket } = self;
        info!(path = %socket.path.display(), node = readiness.node(), "serving the readiness API");
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "readiness API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let readiness = readiness.clone();
            let stop = stop_rx.clone();
            let service = service_fn(move |req| handle(req, readiness.clone(), stop.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "readiness API: connection ended with an error");
                }
            });
        }
        drop(listener);
        drop(socket);
        let _ = stop_tx.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            warn!("readiness API: connections still open after {SHUTDOWN_GRACE:?}, dropping them");
        }
        info!("readiness API stopped");
    }
}

/// The socket file this server created; removed on drop unless something else now
/// sits at its path.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: PathBuf) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(Self {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes the temporary socket name when binding fails half-way.
struct TmpFile<'a>(&'a Path);

impl Drop for TmpFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

async fn handle(
    req: Request<Incoming>,
    readiness: Readiness,
    stop: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str();
    let uri = req.uri();
    let response = match api::route(method, uri.path(), uri.query()) {
        Err(err) => {
            debug!(%method, %uri, error = %err, "readiness API: refused");
            error_response(&err)
        }
        Ok(Route::Status) => json(
            StatusCode::OK,
            &AgentStatus {
                api_version: API_VERSION.to_string(),
                node: readiness.node().to_string(),
                synced: readiness.is_synced(),
            },
        ),
        Ok(Route::Bridge { name, wait, network }) => {
            let state = match wait {
                None => readiness.bridge_for(&name, network.as_ref()),
                Some(wait) => wait_until_ready(&readiness, &name, network.as_ref(), wait, stop).await,
            };
            debug!(bridge = %name, ready = state.ready, reason = %state.reason, ?wait, "readiness API: answered");
            json(StatusCode::OK, &BridgeStatus::new(readiness.node(), &name, state))
        }
    };
    Ok(response)
}

/// The readiness of `name` as soon as it is Ready, or when `wait` has passed or the
/// server stops, whichever comes first.
async fn wait_until_ready(
    readiness: &Readiness,
    name: &str,
    network: Option<&ForNetwork>,
    wait: Duration,
    mut stop: watch::Receiver<bool>,
) -> BridgeReadiness {
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = readiness.subscribe();
    loop {
        let current = rx.borrow_and_update().bridge_for(readiness.node(), name, network);
        if current.ready || *stop.borrow() {
            return current;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return current },
            changed = stop.changed() => if changed.is_err() { return current },
            () = tokio::time::sleep_until(deadline) => return readiness.bridge_for(name, network),
        }
    }
}

fn error_response(err: &ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = json(status, &err.body());
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, "GET".parse().expect("a valid header value"));
    }
    response
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).expect("the API bodies always serialize");
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "application/json".parse().expect("a valid header value"),
    );
    response
}
