//! Host tap interfaces for virtio-net: opening one by name through `/dev/net/tun` or adopting
//! an inherited descriptor, and the per-interface settings the device needs.
//!
//! A [`Tap`] is always in the mode virtio-net wants: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a
//! 12-byte vnet header (virtio 1.x `struct virtio_net_hdr_v1`, so frames pass between the guest
//! and the tap without rewriting the header), and non-blocking. Every read returns one frame
//! and every write sends one frame, each preceded by that header. The offloads the kernel may
//! hand us (`TUNSETOFFLOAD`) follow what the guest accepted; see [`Tap::set_offload`].

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// Where tap interfaces come from.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The interface flags a tap used by virtio-net must have.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Why a tap could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}")]
    OpenTun(#[source] io::Error),
    /// The name does not fit in `IFNAMSIZ` or contains a NUL byte.
    #[error("invalid tap name {0:?} (1 to 15 bytes, no NUL)")]
    InvalidName(String),
    /// `TUNSETIFF` failed (no permission to create it, or it exists with other flags).
    #[error("cannot attach to tap {name:?}")]
    Attach {
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The inherited descriptor could not be duplicated.
    #[error("cannot duplicate tap descriptor {fd}")]
    Dup {
        /// The descriptor.
        fd: RawFd,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The inherited descriptor is not a tun/tap file (`TUNGETIFF` failed).
    #[error("descriptor {fd} is not a tap")]
    NotTun {
        /// The descriptor.
        fd: RawFd,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The inherited descriptor is a tap without `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    #[error(
        "tap {name:?} has flags {flags:#x}; virtio-net needs IFF_TAP, IFF_NO_PI and IFF_VNET_HDR"
    )]
    WrongFlags {
        /// The interface name.
        name: String,
        /// The flags it has.
        flags: u32,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("cannot set the vnet header size of tap {name:?}")]
    VnetHdrSize {
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The interface could not be brought up.
    #[error("cannot bring tap {name:?} up")]
    Up {
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The descriptor could not be made non-blocking.
    #[error("cannot make tap {name:?} non-blocking")]
    NonBlocking {
        /// The interface name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface in virtio-net mode (see the module documentation).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// False only for the socket stand-ins of the unit tests (no tun ioctls).
    is_tun: bool,
}

/// A zeroed `ifreq`.
fn empty_ifreq() -> libc::ifreq {
    // SAFETY: ifreq holds only integers, byte arrays, plain C structs and a raw pointer, for
    // all of which the all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The interface name in an `ifreq`, up to its NUL.
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Opens the tap `name`, creating it if it does not exist (which needs `CAP_NET_ADMIN`).
    /// A tap created here disappears when its last descriptor is closed.
    pub fn open_named(name: &str) -> Result<Self, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .map_err(TapError::OpenTun)?;
        let fd = OwnedFd::from(file);
        let mut ifr = empty_ifreq();
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may update the name of) the ifreq, which is valid and
        // lives across the call; fd is an open /dev/net/tun file.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Self {
            fd,
            name: ifreq_name(&ifr),
            is_tun: true,
        };
        tap.set_vnet_hdr_size()?;
        // A tap opened by name (often created just now) must be up to carry frames, as Cloud
        // Hypervisor users expect; one that is already up is left as it is.
        tap.set_up().map_err(|source| TapError::Up {
            name: tap.name.clone(),
            source,
        })?;
        Ok(tap)
    }

    /// Sets IFF_UP on the interface. The interface ioctls work on a socket of any family: a
    /// Unix one, so that the VMM's seccomp filter need allow no internet socket at all.
    fn set_up(&self) -> io::Result<()> {
        // SAFETY: socket takes no pointers.
        let sock = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `sock` was just returned by socket(2) and nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = empty_ifreq();
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(self.name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS fills the ifreq, which is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads the ifreq, which is valid for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adopts a tap descriptor inherited from the parent (or passed over a socket). The
    /// descriptor is duplicated: the caller keeps `fd` and may close it. It must be a tap with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (checked with `TUNGETIFF`); the shared file is made
    /// non-blocking.
    pub fn from_fd(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_DUPFD_CLOEXEC takes no pointer; on an invalid fd it fails with EBADF.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(TapError::Dup {
                fd,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fcntl just returned this new descriptor, which nothing else owns.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        Self::from_owned_fd(owned)
    }

    /// Adopts a tap descriptor (see [`Tap::from_fd`]), taking ownership of it.
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let mut ifr = empty_ifreq();
        // SAFETY: TUNGETIFF writes an ifreq, which is valid and lives across the call; on a
        // descriptor that is not a tun file the ioctl fails without writing.
        let ret = unsafe { libc::ioctl(raw, libc::TUNGETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::NotTun {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags } as u16;
        let name = ifreq_name(&ifr);
        if libc::c_int::from(flags) & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::WrongFlags {
                name,
                flags: u32::from(flags),
            });
        }
        let tap = Self {
            fd,
            name,
            is_tun: true,
        };
        tap.set_nonblocking()?;
        tap.set_vnet_hdr_size()?;
        Ok(tap)
    }

    /// A stand-in for a tap over a datagram socket, for unit tests: reads and writes move
    /// whole frames the same way, the tun ioctls are skipped.
    #[cfg(test)]
    pub(crate) fn from_socket(fd: OwnedFd) -> Self {
        let tap = Self {
            fd,
            name: "socket".into(),
            is_tun: false,
        };
        tap.set_nonblocking().unwrap();
        tap
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_nonblocking(&self) -> Result<(), TapError> {
        let raw = self.fd.as_raw_fd();
        let err = |source| TapError::NonBlocking {
            name: self.name.clone(),
            source,
        };
        // SAFETY: F_GETFL takes no pointer.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: F_SETFL takes an integer argument.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn set_vnet_hdr_size(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, valid for the call.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the kernel which offloads the reader (the guest) accepts: `TUN_F_*` bits
    /// (`TUN_F_CSUM`: partial checksums; `TUN_F_TSO4`/`TUN_F_TSO6`: TCP segmentation, only
    /// honoured with `TUN_F_CSUM`). With 0 the kernel hands over only complete, checksummed
    /// frames of at most the interface MTU.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.is_tun {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buf`; a longer frame is truncated by the
    /// kernel. `WouldBlock` when no frame is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry_interrupted(|| {
            // SAFETY: buf is valid for writes of buf.len() bytes for the whole call.
            unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
        })
    }

    /// Sends one frame (vnet header first).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        retry_interrupted(|| {
            // SAFETY: buf is valid for reads of buf.len() bytes for the whole call.
            unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) }
        })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs a read(2)- or write(2)-like call until a signal does not interrupt it; its byte count
/// or the error.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
