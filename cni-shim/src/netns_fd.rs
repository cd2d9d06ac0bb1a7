//! The pod's network namespace as a descriptor: opened here, where the runtime runs the shim and
//! `CNI_NETNS` means what the runtime meant, and sent to weftd with the request (`SCM_RIGHTS`).
//! Raw libc, so the shim links nothing new beyond it.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Open `path` read-only and close-on-exec (std's default), non-blocking so that a FIFO cannot
/// hang the shim. weftd checks that it is a network namespace.
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Whether failing to open with `error` is the host's momentary want (of descriptors, memory),
/// worth a retry, rather than a wrong `CNI_NETNS`.
pub fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EAGAIN | libc::EINTR)
    )
}

/// One `sendmsg` of (a first part of) `bytes` with `fd` attached; how many bytes went. The caller
/// writes the rest without it. `bytes` must not be empty: the descriptor rides on data.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    const FD_LEN: u32 = size_of::<RawFd>() as u32;
    // SAFETY: CMSG_SPACE and CMSG_LEN are arithmetic.
    let (space, len) = unsafe { (libc::CMSG_SPACE(FD_LEN), libc::CMSG_LEN(FD_LEN)) };
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; 4];
    assert!(
        space as usize <= size_of::<[u64; 4]>(),
        "room for one descriptor"
    );
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; it then points at `iov` (into `bytes`) and `control`,
    // which outlive the call, and CMSG_FIRSTHDR of a buffer of `space` bytes is a header with room
    // for one descriptor. sendmsg only reads the data.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &iov as *const libc::iovec as *mut libc::iovec;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        loop {
            let sent = libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if sent >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break sent;
            }
        }
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// What the daemon does, reduced: one recvmsg with room for a few descriptors.
    fn receive(socket: &UnixStream, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: test-only recvmsg into buffers that outlive it.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of::<[u64; 16]>() as _;
            let read = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            assert!(read >= 0, "{}", io::Error::last_os_error());
            let mut fds = Vec::new();
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count =
                    ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            (read as usize, fds)
        }
    }

    #[test]
    fn the_descriptor_rides_on_the_first_bytes() {
        let (shim, daemon) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"the namespace").unwrap();
        let request = b"{\"api_version\":1}";
        let sent = send_with_fd(&shim, request, file.as_fd()).unwrap();
        assert_eq!(sent, request.len());
        (&shim).write_all(b" more").unwrap();
        drop(shim);

        let mut buf = [0u8; 64];
        let (read, fds) = receive(&daemon, &mut buf);
        assert_eq!(
            &buf[..read],
            request,
            "a message does not run past its descriptor"
        );
        assert_eq!(fds.len(), 1);
        let mut received = File::from(fds.into_iter().next().unwrap());
        let mut text = String::new();
        std::io::Seek::rewind(&mut received).unwrap();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "the namespace", "the same open file");
        let (read, fds) = receive(&daemon, &mut buf);
        assert_eq!((&buf[..read], fds.len()), (&b" more"[..], 0));
    }

    #[test]
    fn a_peer_that_is_gone_is_an_error_not_a_signal() {
        let (shim, daemon) = UnixStream::pair().unwrap();
        drop(daemon);
        let file = tempfile::tempfile().unwrap();
        let err = send_with_fd(&shim, b"x", file.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn opening() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!is_transient(&err));
        assert!(is_transient(&io::Error::from_raw_os_error(libc::EMFILE)));
        // A FIFO with no writer does not block the open.
        let fifo = dir.path().join("fifo");
        nix_free_mkfifo(&fifo);
        assert!(open(&fifo).is_ok());
    }

    fn nix_free_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
}
