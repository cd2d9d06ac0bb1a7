//! Working inside another network namespace without moving the daemon there.
//!
//! A netlink socket belongs to the namespace of the thread that created it, for its whole life. So a
//! short-lived OS thread enters the target namespace (`setns`), creates the socket (and writes any
//! sysctls, which `/proc/sys/net` resolves per thread), and exits; the daemon then drives the socket
//! from its runtime like any other. Tokio's worker threads never change namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use rtnetlink::Handle;

/// `NSFS_MAGIC`: the filesystem type of `/proc/PID/ns/net` and of bind mounts of it (`/run/netns/X`).
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a network namespace")]
    NotANetns { path: PathBuf },
    #[error("enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open handle on a network namespace, checked to be one.
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let stat = nix::sys::statfs::fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        if stat.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotANetns {
                path: path.to_path_buf(),
            });
        }
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `work` on a fresh OS thread that has entered this namespace.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, NetnsError> {
        let file = self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        let enter_error = |source: io::Error| NetnsError::Enter {
            path: path.clone(),
            source,
        };
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            work()
        })
        .join()
        .map_err(|_| enter_error(io::Error::other("namespace thread panicked")))?
        .map_err(enter_error)
    }

    /// A netlink route connection whose socket lives in this namespace; `sysctls` (path, value)
    /// are written there first, from the same thread.
    pub fn connect(&self, sysctls: &[(&str, &str)]) -> Result<Handle, NetnsError> {
        let runtime = tokio::runtime::Handle::current();
        let sysctls: Vec<(String, String)> = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (connection, handle, _) = self.run(move || {
            for (key, value) in &sysctls {
                std::fs::write(key, value)
                    .map_err(|e| io::Error::new(e.kind(), format!("{key}: {e}")))?;
            }
            let _entered = runtime.enter(); // the socket registers with the runtime's reactor
            rtnetlink::new_connection()
        })?;
        tokio::spawn(connection);
        Ok(handle)
    }
}

/// A netlink connection in the daemon's own namespace.
pub fn connect_here() -> io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
