//! The same guest checks on every hypervisor backend: KVM where /dev/kvm exists, MSHV where
//! /dev/mshv exists (with the `mshv` gate on). A backend whose device node is missing is
//! skipped, saying so; on these machines that is MSHV.

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

/// Runs `check` on every backend whose device exists; says why the others are skipped.
fn on_each_backend(test: &str, check: impl Fn(&Backend)) {
    let mut ran = 0;
    for b in &BACKENDS {
        if !Path::new(b.device).exists() {
            eprintln!(
                "{test}: skipped on {}: {} does not exist on this host",
                b.name, b.device
            );
            continue;
        }
        check(b);
        ran += 1;
    }
    if ran == 0 {
        eprintln!("{test}: skipped: no hypervisor device on this host");
    }
}

fn run(b: &Backend, kind: GuestKind, extra: &[&str]) -> Run {
    let kernel = guest_image(kind);
    let mut args = vec!["--kernel", kernel.as_str()];
    args.extend_from_slice(b.flags);
    args.extend_from_slice(extra);
    run_petrel(&args, TIMEOUT)
}

#[test]
fn guest_boot_checks_on_each_backend() {
    on_each_backend("guest_boot_checks_on_each_backend", |b| {
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
    });
}

#[test]
fn virtio_blk_on_each_backend() {
    on_each_backend("virtio_blk_on_each_backend", |b| {
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
    });
}
