//! A TCP stream between two namespaces that counts every byte: what the restart tests keep
//! running while they kill and restart daemons, to show that no connection broke and no byte was
//! lost.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::netns::NetnsGuard;

/// 1 KiB written every 5 ms (about 200 KiB/s) from a client namespace to a listener in another.
pub struct TcpFlow {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    client: JoinHandle<std::io::Result<u64>>,
    _server: JoinHandle<std::io::Result<()>>,
}

impl TcpFlow {
    /// Listen on `target` in `server`, connect from `client`, start writing.
    pub fn start(client: &NetnsGuard, server: &NetnsGuard, target: SocketAddr) -> Result<TcpFlow> {
        let listener = server
            .tcp_listen(target)
            .map_err(crate::error::LabError::io("listen"))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let mut stream = client
            .tcp_connect(target, Duration::from_secs(3))
            .map_err(crate::error::LabError::io("connect"))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(60)))
            .map_err(crate::error::LabError::io("connect"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let client = std::thread::spawn(move || -> std::io::Result<u64> {
            let chunk = [7u8; 1024];
            let mut sent = 0;
            while !stopping.load(Ordering::Relaxed) {
                stream.write_all(&chunk)?;
                sent += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(sent)
        });
        Ok(TcpFlow {
            received,
            stop,
            client,
            _server: server,
        })
    }

    /// Bytes the listener has read so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// How long until the listener reads more than it has now (polled every 10 ms); `None` if
    /// nothing more arrived within `limit`.
    pub fn time_to_progress(&self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let now = self.received();
        while start.elapsed() < limit {
            if self.received() > now {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stop writing; wait up to `drain` for every byte to arrive. Returns the bytes sent (or the
    /// error that broke the stream) and the bytes received.
    pub fn finish(self, drain: Duration) -> (std::io::Result<u64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let received = self.received;
        let sent = self.client.join().expect("the writer thread panicked");
        let deadline = Instant::now() + drain;
        let all_in = |s: &u64| *s == received.load(Ordering::Relaxed);
        while Instant::now() < deadline && sent.as_ref().is_ok_and(|s| !all_in(s)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        (sent, received.load(Ordering::Relaxed))
    }
}
