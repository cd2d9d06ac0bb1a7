//! Working inside another network namespace without moving the daemon there.
//!
//! A netlink socket belongs to the namespace of the thread that created it, for its whole life. So a
//! short-lived OS thread enters the target namespace (`setns`), creates the socket (and writes any
//! sysctls, which `/proc/sys/net` resolves per thread), and exits; the daemon then drives the socket
//! from its runtime like any other. Tokio's worker threads never change namespace.
//!
//! A [`Netns`] comes from a descriptor ([`Netns::from_fd`]: the pod's namespace as the CNI shim
//! opened it, in the runtime's mount namespace) or from a path ([`Netns::open`]: in weftd's own
//! mount namespace). Either way it is checked to be a network namespace before anything uses it:
//! a file on nsfs whose `NS_GET_NSTYPE` is `CLONE_NEWNET` (Linux 4.11 and later).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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
    /// Not a file on nsfs, or a namespace of another kind (`found`: `uts`, `mnt`, …).
    #[error("{} is not a network namespace{}", path.display(), other_kind(found))]
    NotANetns {
        path: PathBuf,
        found: Option<&'static str>,
    },
    #[error("enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn other_kind(found: &Option<&'static str>) -> String {
    found.map_or_else(String::new, |kind| format!(" but a {kind} namespace"))
}

/// An open handle on a network namespace, checked to be one.
pub struct Netns {
    file: File,
    /// Where the namespace came from: its path, or the label a descriptor came with. For messages
    /// and the CNI result only; nothing opens it again.
    path: PathBuf,
}

impl Netns {
    /// Open the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`) as weftd's own mount
    /// namespace sees it. Non-blocking, so that a FIFO at that path cannot hang the caller.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|source| NetnsError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Netns::checked(file, path.to_path_buf())
    }

    /// Take a descriptor someone else opened (the CNI shim, in the runtime's mount namespace),
    /// `label` naming it in messages (the `CNI_NETNS` path it was opened from). The descriptor is
    /// closed when it is not a network namespace.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Result<Netns, NetnsError> {
        Netns::checked(File::from(fd), label.into())
    }

    /// `file` when it is a network namespace: on nsfs, and of type `CLONE_NEWNET`.
    fn checked(file: File, path: PathBuf) -> Result<Netns, NetnsError> {
        let stat = match nix::sys::statfs::fstatfs(&file) {
            Ok(stat) => stat,
            Err(e) => {
                let source = e.into();
                return Err(NetnsError::Open { path, source });
            }
        };
        if stat.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(NetnsError::NotANetns { path, found: None });
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace behind a valid
        // descriptor, which `file` keeps open for the call.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            let found = namespace_kind(kind);
            return Err(NetnsError::NotANetns { path, found });
        }
        Ok(Netns { file, path })
    }

    /// The path the namespace was opened from, or the label its descriptor came with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Run `work` on a fresh OS thread that has entered this namespace, and await its result
    /// without holding an async worker (concurrent CNI ADDs each enter a pod's namespace).
    pub async fn run<T: Send + 'static>(
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
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn(move || {
                let entered = nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNET);
                let _ = done.send(entered.map_err(io::Error::from).and_then(|()| work()));
            })
            .map_err(enter_error)?;
        let ended = || io::Error::other("namespace thread ended without an answer");
        result
            .await
            .map_err(|_| enter_error(ended()))?
            .map_err(enter_error)
    }

    /// A netlink route connection whose socket lives in this namespace; `sysctls` (path, value)
    /// are written there first, from the same thread.
    pub async fn connect(&self, sysctls: &[(&str, &str)]) -> Result<Handle, NetnsError> {
        let runtime = tokio::runtime::Handle::current();
        let sysctls: Vec<(String, String)> = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (connection, handle, _) = self
            .run(move || {
                for (key, value) in &sysctls {
                    std::fs::write(key, value)
                        .map_err(|e| io::Error::new(e.kind(), format!("{key}: {e}")))?;
                }
                let _entered = runtime.enter(); // the socket registers with the runtime's reactor
                rtnetlink::new_connection()
            })
            .await?;
        tokio::spawn(connection);
        Ok(handle)
    }
}

/// The name `/proc/PID/ns/` gives a namespace of the `NS_GET_NSTYPE` type `kind` (`None` when
/// the ioctl failed, -1, or the type is unknown).
fn namespace_kind(kind: libc::c_int) -> Option<&'static str> {
    let kinds = [
        (libc::CLONE_NEWCGROUP, "cgroup"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWNS, "mnt"),
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWPID, "pid"),
        (libc::CLONE_NEWTIME, "time"),
        (libc::CLONE_NEWUSER, "user"),
        (libc::CLONE_NEWUTS, "uts"),
    ];
    kinds
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, name)| *name)
}

/// A netlink connection in the daemon's own namespace.
pub fn connect_here() -> io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}
