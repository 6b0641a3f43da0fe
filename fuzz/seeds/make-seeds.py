#!/usr/bin/env python3
"""Builds fuzz/seeds/<target>/ from real inputs in fuzz/seeds/sources/:
ch-remote-<op>: requests captured from Cloud Hypervisor's ch-remote (v53) on a Unix socket;
vm-create.json: the vm.create body ch-remote sent for `ch-remote create`; snapshot.json and
state.json: a petrel snapshot of the PVH test guest (64 MiB, 1 vCPU, rng).
Run from anywhere: python3 fuzz/seeds/make-seeds.py"""
import json, os, struct, glob

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "sources")

def out(target, name, data):
    d = os.path.join(here, target)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)

def read(name):
    return open(os.path.join(src, name), "rb").read()

def request(method, path, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body

captured = {os.path.basename(p)[len("ch-remote-"):]: open(p, "rb").read()
            for p in glob.glob(os.path.join(src, "ch-remote-*"))}
vm_create = read("vm-create.json").strip()
captured["vm.create"] = request("PUT", "/api/v1/vm.create", vm_create)
captured["vmm.ping"] = request("GET", "/api/v1/vmm.ping")
captured["vm.info"] = request("GET", "/api/v1/vm.info")
captured["vm.boot"] = request("PUT", "/api/v1/vm.boot")

# http_request: 5 bytes of Arbitrary fields (small_limits, head_request, eof, status u16),
# then the raw bytes.
for op, raw in captured.items():
    out("http_request", op, b"\x00\x00\x00\xc8\x00" + raw)
out("http_request", "pipelined", b"\x00\x00\x00\xc8\x00" + captured["vm.boot"] + captured["vm.info"])

# api_request: flags (bit 0 dialect, bits 1.. method: 0 GET, 1 PUT), 0xf0 = path follows.
for op, raw in captured.items():
    head, _, body = raw.partition(b"\r\n\r\n")
    method, path = head.split(b" ")[:2]
    flags = 0 if method == b"GET" else 2
    out("api_request", op, bytes([flags, 0xF0]) + path + b"\n" + body)
fc = {
    "boot-source": {"kernel_image_path": "/etc/hostname", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"},
    "drives": [{"drive_id": "rootfs", "path_on_host": "/dev/null", "is_root_device": True, "is_read_only": False,
                "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}],
    "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": False, "track_dirty_pages": False},
    "network-interfaces": [{"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0"}],
    "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"},
    "entropy": {},
    "balloon": {"amount_mib": 16, "deflate_on_oom": True, "stats_polling_interval_s": 1},
}
out("api_request", "fc-config", b"\x01\x00" + json.dumps(fc).encode())
fc_min = {"boot-source": {"kernel_image_path": "/etc/hostname"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
out("api_request", "fc-config-min", b"\x01\x00" + json.dumps(fc_min).encode())

# snapshot_stream: mode 3 (a snapshot, CRC fixed up), mode 1 (as written), mode 0 (migration).
header = read("snapshot.json")
state = read("state.json")
def l16(b):
    return struct.pack("<H", len(b)) + b
out("snapshot_stream", "snapshot-fixed", b"\x03" + l16(header) + l16(state) + b"\x00" * 64)
out("snapshot_stream", "snapshot", b"\x01" + l16(header) + l16(state))
st = json.loads(state)
cfg = json.dumps(st["config"], separators=(",", ":")).encode()
stream = b"PETRELMG" + struct.pack("<I", 1)
stream += b"\x01" + struct.pack("<I", len(cfg)) + cfg
stream += b"\x02" + struct.pack("<QI", 0x100000, 4096) + b"\x90" * 4096
stream += b"\x03" + struct.pack("<I", len(state)) + state
stream += b"\x04"
out("snapshot_stream", "migration", b"\x00" + stream)
