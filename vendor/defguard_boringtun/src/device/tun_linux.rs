// Copyright (c) 2019 Cloudflare, Inc. All rights reserved.
// SPDX-License-Identifier: BSD-3-Clause

use std::{
    io,
    os::unix::io::{AsRawFd, RawFd},
};

use libc::*;

use super::Error;
use weft_offload::VNET_HDR_LEN;

const TUNSETIFF: u64 = 0x4004_54ca;
// weft: _IOW('T', 208, unsigned int), and the offloads it turns on (include/uapi/linux/if_tun.h).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUN_F_CSUM: c_uint = 0x01;
const TUN_F_TSO4: c_uint = 0x02;
const TUN_F_TSO6: c_uint = 0x04;
/// weft: a virtio-net header saying "no GSO, checksum not checked": what goes before each
/// decrypted packet written to a device with `IFF_VNET_HDR`.
const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

#[repr(C)]
union IfrIfru {
    ifru_addr: sockaddr,
    ifru_addr_v4: sockaddr_in,
    ifru_addr_v6: sockaddr_in,
    ifru_dstaddr: sockaddr,
    ifru_broadaddr: sockaddr,
    ifru_flags: c_short,
    ifru_metric: c_int,
    ifru_mtu: c_int,
    ifru_phys: c_int,
    ifru_media: c_int,
    ifru_intval: c_int,
    //ifru_data: caddr_t,
    //ifru_devmtu: ifdevmtu,
    //ifru_kpi: ifkpi,
    ifru_wake_flags: u32,
    ifru_route_refcnt: u32,
    ifru_cap: [c_int; 2],
    ifru_functional_type: u32,
}

#[repr(C)]
pub struct ifreq {
    ifr_name: [c_uchar; IFNAMSIZ],
    ifr_ifru: IfrIfru,
}

#[derive(Default, Debug)]
pub struct TunSocket {
    fd: RawFd,
    name: String,
    /// weft: opened with `IFF_VNET_HDR` and TSO on: every read and write starts with a
    /// `virtio_net_hdr` (see `offload.rs`).
    vnet_hdr: bool,
}

impl Drop for TunSocket {
    fn drop(&mut self) {
        unsafe { close(self.fd) };
    }
}

impl AsRawFd for TunSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl TunSocket {
    fn write(&self, buf: &[u8]) -> usize {
        if self.vnet_hdr {
            return self.write_with_header(&PLAIN_VNET_HDR, buf);
        }
        match unsafe { write(self.fd, buf.as_ptr() as _, buf.len() as _) } {
            -1 => 0,
            n => n as usize,
        }
    }

    /// weft: writes `header` (a virtio-net header) and `packet` in one `writev`; returns the
    /// bytes written, 0 on error.
    pub fn write_with_header(&self, header: &[u8], packet: &[u8]) -> usize {
        let iov = [
            iovec {
                iov_base: header.as_ptr() as *mut c_void,
                iov_len: header.len(),
            },
            iovec {
                iov_base: packet.as_ptr() as *mut c_void,
                iov_len: packet.len(),
            },
        ];
        match unsafe { writev(self.fd, iov.as_ptr(), 2) } {
            -1 => 0,
            n => n as usize,
        }
    }

    /// weft: writes `buf`, which starts with its own virtio-net header, as one packet; returns the
    /// bytes written, 0 on error.
    pub fn write_vnet(&self, buf: &[u8]) -> usize {
        match unsafe { write(self.fd, buf.as_ptr() as _, buf.len() as _) } {
            -1 => 0,
            n => n as usize,
        }
    }

    /// weft: whether reads and writes carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    pub fn new(name: &str) -> Result<TunSocket, Error> {
        Self::open(name, false)
    }

    /// weft: opens `name` with TCP segmentation offload, so reads may be TCP superpackets behind
    /// a virtio-net header; falls back to a plain queue where the kernel refuses the offloads.
    /// Every queue of one device must be opened the same way.
    pub fn new_offloaded(name: &str) -> Result<TunSocket, Error> {
        match Self::open(name, true) {
            Ok(tun) => Ok(tun),
            Err(Error::IOCtl(_)) => Self::open(name, false),
            Err(e) => Err(e),
        }
    }

    /// weft: one more queue of this (multi-queue) device, opened the way this one was: the
    /// kernel keeps one set of flags per device, so a plain queue would turn the headers off.
    pub fn another_queue(&self) -> Result<TunSocket, Error> {
        Self::open(&self.name, self.vnet_hdr)
    }

    fn open(name: &str, vnet_hdr: bool) -> Result<TunSocket, Error> {
        // If the provided name appears to be a FD, use that.
        let provided_fd = name.parse::<i32>();
        if let Ok(fd) = provided_fd {
            return Ok(TunSocket {
                fd,
                name: name.to_string(),
                vnet_hdr: false,
            });
        }

        let fd = match unsafe { open(c"/dev/net/tun".as_ptr(), O_RDWR) } {
            -1 => return Err(Error::Socket(io::Error::last_os_error())),
            fd => fd,
        };
        let iface_name = name.as_bytes();
        let mut ifr = ifreq {
            ifr_name: [0; IFNAMSIZ],
            ifr_ifru: IfrIfru {
                ifru_flags: (IFF_TUN
                    | IFF_NO_PI
                    | IFF_MULTI_QUEUE
                    | if vnet_hdr { IFF_VNET_HDR } else { 0 }) as _,
            },
        };

        if iface_name.len() >= ifr.ifr_name.len() {
            return Err(Error::InvalidTunnelName);
        }

        ifr.ifr_name[..iface_name.len()].copy_from_slice(iface_name);

        if unsafe { ioctl(fd, TUNSETIFF as _, &ifr) } < 0 {
            let e = io::Error::last_os_error();
            unsafe { close(fd) };
            return Err(Error::IOCtl(e));
        }
        // The kernel reads the argument as an unsigned long.
        let offloads = c_ulong::from(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        if vnet_hdr && unsafe { ioctl(fd, TUNSETOFFLOAD as _, offloads) } < 0 {
            let e = io::Error::last_os_error();
            unsafe { close(fd) };
            return Err(Error::IOCtl(e));
        }

        let name = name.to_string();
        Ok(TunSocket { fd, name, vnet_hdr })
    }

    pub fn set_non_blocking(self) -> Result<TunSocket, Error> {
        match unsafe { fcntl(self.fd, F_GETFL) } {
            -1 => Err(Error::FCntl(io::Error::last_os_error())),
            flags => match unsafe { fcntl(self.fd, F_SETFL, flags | O_NONBLOCK) } {
                -1 => Err(Error::FCntl(io::Error::last_os_error())),
                _ => Ok(self),
            },
        }
    }

    pub fn name(&self) -> Result<String, Error> {
        Ok(self.name.clone())
    }

    /// Get the current MTU value
    pub fn mtu(&self) -> Result<usize, Error> {
        let provided_fd = self.name.parse::<i32>();
        if provided_fd.is_ok() {
            return Ok(1500);
        }

        let fd = match unsafe { socket(AF_INET, SOCK_STREAM, IPPROTO_IP) } {
            -1 => return Err(Error::Socket(io::Error::last_os_error())),
            fd => fd,
        };

        let name = self.name()?;
        let iface_name: &[u8] = name.as_ref();
        let mut ifr = ifreq {
            ifr_name: [0; IF_NAMESIZE],
            ifr_ifru: IfrIfru { ifru_mtu: 0 },
        };

        ifr.ifr_name[..iface_name.len()].copy_from_slice(iface_name);

        if unsafe { ioctl(fd, SIOCGIFMTU as _, &ifr) } < 0 {
            return Err(Error::IOCtl(io::Error::last_os_error()));
        }

        unsafe { close(fd) };

        Ok(unsafe { ifr.ifr_ifru.ifru_mtu } as _)
    }

    #[must_use]
    pub fn write4(&self, src: &[u8]) -> usize {
        self.write(src)
    }

    #[must_use]
    pub fn write6(&self, src: &[u8]) -> usize {
        self.write(src)
    }

    pub fn read<'a>(&self, dst: &'a mut [u8]) -> Result<&'a mut [u8], Error> {
        match unsafe { read(self.fd, dst.as_mut_ptr().cast(), dst.len()) } {
            -1 => Err(Error::IfaceRead(io::Error::last_os_error())),
            n => Ok(&mut dst[..n.cast_unsigned()]),
        }
    }
}
