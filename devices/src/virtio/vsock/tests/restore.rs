//! After a restore the device tells the driver its connections are gone: one
//! `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue, with an interrupt.

use super::*;

#[test]
fn restored_sends_one_transport_reset_event() {
    let dir = TempDir::new().unwrap();
    let cfg = VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: dir.as_path().join("v.sock"),
        id: "vsock0".into(),
    };
    let mut dev = Vsock::new(cfg).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let rx = GuestQueue::new(0);
    let tx = GuestQueue::new(0x4000);
    let mut event = GuestQueue::new(0x8000);
    let buf = 0x30_0000u64;
    mem.write_obj(0xffff_ffffu32, GuestAddress(buf)).unwrap();
    let head = event.add(&mem, &[(buf, 4, VRING_DESC_F_WRITE)]);
    let int = activate(
        &mut dev,
        &mem,
        vec![rx.queue(), tx.queue(), event.queue()],
        FEATURES,
    );
    int.take();

    dev.restored();
    assert_eq!(event.take_used(&mem), [(head, 4)]);
    let id: u32 = mem.read_obj(GuestAddress(buf)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(int.count(), 1, "the driver is interrupted");

    // No buffer left: nothing is written, nothing fails.
    dev.restored();
    assert!(event.take_used(&mem).is_empty());
}
