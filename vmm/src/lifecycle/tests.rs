//! The state machine on its own, with typed requests and the real KVM backend: what each
//! state allows, the typed errors, config edits before boot, and a real test guest booted,
//! paused, resumed, rebooted, shut down and deleted.

use std::path::PathBuf;
use std::sync::Arc;

use super::check_balloon;
use api::compat::{VmRemoveDevice, VmResize};
use api::request::VmmRequest;
use api::{DiskConfig, SerialMode, VmConfig, VsockConfig};
use petrel_tests::{guest_image, kvm_available, GuestKind};

use super::{ErrorKind, OpError, Reply, VmState, Vmm};
use crate::event_loop::{Controller, EventLoop, LoopInputs};
use crate::legacy::{clone_eventfd, LifecycleEvents};
use crate::seccomp::SeccompMode;
use crate::signals::SignalFd;
use crate::vcpu::VcpuShared;

/// A VMM with no VM and its event loop, as `run` makes them; `None` (after saying so) where
/// /dev/kvm is missing.
fn vmm(test: &str) -> Option<(Vmm, EventLoop)> {
    if !kvm_available() {
        let _ = test;
        test_skip::skip("/dev/kvm not available");
        return None;
    }
    let (hv, selection) = hypervisor::open(hypervisor::Request::Kvm, false).unwrap();
    let events = LifecycleEvents::new().unwrap();
    let shared = Arc::new(VcpuShared::new((SeccompMode::Off, hypervisor::Kind::Kvm)).unwrap());
    let controller = Controller::new(
        LoopInputs {
            exit_evt: clone_eventfd(&events.exit_evt, "poweroff").unwrap(),
            reset_evt: clone_eventfd(&events.reset_evt, "reset").unwrap(),
            signals: SignalFd::new(&[]).unwrap(),
            api_evt: None,
        },
        shared.clone(),
    );
    let event_loop = EventLoop::new(controller, None).unwrap();
    Some((
        Vmm::new(hv, selection, shared, events, false, false),
        event_loop,
    ))
}

/// A config for a kernel that exists (this test binary: create only checks it is readable).
fn config() -> VmConfig {
    let mut cfg = VmConfig::new(std::env::current_exe().unwrap());
    cfg.memory.size = 64 << 20;
    cfg.serial.mode = SerialMode::Off;
    cfg
}

fn refused(r: Result<Reply, OpError>) -> (ErrorKind, String) {
    match r {
        Ok(reply) => panic!("expected a refusal, got {reply:?}"),
        Err(e) => (e.kind(), crate::error_chain(&e)),
    }
}

#[test]
fn without_a_vm_every_vm_request_is_not_found() {
    let Some((mut vmm, mut el)) = vmm("without_a_vm_every_vm_request_is_not_found") else {
        return;
    };
    assert!(matches!(
        vmm.handle(VmmRequest::Ping, &mut el),
        Ok(Reply::Ping(_))
    ));
    for req in [
        VmmRequest::Info,
        VmmRequest::Counters,
        VmmRequest::Boot,
        VmmRequest::Pause,
        VmmRequest::Resume,
        VmmRequest::Reboot,
        VmmRequest::Shutdown,
        VmmRequest::PowerButton,
        VmmRequest::Delete,
        VmmRequest::Resize(VmResize::default()),
        VmmRequest::RemoveDevice(VmRemoveDevice { id: "d".into() }),
    ] {
        let name = req.endpoint().name();
        let (kind, text) = refused(vmm.handle(req, &mut el));
        assert_eq!(kind, ErrorKind::NotFound, "{name}: {text}");
        assert_eq!(
            text,
            format!("{name}: not allowed while the VM is NotCreated")
        );
    }
    assert_eq!(vmm.state(), VmState::NotCreated);
}

#[test]
fn create_checks_the_config_against_the_host() {
    let Some((mut vmm, mut el)) = vmm("create_checks_the_config_against_the_host") else {
        return;
    };
    let mut missing = config();
    missing.payload.kernel = PathBuf::from("/nonexistent/vmlinux");
    let (kind, text) = refused(vmm.handle(VmmRequest::Create(Box::new(missing)), &mut el));
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(text.contains("/nonexistent/vmlinux"), "{text}");

    let mut too_many = config();
    too_many.cpus.boot_vcpus = 100_000;
    let (kind, text) = refused(vmm.handle(VmmRequest::Create(Box::new(too_many)), &mut el));
    assert_eq!(kind, ErrorKind::Invalid);
    assert!(
        text.starts_with("cpus.boot_vcpus: 100000 is more than"),
        "{text}"
    );
    assert_eq!(vmm.state(), VmState::NotCreated);

    let created = vmm.handle(VmmRequest::Create(Box::new(config())), &mut el);
    assert!(matches!(created, Ok(Reply::Done)), "{created:?}");
    assert_eq!(vmm.state(), VmState::Created);
    let (kind, text) = refused(vmm.handle(VmmRequest::Create(Box::new(config())), &mut el));
    assert_eq!(kind, ErrorKind::Conflict);
    assert_eq!(text, "vm.create: not allowed while the VM is Created");
    let (kind, _) = refused(vmm.handle(VmmRequest::Pause, &mut el));
    assert_eq!(kind, ErrorKind::Conflict);
}

#[test]
fn devices_are_added_and_removed_before_boot() {
    let Some((mut vmm, mut el)) = vmm("devices_are_added_and_removed_before_boot") else {
        return;
    };
    vmm.handle(VmmRequest::Create(Box::new(config())), &mut el)
        .unwrap();
    let disk = DiskConfig::parse("path=/tmp/d.img,id=d0").unwrap();
    let added = vmm.handle(VmmRequest::AddDisk(disk), &mut el);
    assert!(
        matches!(&added, Ok(Reply::Added(Some(id))) if id == "d0"),
        "{added:?}"
    );
    let vsock = || VsockConfig::parse("cid=3,socket=/tmp/v.sock").unwrap();
    vmm.handle(VmmRequest::AddVsock(vsock()), &mut el).unwrap();
    let (kind, text) = refused(vmm.handle(VmmRequest::AddVsock(vsock()), &mut el));
    assert_eq!(kind, ErrorKind::Invalid);
    assert_eq!(text, "vm.add-vsock: the VM already has a vsock device");

    let remove = |id: &str| VmmRequest::RemoveDevice(VmRemoveDevice { id: id.into() });
    let (kind, text) = refused(vmm.handle(remove("nope"), &mut el));
    assert_eq!(kind, ErrorKind::NotFound);
    assert_eq!(text, "vm.remove-device: no device with id 'nope'");
    vmm.handle(remove("d0"), &mut el).unwrap();
    let Ok(Reply::Info(info)) = vmm.handle(VmmRequest::Info, &mut el) else {
        panic!("vm.info must answer");
    };
    assert_eq!(info.config.disks.as_deref().map_or(0, <[_]>::len), 0);
    assert!(info.config.vsock.is_some());
    assert_eq!(info.state, VmState::Created);
    assert_eq!(info.memory_actual_size, 64 << 20);
}

#[test]
fn a_real_guest_through_its_whole_life() {
    let Some((mut vmm, mut el)) = vmm("a_real_guest_through_its_whole_life") else {
        return;
    };
    let mut cfg = config();
    cfg.payload.kernel = PathBuf::from(guest_image(GuestKind::Pvh));
    cfg.payload.cmdline = Some("action=halt".into());
    let mut req = |vmm: &mut Vmm, r: VmmRequest| vmm.handle(r, &mut el);
    req(&mut vmm, VmmRequest::Create(Box::new(cfg))).unwrap();
    req(&mut vmm, VmmRequest::Boot).unwrap();
    assert_eq!(vmm.state(), VmState::Running);
    let (kind, _) = refused(req(&mut vmm, VmmRequest::Boot));
    assert_eq!(kind, ErrorKind::Conflict);

    req(&mut vmm, VmmRequest::Pause).unwrap();
    assert_eq!(vmm.state(), VmState::Paused);
    let (kind, text) = refused(req(&mut vmm, VmmRequest::Pause));
    assert_eq!(
        (kind, text.as_str()),
        (
            ErrorKind::Conflict,
            "vm.pause: not allowed while the VM is Paused"
        )
    );
    let disk = DiskConfig::parse("path=/tmp/d.img").unwrap();
    let (kind, text) = refused(req(&mut vmm, VmmRequest::AddDisk(disk)));
    assert_eq!(kind, ErrorKind::Conflict);
    assert!(text.contains("hotplug needs virtio-pci"), "{text}");
    req(&mut vmm, VmmRequest::Resume).unwrap();
    assert_eq!(vmm.state(), VmState::Running);

    assert!(matches!(
        req(&mut vmm, VmmRequest::Counters),
        Ok(Reply::Counters(_))
    ));
    req(&mut vmm, VmmRequest::Reboot).unwrap();
    assert_eq!(vmm.state(), VmState::Running);
    req(&mut vmm, VmmRequest::Shutdown).unwrap();
    assert_eq!(vmm.state(), VmState::Shutdown);
    let (kind, _) = refused(req(&mut vmm, VmmRequest::PowerButton));
    assert_eq!(kind, ErrorKind::Conflict);
    req(&mut vmm, VmmRequest::Boot).unwrap();
    assert_eq!(vmm.state(), VmState::Running);
    req(&mut vmm, VmmRequest::Delete).unwrap();
    assert_eq!(vmm.state(), VmState::NotCreated);
    assert!(matches!(
        req(&mut vmm, VmmRequest::ShutdownVmm),
        Ok(Reply::Exit(0))
    ));
}

/// Every boot makes a new VM that attaches the machine's interrupt eventfds again. Linux
/// (6.15+) refuses an eventfd another VM's irqfd still waits on, and a closed VM's irqfds go
/// away asynchronously: without detaching them first, a boot right after a shutdown failed
/// with KVM_IRQFD EBUSY now and then (the whole-life test above hit it under load).
#[test]
fn boots_right_after_a_shutdown_attach_the_interrupts() {
    let Some((mut vmm, mut el)) = vmm("boots_right_after_a_shutdown_attach_the_interrupts") else {
        return;
    };
    let mut cfg = config();
    cfg.payload.kernel = PathBuf::from(guest_image(GuestKind::Pvh));
    cfg.payload.cmdline = Some("action=halt".into());
    vmm.handle(VmmRequest::Create(Box::new(cfg)), &mut el)
        .unwrap();
    for round in 0..30 {
        if let Err(e) = vmm.handle(VmmRequest::Boot, &mut el) {
            panic!("boot {round}: {e}");
        }
        vmm.handle(VmmRequest::Shutdown, &mut el).unwrap();
    }
}

/// A hypervisor that only answers what `check_balloon` asks.
struct Pinning(bool);

impl hypervisor::Hypervisor for Pinning {
    fn kind(&self) -> hypervisor::Kind {
        if self.0 {
            hypervisor::Kind::Mshv
        } else {
            hypervisor::Kind::Kvm
        }
    }
    fn create_vm(&self) -> hypervisor::Result<Arc<dyn hypervisor::Vm>> {
        Err(hypervisor::Error::Unavailable("test".into()))
    }
    fn supported_cpuid(&self) -> hypervisor::Result<Vec<hypervisor::CpuidEntry>> {
        Ok(Vec::new())
    }
    fn max_vcpus(&self) -> u32 {
        1
    }
    fn pins_guest_memory(&self) -> bool {
        self.0
    }
}

#[test]
fn a_balloon_is_refused_where_guest_memory_is_pinned() {
    let mut cfg = VmConfig::new("/kernel".into());
    assert!(
        check_balloon(&cfg, &Pinning(true)).is_ok(),
        "no balloon, no refusal"
    );
    cfg.balloon = Some(api::BalloonConfig {
        size: 0,
        deflate_on_oom: false,
        statistics_polling_interval_s: 0,
    });
    assert!(check_balloon(&cfg, &Pinning(false)).is_ok());
    let e = check_balloon(&cfg, &Pinning(true)).unwrap_err();
    assert!(
        e.to_string().contains("balloon") && e.to_string().contains("mshv"),
        "{e}"
    );
}
