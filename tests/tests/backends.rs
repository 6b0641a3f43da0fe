//! The same guest checks on every hypervisor backend: KVM where /dev/kvm exists, MSHV where
//! /dev/mshv exists (with the `mshv` gate on). A backend whose device node is missing is
//! a visible skip of that backend's tests; on these machines that is MSHV.

use std::path::Path;
use std::time::Duration;

use petrel_tests::{guest_image, parse_first_boot, run_petrel, scratch_path, GuestKind, Run};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A backend to test: its name, device node, and the flags that select it explicitly.
struct Backend {
    name: &'static str,
    device: &'static str,
    flags: &'static [&'static str],
}

const BACKENDS: [Backend; 2] = [
    Backend {
        name: "kvm",
        device: "/dev/kvm",
        flags: &["--hypervisor", "kvm"],
    },
    Backend {
        name: "mshv",
        device: "/dev/mshv",
        flags: &["--hypervisor", "mshv", "--feature-gates", "mshv"],
    },
];

/// Runs `check` on backend `name`, or records a visible skip when its device is missing.
fn on_backend(name: &str, check: impl Fn(&Backend)) {
    let Some(b) = BACKENDS.iter().find(|b| b.name == name) else {
        panic!("no backend {name}");
    };
    if !Path::new(b.device).exists() {
        test_skip::skip(format!("{} does not exist on this host", b.device));
        return;
    }
    check(b);
}

/// One test per backend for each check: a missing device is a skip of that test alone.
macro_rules! on_each_backend {
    ($check:ident: $kvm:ident, $mshv:ident) => {
        #[test]
        fn $kvm() {
            on_backend("kvm", $check);
        }
        #[test]
        fn $mshv() {
            on_backend("mshv", $check);
        }
    };
}

on_each_backend!(guest_boot_checks: guest_boot_checks_kvm, guest_boot_checks_mshv);
on_each_backend!(virtio_blk: virtio_blk_kvm, virtio_blk_mshv);

fn run(b: &Backend, kind: GuestKind, extra: &[&str]) -> Run {
    let kernel = guest_image(kind);
    let mut args = vec!["--kernel", kernel.as_str()];
    args.extend_from_slice(b.flags);
    args.extend_from_slice(extra);
    run_petrel(&args, TIMEOUT)
}

fn guest_boot_checks(b: &Backend) {
    {
        for kind in [GuestKind::Pvh, GuestKind::BzImage] {
            let r = run(
                b,
                kind,
                &[
                    "--cpus",
                    "2",
                    "--memory",
                    "128M",
                    "--cmdline",
                    "action=poweroff backend-check",
                ],
            );
            let boot = parse_first_boot(&r.stdout);
            let what = format!("{} {kind:?}", b.name);
            assert!(r.success(), "{what}: poweroff must exit 0\n{}", r.dump());
            assert!(
                r.stderr.contains(&format!("hypervisor: {}", b.name)),
                "{what}: the backend in use is logged\n{}",
                r.dump()
            );
            assert_eq!(
                boot.cmdline.as_deref(),
                Some("action=poweroff backend-check"),
                "{what}\n{}",
                r.dump()
            );
            for table in ["FACP", "APIC", "DSDT"] {
                assert!(
                    boot.acpi_ok.iter().any(|t| t == table),
                    "{what}: {table}\n{}",
                    r.dump()
                );
            }
            assert_eq!(boot.madt_cpus, Some(2), "{what}\n{}", r.dump());
            assert!(r.stdout.contains("CPUS: up=2 of 2"), "{what}\n{}", r.dump());
        }
    }
}

fn virtio_blk(b: &Backend) {
    {
        let disk = scratch_path(&format!("backend-{}.img", b.name));
        std::fs::write(&disk, vec![0u8; 1 << 20]).expect("creating the disk image");
        let arg = format!("path={},id=petrel-disk-1", disk.display());
        let r = run(
            b,
            GuestKind::Pvh,
            &[
                "--memory",
                "64M",
                "--virtio-mmio-cmdline",
                "--disk",
                &arg,
                "--cmdline",
                "action=virtio-blk",
            ],
        );
        let data = std::fs::read(&disk).unwrap_or_default();
        let _ = std::fs::remove_file(&disk);
        assert!(r.success(), "{}: exit 0\n{}", b.name, r.dump());
        assert!(
            r.stdout.contains("VIRTIO: blk write-read ok"),
            "{}\n{}",
            b.name,
            r.dump()
        );
        assert!(
            r.stdout.contains("VIRTIO: blk id=petrel-disk-1"),
            "{}\n{}",
            b.name,
            r.dump()
        );
        assert!(
            data.get(512..523) == Some(b"PETREL-BLK-".as_slice()),
            "{}: sector 1 on the host holds the guest's pattern",
            b.name
        );
    }
}
