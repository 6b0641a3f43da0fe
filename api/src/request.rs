//! The per-VM API's requests, typed: every [`Endpoint`] with its route in one table
//! ([`ROUTES`], Cloud Hypervisor's `/api/v1/…` paths), and the [`VmmRequest`] the VMM's state
//! machine handles. The HTTP server, petrelctl and petreld all take their paths from here; how a
//! body becomes a request (Cloud Hypervisor's schemas, [`crate::compat`]) is the HTTP layer's job.

use std::os::fd::OwnedFd;

use crate::compat::{
    VmReceiveMigration, VmRemoveDevice, VmResize, VmResizeDisk, VmRestore, VmSendMigration,
    VmSnapshot,
};
use crate::{DiskConfig, NetConfig, VmConfig, VsockConfig};

/// The prefix of every path of the per-VM API.
pub const PATH_PREFIX: &str = "/api/v1/";

/// The HTTP method a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `GET`: reads, no body.
    Get,
    /// `PUT`: changes, with or without a body.
    Put,
}

impl Verb {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
        }
    }
}

/// An endpoint of the per-VM API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `vmm.ping`: version, pid, features and hypervisor of the VMM.
    VmmPing,
    /// `vmm.shutdown`: end the process.
    VmmShutdown,
    /// `vm.create`: set the VM's config.
    VmCreate,
    /// `vm.boot`.
    VmBoot,
    /// `vm.info`: the VM's config and state.
    VmInfo,
    /// `vm.pause`.
    VmPause,
    /// `vm.resume`.
    VmResume,
    /// `vm.reboot`.
    VmReboot,
    /// `vm.shutdown`: stop the VM at once (it can be booted again).
    VmShutdown,
    /// `vm.power-button`: ask the guest to shut down.
    VmPowerButton,
    /// `vm.delete`.
    VmDelete,
    /// `vm.counters`: per-device counters.
    VmCounters,
    /// `vm.resize`: the balloon target (no CPU or memory hotplug).
    VmResize,
    /// `vm.resize-disk`: a disk grows, the guest is told.
    VmResizeDisk,
    /// `vm.add-disk` (before boot).
    VmAddDisk,
    /// `vm.add-net` (before boot; tap fds may come with SCM_RIGHTS).
    VmAddNet,
    /// `vm.add-vsock` (before boot).
    VmAddVsock,
    /// `vm.remove-device` (before boot).
    VmRemoveDevice,
    /// `vm.snapshot`: write the paused VM into a directory.
    VmSnapshot,
    /// `vm.restore`: take over a snapshot (in a petrel with no VM).
    VmRestore,
    /// `vm.send-migration`: move the VM to another petrel.
    VmSendMigration,
    /// `vm.receive-migration`: wait for a VM (in a petrel with no VM).
    VmReceiveMigration,
}

/// One route: an endpoint, its method and its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The method it takes.
    pub verb: Verb,
    /// Its path (`/api/v1/vm.boot`).
    pub path: &'static str,
}

const fn route(endpoint: Endpoint, verb: Verb, path: &'static str) -> Route {
    Route {
        endpoint,
        verb,
        path,
    }
}

/// Every route of the per-VM API: the one table.
pub const ROUTES: &[Route] = &[
    route(Endpoint::VmmPing, Verb::Get, "/api/v1/vmm.ping"),
    route(Endpoint::VmmShutdown, Verb::Put, "/api/v1/vmm.shutdown"),
    route(Endpoint::VmCreate, Verb::Put, "/api/v1/vm.create"),
    route(Endpoint::VmBoot, Verb::Put, "/api/v1/vm.boot"),
    route(Endpoint::VmInfo, Verb::Get, "/api/v1/vm.info"),
    route(Endpoint::VmPause, Verb::Put, "/api/v1/vm.pause"),
    route(Endpoint::VmResume, Verb::Put, "/api/v1/vm.resume"),
    route(Endpoint::VmReboot, Verb::Put, "/api/v1/vm.reboot"),
    route(Endpoint::VmShutdown, Verb::Put, "/api/v1/vm.shutdown"),
    route(
        Endpoint::VmPowerButton,
        Verb::Put,
        "/api/v1/vm.power-button",
    ),
    route(Endpoint::VmDelete, Verb::Put, "/api/v1/vm.delete"),
    route(Endpoint::VmCounters, Verb::Get, "/api/v1/vm.counters"),
    route(Endpoint::VmResize, Verb::Put, "/api/v1/vm.resize"),
    route(Endpoint::VmResizeDisk, Verb::Put, "/api/v1/vm.resize-disk"),
    route(Endpoint::VmAddDisk, Verb::Put, "/api/v1/vm.add-disk"),
    route(Endpoint::VmAddNet, Verb::Put, "/api/v1/vm.add-net"),
    route(Endpoint::VmAddVsock, Verb::Put, "/api/v1/vm.add-vsock"),
    route(
        Endpoint::VmRemoveDevice,
        Verb::Put,
        "/api/v1/vm.remove-device",
    ),
    route(Endpoint::VmSnapshot, Verb::Put, "/api/v1/vm.snapshot"),
    route(Endpoint::VmRestore, Verb::Put, "/api/v1/vm.restore"),
    route(
        Endpoint::VmSendMigration,
        Verb::Put,
        "/api/v1/vm.send-migration",
    ),
    route(
        Endpoint::VmReceiveMigration,
        Verb::Put,
        "/api/v1/vm.receive-migration",
    ),
];

impl Endpoint {
    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        ROUTES.iter().find(|r| r.path == path).map(|r| r.endpoint)
    }

    /// Its route in [`ROUTES`].
    pub fn route(self) -> &'static Route {
        match ROUTES.iter().find(|r| r.endpoint == self) {
            Some(r) => r,
            // Every endpoint is in the table (a unit test checks it).
            None => unreachable!("{self:?} is missing from ROUTES"),
        }
    }

    /// Its path (`/api/v1/vm.boot`).
    pub fn path(self) -> &'static str {
        self.route().path
    }

    /// Its name, the path without the prefix (`vm.boot`), as logs and messages use it.
    pub fn name(self) -> &'static str {
        let path = self.path();
        path.strip_prefix(PATH_PREFIX).unwrap_or(path)
    }

    /// The method it takes.
    pub fn verb(self) -> Verb {
        self.route().verb
    }
}

/// A request of the per-VM API, as the VMM's state machine handles it.
#[derive(Debug)]
pub enum VmmRequest {
    /// `vmm.ping`.
    Ping,
    /// `vmm.shutdown`.
    ShutdownVmm,
    /// `vm.create` with the VM's config.
    Create(Box<VmConfig>),
    /// `vm.boot`.
    Boot,
    /// `vm.info`.
    Info,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.reboot`.
    Reboot,
    /// `vm.shutdown`.
    Shutdown,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.delete`.
    Delete,
    /// `vm.counters`.
    Counters,
    /// `vm.resize`.
    Resize(VmResize),
    /// `vm.resize-disk`.
    ResizeDisk(VmResizeDisk),
    /// `vm.add-disk`.
    AddDisk(DiskConfig),
    /// `vm.add-net`; `fds` are the tap descriptors `net.fds` refers to, kept open if the
    /// interface is added.
    AddNet {
        /// The interface.
        net: NetConfig,
        /// Descriptors received with the request.
        fds: Vec<OwnedFd>,
    },
    /// `vm.add-vsock`.
    AddVsock(VsockConfig),
    /// `vm.remove-device`.
    RemoveDevice(VmRemoveDevice),
    /// `vm.snapshot`.
    Snapshot(VmSnapshot),
    /// `vm.restore`; `fds` are the tap descriptors `restore.net_fds` refers to, kept open if
    /// the VM is restored.
    Restore {
        /// The request.
        restore: VmRestore,
        /// Descriptors received with the request.
        fds: Vec<OwnedFd>,
    },
    /// `vm.send-migration`.
    SendMigration(VmSendMigration),
    /// `vm.receive-migration`.
    ReceiveMigration(VmReceiveMigration),
}

impl VmmRequest {
    /// The endpoint the request is made at.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            VmmRequest::Ping => Endpoint::VmmPing,
            VmmRequest::ShutdownVmm => Endpoint::VmmShutdown,
            VmmRequest::Create(_) => Endpoint::VmCreate,
            VmmRequest::Boot => Endpoint::VmBoot,
            VmmRequest::Info => Endpoint::VmInfo,
            VmmRequest::Pause => Endpoint::VmPause,
            VmmRequest::Resume => Endpoint::VmResume,
            VmmRequest::Reboot => Endpoint::VmReboot,
            VmmRequest::Shutdown => Endpoint::VmShutdown,
            VmmRequest::PowerButton => Endpoint::VmPowerButton,
            VmmRequest::Delete => Endpoint::VmDelete,
            VmmRequest::Counters => Endpoint::VmCounters,
            VmmRequest::Resize(_) => Endpoint::VmResize,
            VmmRequest::ResizeDisk(_) => Endpoint::VmResizeDisk,
            VmmRequest::AddDisk(_) => Endpoint::VmAddDisk,
            VmmRequest::AddNet { .. } => Endpoint::VmAddNet,
            VmmRequest::AddVsock(_) => Endpoint::VmAddVsock,
            VmmRequest::RemoveDevice(_) => Endpoint::VmRemoveDevice,
            VmmRequest::Snapshot(_) => Endpoint::VmSnapshot,
            VmmRequest::Restore { .. } => Endpoint::VmRestore,
            VmmRequest::SendMigration(_) => Endpoint::VmSendMigration,
            VmmRequest::ReceiveMigration(_) => Endpoint::VmReceiveMigration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Endpoint; 22] = [
        Endpoint::VmmPing,
        Endpoint::VmmShutdown,
        Endpoint::VmCreate,
        Endpoint::VmBoot,
        Endpoint::VmInfo,
        Endpoint::VmPause,
        Endpoint::VmResume,
        Endpoint::VmReboot,
        Endpoint::VmShutdown,
        Endpoint::VmPowerButton,
        Endpoint::VmDelete,
        Endpoint::VmCounters,
        Endpoint::VmResize,
        Endpoint::VmResizeDisk,
        Endpoint::VmAddDisk,
        Endpoint::VmAddNet,
        Endpoint::VmAddVsock,
        Endpoint::VmRemoveDevice,
        Endpoint::VmSnapshot,
        Endpoint::VmRestore,
        Endpoint::VmSendMigration,
        Endpoint::VmReceiveMigration,
    ];

    #[test]
    fn every_endpoint_has_exactly_one_route() {
        assert_eq!(ROUTES.len(), ALL.len());
        for e in ALL {
            assert_eq!(
                ROUTES.iter().filter(|r| r.endpoint == e).count(),
                1,
                "{e:?}"
            );
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert!(e.path().starts_with(PATH_PREFIX), "{e:?}");
            assert!(!e.name().contains('/'), "{e:?}");
        }
        assert_eq!(Endpoint::VmAddNet.name(), "vm.add-net");
        assert_eq!(Endpoint::VmInfo.verb(), Verb::Get);
        assert_eq!(Endpoint::from_path("/api/v1/vm.nope"), None);
    }

    #[test]
    fn requests_name_their_endpoint() {
        assert_eq!(VmmRequest::Pause.endpoint(), Endpoint::VmPause);
        let r = VmmRequest::RemoveDevice(VmRemoveDevice { id: "d".into() });
        assert_eq!(r.endpoint(), Endpoint::VmRemoveDevice);
    }
}
