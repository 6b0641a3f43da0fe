//! Tests of the command line parser.

use std::path::PathBuf;

use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn flags_build_the_config() {
    let Ok(Command::Run(o)) = parse(&args(
        "--kernel /k --cpus boot=2 --memory=256M --serial off --no-reboot --hypervisor kvm",
    )) else {
        panic!("expected run");
    };
    let cfg = o.config.as_ref().unwrap();
    assert_eq!(cfg.cpus.boot_vcpus, 2);
    assert_eq!(cfg.memory.size, 256 << 20);
    assert_eq!(cfg.serial.mode, SerialMode::Off);
    assert!(o.no_reboot);
    assert_eq!(o.hypervisor, Request::Kvm);
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
    for (a, want) in [
        ("--kernel /k --memory 12Q", "--memory"),
        ("--kernel /k --cpus two", "--cpus"),
        ("--kernel /k --serial pty", "--serial"),
        ("--kernel /k --hypervisor xen", "--hypervisor"),
        ("--kernel /k --frobnicate 1", "--frobnicate"),
        ("--kernel /k --bogus", "unknown option --bogus"),
        ("--kernel", "needs a value"),
        ("--kernel /k --feature-gates warp", "warp"),
    ] {
        let e = parse(&args(a)).unwrap_err();
        assert!(matches!(e, CliError::Usage(_)), "{a}: {e:?}");
        assert!(e.to_string().contains(want), "{a}: {e}");
    }
    let e = parse(&args("")).unwrap_err();
    assert!(e.to_string().contains("missing --kernel"));
    let e = parse(&args("--config-file a --config-file b")).unwrap_err();
    assert!(e.to_string().contains("more than once"), "{e}");
}

#[test]
fn config_file_problems_are_input_errors() {
    let e = parse(&args("--config-file /nonexistent/petrel.json")).unwrap_err();
    assert!(matches!(e, CliError::Input(_)), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/petrel.json"), "{e}");
}

#[test]
fn every_flag_is_listed_once_and_in_the_usage() {
    let text = usage();
    for (i, f) in FLAGS.iter().enumerate() {
        assert!(
            FLAGS[i + 1..].iter().all(|g| g.name != f.name),
            "{} listed twice",
            f.name
        );
        if f.stage != Stage::Command {
            assert!(f.usage.contains(f.name), "{}: usage {:?}", f.name, f.usage);
        }
        assert!(text.contains(f.name), "{} missing from the usage", f.name);
    }
}

#[test]
fn every_flag_parses() {
    let dir = std::env::temp_dir().join(format!("petrel-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm.json");
    std::fs::write(&file, r#"{"payload": {"kernel": "/from-file"}}"#).unwrap();
    let file = file.to_string_lossy().to_string();
    for f in FLAGS {
        let value = match f.name {
            "--cpus" => "2",
            "--memory" => "64M",
            "--serial" => "off",
            "--hypervisor" => "kvm",
            "--feature-gates" => "mshv",
            "--config-file" => file.as_str(),
            "--disk" => "path=/d.img",
            "--balloon" => "size=16M",
            "--net" => "tap=tap0",
            "--vsock" => "cid=3,socket=/v.sock",
            "--api-socket" => "/api.sock",
            "--log-level" => "debug",
            "--seccomp" => "log",
            "--restore" => "source_url=file:///snap",
            "--transport" => "pci",
            _ => "x",
        };
        let mut a = vec![f.name.to_string()];
        if f.takes == Takes::Value {
            a.push(value.to_string());
        }
        if f.name != "--kernel" && f.name != "--config-file" && f.name != "--restore" {
            a.extend(["--kernel".to_string(), "/k".to_string()]);
        }
        let r = parse(&a);
        assert!(r.is_ok(), "{a:?}: {:?}", r.err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn transport_flag_sets_the_platform_and_refuses_other_words() {
    let Ok(Command::Run(o)) = parse(&args("--kernel /k --transport pci")) else {
        panic!("--transport pci must parse");
    };
    let cfg = o.config.as_ref().unwrap();
    assert_eq!(cfg.platform.transport, api::Transport::Pci);
    let Err(e) = parse(&args("--kernel /k --transport virtio")) else {
        panic!("--transport virtio must be refused");
    };
    let e = e.to_string();
    assert!(
        e.contains("--transport") && e.contains("mmio or pci"),
        "{e}"
    );
}

#[test]
fn flags_override_the_config_file_in_any_order() {
    let dir = std::env::temp_dir().join(format!("petrel-cli-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm.json");
    std::fs::write(
        &file,
        r#"{"payload": {"kernel": "/from-file"}, "cpus": {"boot_vcpus": 4}}"#,
    )
    .unwrap();
    let f = file.to_string_lossy();
    for a in [
        format!("--cpus 2 --kernel /k --config-file {f}"),
        format!("--config-file {f} --kernel /k --cpus 2"),
    ] {
        let Ok(Command::Run(o)) = parse(&args(&a)) else {
            panic!("{a}: expected run");
        };
        let cfg = o.config.as_ref().unwrap();
        assert_eq!(cfg.cpus.boot_vcpus, 2, "{a}");
        assert_eq!(cfg.payload.kernel, PathBuf::from("/k"), "{a}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn vm_flags_need_a_vm_and_commands_win() {
    let e = parse(&args("--api-socket /s --memory 1G")).unwrap_err();
    assert!(e.to_string().contains("--memory describes a VM"), "{e}");
    let Ok(Command::Run(o)) = parse(&args("--api-socket /s --no-reboot")) else {
        panic!("expected run");
    };
    assert!(o.config.is_none() && o.no_reboot);
    assert!(matches!(
        parse(&args("--kernel a --kernel b --version")),
        Ok(Command::Version)
    ));
    assert!(matches!(
        parse(&args("--capabilities --feature-gates mshv")),
        Ok(Command::Capabilities { mshv_gate: true })
    ));
    let e = parse(&args("--kernel /k --no-reboot=yes")).unwrap_err();
    assert!(e.to_string().contains("takes no value"), "{e}");
    let Ok(Command::Run(o)) = parse(&args("--kernel /k --rng=src=/dev/urandom")) else {
        panic!("expected run");
    };
    assert!(o.config.unwrap().rng.is_some());
}

#[test]
fn cloud_hypervisor_launch_line_as_kata_gives_it() {
    use petrel_http::SocketSpec;
    let Ok(Command::Run(o)) = parse(&args(
        "--api-socket path=/run/clh.sock -vv --seccomp false --log-file /tmp/l -v",
    )) else {
        panic!("expected run");
    };
    assert_eq!(o.api_socket, Some(SocketSpec::Path("/run/clh.sock".into())));
    assert_eq!(
        o.log_level,
        Some(log::LevelFilter::Trace),
        "-vv -v is three"
    );
    assert_eq!(o.log_file, Some(PathBuf::from("/tmp/l")));
    assert_eq!(o.seccomp, crate::seccomp::SeccompMode::Off);
    assert!(o.config.is_none());
    let Ok(Command::Run(o)) = parse(&args("--api-socket fd=3 -v")) else {
        panic!("expected run");
    };
    assert_eq!(o.api_socket, Some(SocketSpec::Fd(3)));
    assert_eq!(o.log_level, Some(log::LevelFilter::Info));
    let e = parse(&args("--api-socket /s -x")).unwrap_err();
    assert!(e.to_string().contains("-x"), "{e}");
}

#[test]
fn restore_takes_cloud_hypervisors_form() {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let Ok(Command::Run(opts)) =
        parse(&args(&["--restore", "source_url=file:///snap,prefault=on"]))
    else {
        panic!("--restore alone is a VM source");
    };
    let r = opts.restore.as_ref().unwrap();
    assert_eq!(r.source_url, "file:///snap");
    assert!(r.prefault);
    assert!(!r.resume);
    assert!(opts.config.is_none());
    for (bad, words) in [
        (vec!["--restore", "prefault=on"], "source_url"),
        (
            vec!["--restore", "source_url=file:///s,prefault=maybe"],
            "prefault",
        ),
        (vec!["--restore", "source_url=file:///s,speed=9"], "speed=9"),
        (
            vec!["--restore", "source_url=file:///s", "--kernel", "/k"],
            "--kernel",
        ),
    ] {
        match parse(&args(&bad)) {
            Err(CliError::Usage(m)) => assert!(m.contains(words), "{bad:?}: {m}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}
