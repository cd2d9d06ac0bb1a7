//! A TCP relay from 127.0.0.1:PORT inside a network namespace to 127.0.0.1:PORT of the namespace
//! it was started from: a lab node reaches a server that listens on the host's loopback (the test
//! API server, whose certificate names only 127.0.0.1 and localhost) at the same address, so a
//! kubeconfig works unchanged inside the node.
//!
//! One thread per relay: it enters the namespace (`setns`), binds the listener there, returns to
//! its original namespace (a socket stays in the namespace it was made in), and runs a
//! single-threaded tokio runtime that accepts connections and, for each, connects to the original
//! namespace's 127.0.0.1:PORT (sockets made on this thread are made where the thread is) and
//! copies both ways. Dropping the [`Relay`] stops the accept loop, closes every connection and
//! joins the thread.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use crate::error::{LabError, Result};

/// A running relay; dropping it stops it.
pub struct Relay {
    port: u16,
    netns: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listen on 127.0.0.1:`port` inside the network namespace at `netns_path`
    /// (`/run/netns/NAME`) and forward each connection to 127.0.0.1:`port` of the calling
    /// thread's namespace. Returns once the listener is bound.
    pub fn start(netns_path: impl AsRef<Path>, port: u16) -> Result<Relay> {
        let netns = netns_path.as_ref().to_path_buf();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_netns = netns.clone();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{port}"))
            .spawn(move || relay_thread(&thread_netns, port, ready_tx, stop_rx))
            .map_err(|source| relay_error(&netns, port, source))?;
        let mut relay = Relay {
            port,
            netns: netns.clone(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(relay),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                relay.stop_and_join();
                Err(LabError::Panicked(format!(
                    "relay thread for 127.0.0.1:{port} in {}",
                    netns.display()
                )))
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn netns(&self) -> &Path {
        &self.netns
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn relay_error(netns: &Path, port: u16, source: std::io::Error) -> LabError {
    LabError::Relay {
        netns: netns.display().to_string(),
        port,
        source,
    }
}

fn relay_thread(
    netns: &Path,
    port: u16,
    ready: mpsc::Sender<Result<()>>,
    stop: oneshot::Receiver<()>,
) {
    let listener = match bind_in(netns, port) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = ready.send(Err(relay_error(netns, port, source)));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(source) => {
                let _ = ready.send(Err(relay_error(netns, port, source)));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        serve(listener, port, stop).await;
    });
    // Dropping the runtime cancels the copying tasks, which closes their connections.
}

/// Bind 127.0.0.1:`port` inside `netns`, from this thread, and come back to where it was.
fn bind_in(netns: &Path, port: u16) -> Result<TcpListener> {
    let netns_error = |source: std::io::Error| LabError::Netns {
        netns: netns.display().to_string(),
        source,
    };
    let home_path = "/proc/thread-self/ns/net";
    let home = File::open(home_path).map_err(LabError::io(home_path))?;
    let target = File::open(netns).map_err(netns_error)?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| netns_error(e.into()))?;
    let bound = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .and_then(|l| l.set_nonblocking(true).map(|()| l));
    // Back home whatever happened: the thread goes on to connect from here.
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Netns {
        netns: home_path.to_string(),
        source: e.into(),
    })?;
    bound.map_err(|source| relay_error(netns, port, source))
}

async fn serve(listener: tokio::net::TcpListener, port: u16, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                if let Ok((inbound, _)) = accepted {
                    tokio::spawn(pipe(inbound, port));
                }
            }
        }
    }
}

/// Copy both ways between `inbound` and a fresh connection to 127.0.0.1:`port` here.
async fn pipe(mut inbound: tokio::net::TcpStream, port: u16) {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
