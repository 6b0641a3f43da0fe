//! Request parsing, validation and I/O.

use super::*;

#[test]
fn write_then_read_back() {
    let mut rig = Rig::new(|_| {});
    let int = rig.activate();
    let data = pattern(4096, 0x33);
    rig.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    rig.request(VIRTIO_BLK_T_OUT, 3, Some((4096, R)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.used(0), (1, 1));
    assert_eq!(&rig.disk()[3 * 512..3 * 512 + 4096], &data[..]);
    assert_eq!(int.0.lock().unwrap().len(), 1);

    rig.mem
        .write_slice(&[0u8; 4096], GuestAddress(DATA))
        .unwrap();
    rig.request(VIRTIO_BLK_T_IN, 3, Some((4096, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.used(1), (2, 4097));
    assert_eq!(rig.guest(DATA, 4096), data);
    let c = rig.blk.counters();
    assert_eq!((c.write_requests, c.write_bytes), (1, 4096));
    assert_eq!((c.read_requests, c.read_bytes), (1, 4096));
    assert_eq!(c.errors(), 0);
}

#[test]
fn merged_layout_and_scattered_buffers() {
    // Header and data in one readable descriptor; read data spread over two buffers with
    // the status byte at the end of the second.
    let mut rig = Rig::new(|_| {});
    rig.activate();
    let data = pattern(1024, 0x77);
    rig.header(DATA - 16, VIRTIO_BLK_T_OUT, 0);
    rig.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    rig.add_chain(&[(DATA - 16, 16 + 1024, R), (STATUS, 1, W)]);
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    assert_eq!(&rig.disk()[..1024], &data[..]);

    rig.header(HDR, VIRTIO_BLK_T_IN, 0);
    let b2 = STATUS - 512;
    rig.add_chain(&[(HDR, 16, R), (0x4_0000, 512, W), (b2, 513, W)]);
    rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.guest(0x4_0000, 512), data[..512]);
    assert_eq!(rig.guest(b2, 512), data[512..]);
}

#[test]
fn flush_and_get_id() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.blk.counters().flushes, 1);

    rig.mem
        .write_slice(&[0xff; 20], GuestAddress(DATA))
        .unwrap();
    rig.request(VIRTIO_BLK_T_GET_ID, 0, Some((20, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.used(1), (2, 21));
    let mut want = b"petrel-disk-0".to_vec();
    want.resize(20, 0);
    assert_eq!(rig.guest(DATA, 20), want);
}

#[test]
fn read_only_disk_rejects_writes() {
    let mut rig = Rig::new(|c| c.readonly = true);
    assert_ne!(rig.blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(rig.blk.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    rig.activate();
    let before = rig.disk();
    rig.mem
        .write_slice(&[0u8; 512], GuestAddress(DATA))
        .unwrap();
    rig.request(VIRTIO_BLK_T_OUT, 0, Some((512, R)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.disk(), before);
    assert_eq!(rig.blk.counters().invalid_requests, 1);
    // Reads still work.
    rig.request(VIRTIO_BLK_T_IN, 0, Some((512, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    assert_eq!(rig.guest(DATA, 512), before[..512]);
}

#[test]
fn out_of_range_and_misaligned() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    let cases = [
        (VIRTIO_BLK_T_IN, DISK_SECTORS, 512, W), // just past the end
        (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024, W), // straddles the end
        (VIRTIO_BLK_T_OUT, u64::MAX, 512, R),    // sector * 512 overflows
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, 1024, R), // offset + len overflows
        (VIRTIO_BLK_T_IN, 0, 100, W),            // not a multiple of 512
        (VIRTIO_BLK_T_IN, 0, 512, R),            // data in the wrong direction
        (VIRTIO_BLK_T_OUT, 0, 512, W),           // data in the wrong direction
    ];
    let before = rig.disk();
    for (i, &(t, sector, len, flags)) in cases.iter().enumerate() {
        rig.request(t, sector, Some((len, flags)));
        rig.blk.process_queue();
        assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8, "case {i}");
    }
    assert_eq!(rig.disk(), before);
    assert_eq!(rig.blk.counters().invalid_requests, cases.len() as u64);
    // The last sector itself is fine.
    rig.request(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, Some((512, W)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
}

#[test]
fn unsupported_type() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    rig.request(99, 0, None);
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn header_too_short() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    rig.header(HDR, VIRTIO_BLK_T_IN, 0);
    rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    rig.add_chain(&[(HDR, 8, R), (STATUS, 1, W)]);
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.used(0), (1, 1));
}

#[test]
fn status_descriptor_read_only() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    rig.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    rig.add_chain(&[(HDR, 16, R), (STATUS, 1, R)]);
    rig.blk.process_queue();
    assert_eq!(rig.status(), UNTOUCHED);
    assert_eq!(rig.used(0), (1, 0));
    assert_eq!(rig.blk.counters().invalid_requests, 1);
    assert_eq!(rig.blk.counters().flushes, 0);
}

#[test]
fn buffers_outside_guest_memory() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    let outside = MEM_SIZE as u64 + 0x1000;
    rig.header(HDR, VIRTIO_BLK_T_IN, 0);
    rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    // Data past the end of memory, and data straddling it.
    rig.add_chain(&[(HDR, 16, R), (outside, 512, W), (STATUS, 1, W)]);
    rig.add_chain(&[
        (HDR, 16, R),
        (MEM_SIZE as u64 - 256, 512, W),
        (STATUS, 1, W),
    ]);
    rig.blk.process_queue();
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(rig.used(1), (2, 1));
    // A status byte outside memory: nothing to write, used length 0.
    rig.add_chain(&[(HDR, 16, R), (u64::MAX, 1, W)]);
    rig.blk.process_queue();
    assert_eq!(rig.used(2), (3, 0));
    assert_eq!(rig.blk.counters().invalid_requests, 3);
}

#[test]
fn looping_chain() {
    let mut rig = Rig::new(|_| {});
    rig.activate();
    rig.header(HDR, VIRTIO_BLK_T_IN, 0);
    rig.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
    let n = VRING_DESC_F_NEXT as u16;
    let w = W as u16;
    rig.add_raw(&[
        RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, n | w, 0)),
    ]);
    // A next index beyond the queue.
    rig.add_raw(&[RawDescriptor::from(Descriptor::new(HDR, 16, n, 999))]);
    rig.blk.process_queue();
    assert_eq!(rig.used(0), (2, 0));
    assert_eq!(rig.used(1), (2, 0));
    assert_eq!(rig.status(), UNTOUCHED);
    assert_eq!(rig.blk.counters().invalid_requests, 2);
    // The device keeps serving.
    rig.request(VIRTIO_BLK_T_FLUSH, 0, None);
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
}

/// Writes one discard / write-zeroes segment at DATA.
fn segment(rig: &Rig, sector: u64, sectors: u32, flags: u32) {
    rig.mem.write_obj(sector, GuestAddress(DATA)).unwrap();
    rig.mem.write_obj(sectors, GuestAddress(DATA + 8)).unwrap();
    rig.mem.write_obj(flags, GuestAddress(DATA + 12)).unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let mut rig = Rig::new(|_| {});
    let f = rig.blk.features();
    if f & (1 << VIRTIO_BLK_F_DISCARD) == 0 || f & (1 << VIRTIO_BLK_F_WRITE_ZEROES) == 0 {
        test_skip::skip("the file system of the temp dir cannot punch holes or zero ranges");
        return;
    }
    let mut cfg = [0u8; CONFIG_SPACE_SIZE];
    rig.blk.read_config(0, &mut cfg);
    assert_eq!(&cfg[40..44], &MAX_DISCARD_SEG.to_le_bytes());
    rig.activate();
    let before = rig.disk();
    segment(&rig, 8, 8, 0);
    rig.request(VIRTIO_BLK_T_DISCARD, 0, Some((16, R)));
    rig.blk.process_queue();
    assert_eq!(rig.status(), 0);
    let after = rig.disk();
    assert_eq!(after.len(), before.len(), "size kept");
    assert!(after[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert_eq!(after[..8 * 512], before[..8 * 512]);
    assert_eq!(after[16 * 512..], before[16 * 512..]);

    for (sector, flags) in [(20, 0), (30, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)] {
        segment(&rig, sector, 2, flags);
        rig.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Some((16, R)));
        rig.blk.process_queue();
        assert_eq!(rig.status(), 0);
        let s = sector as usize * 512;
        let after = rig.disk();
        assert!(after[s..s + 1024].iter().all(|&b| b == 0));
        assert_eq!(after[s + 1024..s + 1536], before[s + 1024..s + 1536]);
    }
    assert_eq!(rig.blk.counters().discards, 3);

    // Bad segments: out of range, unknown flag, discard with UNMAP.
    for (sector, sectors, flags, t, code) in [
        (
            DISK_SECTORS - 1,
            2,
            0,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_S_IOERR,
        ),
        (0, 1, 0x80, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_S_UNSUPP),
        (0, 1, 1, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_S_UNSUPP),
    ] {
        segment(&rig, sector, sectors, flags);
        rig.request(t, 0, Some((16, R)));
        rig.blk.process_queue();
        assert_eq!(rig.status(), code as u8);
    }
    assert_eq!(rig.blk.counters().invalid_requests, 3);
}

#[test]
fn direct_io_aligned_and_not() {
    let mut rig = Rig::new(|c| c.direct = true);
    rig.activate();
    let data = pattern(8192, 0x11);
    // Page-aligned buffer, then one at an odd address (O_DIRECT refuses; buffered retry).
    for addr in [DATA, DATA + 0x1_0003] {
        rig.mem.write_slice(&data, GuestAddress(addr)).unwrap();
        rig.header(HDR, VIRTIO_BLK_T_OUT, 16);
        rig.add_chain(&[(HDR, 16, R), (addr, 8192, R), (STATUS, 1, W)]);
        rig.blk.process_queue();
        assert_eq!(rig.status(), 0);
        assert_eq!(&rig.disk()[16 * 512..16 * 512 + 8192], &data[..]);
        rig.mem
            .write_slice(&[0u8; 8192], GuestAddress(addr))
            .unwrap();
        rig.header(HDR, VIRTIO_BLK_T_IN, 16);
        rig.add_chain(&[(HDR, 16, R), (addr, 8192, W), (STATUS, 1, W)]);
        rig.blk.process_queue();
        assert_eq!(rig.status(), 0);
        assert_eq!(rig.guest(addr, 8192), data);
    }
}
