//! The control socket, `RUN_DIR/weftd.sock` (mode 0600: root only): one request per connection,
//! a line naming what is asked (`snapshot`), answered with one JSON document, then closed. The
//! daemon serves it from start, before it holds a lease, so `weftd status` can say what it waits
//! for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::snapshot::Snapshot;
use super::state::Inspector;

/// The socket's file name under the run directory.
pub const SOCKET_NAME: &str = "weftd.sock";
/// How long a client may take to send its request, and the daemon to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer a client reads (a snapshot of thousands of peers fits easily).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Why a client got no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens: no daemon runs with this run directory.
    #[error("no weftd is running here: cannot connect to {}: {error} (is weftd running, with the same --run-dir?)", path.display())]
    NotRunning {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("weftd's control socket {}: {reason}", path.display())]
    Broken { path: PathBuf, reason: String },
}

/// `RUN_DIR/weftd.sock`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// Bind the socket (replacing a stale one) and serve `inspector` on it until aborted.
///
/// # Errors
/// Another daemon serves the socket (it answers a connection: it is left alone), or the run
/// directory or the socket cannot be made.
pub async fn serve(run_dir: &Path, inspector: Arc<Inspector>) -> std::io::Result<JoinHandle<()>> {
    let path = socket_path(run_dir);
    if UnixStream::connect(&path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another weftd serves {}", path.display()),
        ));
    }
    let listener = crate::cni_server::bind(&path)?;
    Ok(tokio::spawn(accept(listener, inspector)))
}

async fn accept(listener: UnixListener, inspector: Arc<Inspector>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let inspector = inspector.clone();
                tokio::spawn(async move {
                    let answered = tokio::time::timeout(TIMEOUT, answer(stream, &inspector));
                    match answered.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => debug!(error = %e, "control connection"),
                        Err(_) => debug!("control connection timed out"),
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept on the control socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, inspector: &Inspector) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut request = String::new();
    BufReader::new(read.take(256))
        .read_line(&mut request)
        .await?;
    let body = match request.trim() {
        "snapshot" => serde_json::to_vec(&inspector.snapshot().await)?,
        other => {
            let error = serde_json::json!({ "error": format!("unknown request {other:?}") });
            serde_json::to_vec(&error)?
        }
    };
    write.write_all(&body).await?;
    write.shutdown().await
}

/// Ask the daemon serving `run_dir` for its snapshot.
///
/// # Errors
/// [`ControlError::NotRunning`] when nothing listens; [`ControlError::Broken`] for an answer
/// that is late, too large or not a snapshot.
pub async fn fetch(run_dir: &Path) -> Result<Snapshot, ControlError> {
    let path = socket_path(run_dir);
    let broken = |reason: String| ControlError::Broken {
        path: path.clone(),
        reason,
    };
    let mut stream = UnixStream::connect(&path)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::PermissionDenied => broken(format!("{error} (run as root)")),
            _ => ControlError::NotRunning {
                path: path.clone(),
                error,
            },
        })?;
    let exchange = async {
        stream.write_all(b"snapshot\n").await?;
        let mut body = Vec::new();
        stream.take(MAX_ANSWER_BYTES).read_to_end(&mut body).await?;
        std::io::Result::Ok(body)
    };
    let body = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| broken(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| broken(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| broken(format!("not a snapshot: {e}")))
}
