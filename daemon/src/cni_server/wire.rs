//! Reading one shim request off its connection: the bytes, and every file descriptor that came
//! with them as `SCM_RIGHTS` ancillary data (`weft_proto::shim` documents the framing).
//!
//! Each chunk is read with `recvmsg`, so a descriptor is never missed whichever chunk carries it;
//! every descriptor the kernel installs is wrapped in an [`OwnedFd`] at once, so it is closed with
//! the [`Received`] unless the request hands it on.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

/// Room for descriptors per read, beyond the one the protocol allows, so that an excess is
/// counted; more than this sets `truncated` (the kernel closes what does not fit).
const FD_ROOM: usize = 8;

/// The largest chunk read at once.
const CHUNK_BYTES: usize = 64 << 10;

/// What the peer sent before it shut down its write half (or `limit` was passed).
#[derive(Debug, Default)]
pub(super) struct Received {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    /// The kernel had more descriptors for a read than there was room for.
    pub truncated: bool,
}

/// Read to end of stream, or until more than `limit` bytes came (so that an oversized request is
/// seen as such without reading all of it).
pub(super) async fn read_request(stream: &UnixStream, limit: usize) -> io::Result<Received> {
    let mut received = Received::default();
    let mut chunk = vec![0; CHUNK_BYTES];
    loop {
        let room = (limit + 1).saturating_sub(received.bytes.len());
        if room == 0 {
            return Ok(received);
        }
        let buf = &mut chunk[..room.min(CHUNK_BYTES)];
        let read = stream
            .async_io(Interest::READABLE, || {
                recv_chunk(
                    stream.as_raw_fd(),
                    buf,
                    &mut received.fds,
                    &mut received.truncated,
                )
            })
            .await?;
        if read == 0 {
            return Ok(received);
        }
        received.bytes.extend_from_slice(&buf[..read]);
    }
}

/// One non-blocking `recvmsg` into `buf`; descriptors are appended to `fds`.
fn recv_chunk(
    socket: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    truncated: &mut bool,
) -> io::Result<usize> {
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; control_words()];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; control_words()]>() as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and writable for the
    // lengths given.
    let read = unsafe { libc::recvmsg(socket, &mut msg, flags) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg_controllen` bytes of `control` with control messages.
    unsafe { take_rights(&msg, fds) };
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        *truncated = true;
    }
    Ok(read as usize)
}

/// The control buffer's size in u64 words: one `SCM_RIGHTS` message with [`FD_ROOM`] descriptors.
const fn control_words() -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let bytes = unsafe { libc::CMSG_SPACE((FD_ROOM * size_of::<RawFd>()) as u32) } as usize;
    bytes.div_ceil(size_of::<u64>())
}

/// Wrap every descriptor of every `SCM_RIGHTS` message in `msg` (as many as fit, after a
/// truncation) in an [`OwnedFd`].
///
/// # Safety
/// `msg` must be the header `recvmsg` just filled, its control buffer still alive.
unsafe fn take_rights(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    let mut cmsg = libc::CMSG_FIRSTHDR(msg);
    while !cmsg.is_null() {
        let header = &*cmsg;
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            let data = libc::CMSG_DATA(cmsg);
            let len = header.cmsg_len as usize - (data as usize - cmsg as usize);
            for i in 0..len / size_of::<RawFd>() {
                let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                // The kernel installed it in this process for this message: it is ours to close.
                fds.push(OwnedFd::from_raw_fd(raw));
            }
        }
        cmsg = libc::CMSG_NXTHDR(msg, cmsg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    /// Send `bytes` on `socket` with `fds` attached to them (one `sendmsg`).
    fn send_with(socket: &std::os::unix::net::UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let mut control = vec![0u64; 64];
        let fd_bytes = std::mem::size_of_val(fds);
        let iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        // SAFETY: test-only sendmsg with buffers that outlive the call.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &iov as *const _ as *mut _;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = libc::CMSG_SPACE(fd_bytes as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast(),
                    fds.len(),
                );
            }
            assert_eq!(
                libc::sendmsg(socket.as_raw_fd(), &msg, 0),
                bytes.len() as isize
            );
        }
    }

    fn pair() -> (std::os::unix::net::UnixStream, UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        (ours, UnixStream::from_std(theirs).unwrap())
    }

    /// The descriptor's device and inode, to recognise it after it crossed.
    fn identity(fd: impl AsFd) -> (u64, u64) {
        let stat = nix::sys::stat::fstat(fd).unwrap();
        (stat.st_dev as u64, stat.st_ino as u64)
    }

    #[tokio::test]
    async fn bytes_and_the_descriptor_on_the_first_chunk_arrive() {
        let (sender, receiver) = pair();
        let file = tempfile::tempfile().unwrap();
        send_with(&sender, b"{\"api_", &[file.as_raw_fd()]);
        (&sender).write_all(b"version\": 1}").unwrap();
        sender.shutdown(std::net::Shutdown::Write).unwrap();
        let received = read_request(&receiver, 1 << 20).await.unwrap();
        assert_eq!(received.bytes, b"{\"api_version\": 1}");
        assert_eq!(received.fds.len(), 1);
        assert!(!received.truncated);
        assert_eq!(identity(&received.fds[0]), identity(&file));
        assert_ne!(
            received.fds[0].as_raw_fd(),
            file.as_raw_fd(),
            "a new descriptor"
        );
        let flags = nix::fcntl::fcntl(&received.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(flags & libc::FD_CLOEXEC != 0, "received close-on-exec");
    }

    #[tokio::test]
    async fn descriptors_on_later_chunks_and_too_many_are_all_taken() {
        let (sender, receiver) = pair();
        let files: Vec<std::fs::File> = (0..FD_ROOM + 3)
            .map(|_| tempfile::tempfile().unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        send_with(&sender, b"a", &[]);
        send_with(&sender, b"b", &raw[..2]);
        send_with(&sender, b"c", &raw[2..]);
        drop(sender);
        let received = read_request(&receiver, 1 << 20).await.unwrap();
        assert_eq!(received.bytes, b"abc");
        assert!(received.truncated, "more than FD_ROOM in one message");
        assert_eq!(
            received.fds.len(),
            2 + FD_ROOM,
            "the ones that fit are ours, to close"
        );
    }

    #[tokio::test]
    async fn reading_stops_past_the_limit() {
        let (mut sender, receiver) = pair();
        let writer = std::thread::spawn(move || {
            // The reader stops early: the rest may not be taken.
            let _ = sender.write_all(&vec![b' '; 300_000]);
        });
        let received = read_request(&receiver, 100_000).await.unwrap();
        assert_eq!(received.bytes.len(), 100_001);
        drop(receiver);
        writer.join().unwrap();
    }
}
