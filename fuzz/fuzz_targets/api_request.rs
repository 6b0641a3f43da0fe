//! Fuzzes what a client's JSON reaches behind the HTTP parser, in both API dialects:
//! - Cloud Hypervisor's: the route table (`api::request::ROUTES`, method checks, the 404/405
//!   answers) and every route's body through `api::compat` into the typed request the VMM is
//!   handed (`vmm::api_server::route` + `request`, exactly what `handle` runs first);
//! - Firecracker's: a whole configuration (`--config-file`, the same sections and checks as
//!   its `PUT` routes: machine-config, boot-source, drives, network-interfaces, vsock,
//!   entropy, balloon) applied to a fresh `FcApi`, then turned into petrel's `VmConfig` as
//!   `InstanceStart` does. The logger and metrics sections are dropped (they open host files).
//!
//! Input: byte 0 selects the dialect (bit 0) and the method (bits 1..4), byte 1 the route
//! (or, ≥ 0xf0, a path from the input: up to the first newline of the rest), the rest is the
//! body. Seeds in `fuzz/seeds/api_request/` are real bodies (ch-remote's, Kata's, the
//! Firecracker tests').
//!
//! Invariants checked:
//! - no panic;
//! - a routed request names a route of `ROUTES` with its method; refused ones get 404 or 405;
//! - every refused body is an `Invalid` error (400), never an internal one;
//! - a config accepted by `vm.create` passes `validate()` and survives petrel's own JSON
//!   (what `vm.info` answers) read back through the Cloud Hypervisor reader unchanged;
//! - a Firecracker config that converts gives a `VmConfig` that survives the same round trip.
#![no_main]

use api::compat;
use api::request::{VmmRequest, ROUTES};
use libfuzzer_sys::fuzz_target;
use petrel_http::{Method, Request};
use vmm::lifecycle::ErrorKind;

const METHODS: [Method; 7] = [
    Method::Get,
    Method::Put,
    Method::Post,
    Method::Patch,
    Method::Delete,
    Method::Head,
    Method::Options,
];

fn round_trip(cfg: &api::VmConfig, what: &str) {
    let json = serde_json::to_vec(cfg).expect("a VmConfig serializes");
    let back = compat::vm_config_from_ch(&json)
        .unwrap_or_else(|e| panic!("{what}: petrel's own JSON of the config is refused: {e}\n{}", String::from_utf8_lossy(&json)));
    assert_eq!(&back, cfg, "{what}: the config changed through its own JSON");
}

fn cloud_hypervisor(method: Method, path: String, body: &[u8]) {
    let req = Request::new(method, path.clone(), body.to_vec());
    let endpoint = match vmm::api_server::route(&req) {
        Ok(e) => e,
        Err(r) => {
            assert!(matches!(r.status, 404 | 405), "{path}: {}", r.status);
            return;
        }
    };
    let route = ROUTES
        .iter()
        .find(|r| r.endpoint == endpoint)
        .expect("a routed endpoint is in ROUTES");
    assert_eq!(route.path, req.path());
    assert_eq!(route.verb.as_str(), method.as_str());
    match vmm::api_server::request(endpoint, req) {
        Ok(VmmRequest::Create(cfg)) => {
            cfg.validate().expect("an accepted vm.create validates");
            round_trip(&cfg, "vm.create");
        }
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{endpoint:?}: {e}"),
    }
}

fn firecracker(body: &[u8]) {
    let Ok(mut cfg) = serde_json::from_slice::<vmm::fc_api::types::FcConfig>(body) else {
        return;
    };
    cfg.logger = None;
    cfg.metrics = None;
    let mut fc = vmm::fc_api::FcApi::new("fuzz");
    if fc.apply_config(cfg).is_err() {
        return;
    }
    if let Ok(vm) = fc.config().to_vm_config() {
        round_trip(&vm, "firecracker config");
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, route, rest @ ..] = data else {
        return;
    };
    if flags & 1 == 1 {
        firecracker(rest);
        return;
    }
    let method = METHODS[usize::from(flags >> 1) % METHODS.len()];
    let (path, body) = if *route >= 0xf0 {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let path = String::from_utf8_lossy(&rest[..end]).into_owned();
        (path, rest.get(end + 1..).unwrap_or_default())
    } else {
        let r = &ROUTES[usize::from(*route) % ROUTES.len()];
        (r.path.to_string(), rest)
    };
    cloud_hypervisor(method, path, body);
});
