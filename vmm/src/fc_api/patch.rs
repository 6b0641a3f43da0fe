//! `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` after start: changes applied to
//! the running devices, and recorded both in Firecracker's view (`GET /vm/config`) and in
//! petrel's config (what a snapshot restores).
//!
//! Rate limiters follow Firecracker's update rules: a bucket left out stays as it is, a bucket
//! given replaces it (full), one of size or refill time 0 removes it.

use devices::rate_limiter::{BucketUpdate, TokenBucketConfig};

use super::types::{DrivePatch, NetIfacePatch, RateLimiter, TokenBucket};
use super::{FcApi, FcResult};
use crate::lifecycle::Vmm;

fn bucket_update(b: Option<&TokenBucket>) -> BucketUpdate {
    match b {
        None => BucketUpdate::Keep,
        Some(b) => BucketUpdate::Set(TokenBucketConfig {
            size: b.size,
            one_time_burst: b.one_time_burst.unwrap_or(0),
            refill_time_ms: b.refill_time,
        }),
    }
}

fn updates(p: Option<&RateLimiter>) -> (BucketUpdate, BucketUpdate) {
    (
        bucket_update(p.and_then(|r| r.bandwidth.as_ref())),
        bucket_update(p.and_then(|r| r.ops.as_ref())),
    )
}

/// Firecracker's view of a limiter after `patch`: buckets given replace (or, limiting
/// nothing, remove) the old ones.
fn merged(old: Option<&RateLimiter>, patch: Option<&RateLimiter>) -> Option<RateLimiter> {
    let Some(patch) = patch else {
        return old.cloned();
    };
    let limits = |b: &TokenBucket| b.size > 0 && b.refill_time > 0;
    let pick = |new: &Option<TokenBucket>, old: Option<&TokenBucket>| match new {
        Some(b) => Some(b.clone()).filter(limits),
        None => old.cloned(),
    };
    let out = RateLimiter {
        bandwidth: pick(&patch.bandwidth, old.and_then(|o| o.bandwidth.as_ref())),
        ops: pick(&patch.ops, old.and_then(|o| o.ops.as_ref())),
    };
    (out.bandwidth.is_some() || out.ops.is_some()).then_some(out)
}

impl FcApi {
    /// `PATCH /drives/{id}`: a new `path_on_host` replaces the disk's backing file (the guest
    /// gets a configuration-change interrupt with the new capacity), as Kata's driver does to
    /// swap its placeholder drives; a rate limiter changes the running device's limiter.
    pub(super) fn patch_drive(&mut self, vmm: &mut Vmm, p: DrivePatch) -> FcResult<()> {
        let id = p.drive_id.clone();
        let Some(drive) = self.config.drives.iter_mut().find(|d| d.drive_id == id) else {
            return Err(format!(
                "Drive config error: No drive with id {id} was found"
            ));
        };
        let Some(block) = vmm
            .machine()
            .and_then(|m| m.virtio.disks.iter().find(|(name, _)| *name == id))
            .map(|(_, b)| b.clone())
        else {
            return Err(format!("Drive update error: {id}: the drive has no device"));
        };
        let mut block = block.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = p
            .path_on_host
            .as_ref()
            .filter(|new| Some(*new) != drive.path_on_host.as_ref())
        {
            let sectors = block
                .replace_disk(std::path::Path::new(path))
                .map_err(|e| format!("Drive update error: {id}: {}", crate::error_chain(&e)))?;
            log::info!("drive {id}: backing file now {path} ({sectors} sectors)");
            drive.path_on_host = Some(path.clone());
        }
        if p.rate_limiter.is_some() {
            let (bw, ops) = updates(p.rate_limiter.as_ref());
            block
                .update_rate_limiter(bw, ops)
                .map_err(|e| format!("Drive update error: {id}: rate limiter: {e}"))?;
            drive.rate_limiter = merged(drive.rate_limiter.as_ref(), p.rate_limiter.as_ref());
            log::info!("drive {id}: rate limiter now {:?}", drive.rate_limiter);
        }
        drop(block);
        let (path, limiter) = (
            drive.path_on_host.clone(),
            drive.rate_limiter.as_ref().and_then(RateLimiter::to_petrel),
        );
        vmm.record_device_change(|cfg| {
            for d in cfg.disks.iter_mut().flatten() {
                if d.id.as_deref() == Some(id.as_str()) {
                    if let Some(path) = &path {
                        d.path = path.into();
                    }
                    d.rate_limiter_config = limiter;
                }
            }
        });
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}`: new RX and TX rate limiters on the running device,
    /// each direction on its own.
    pub(super) fn patch_net(&mut self, vmm: &mut Vmm, p: NetIfacePatch) -> FcResult<()> {
        let id = p.iface_id.clone();
        let Some(iface) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
        else {
            return Err(format!(
                "Network interface update error: No network interface with id {id} was found"
            ));
        };
        let mut next = iface.clone();
        next.rx_rate_limiter = merged(iface.rx_rate_limiter.as_ref(), p.rx_rate_limiter.as_ref());
        next.tx_rate_limiter = merged(iface.tx_rate_limiter.as_ref(), p.tx_rate_limiter.as_ref());
        let limiters = next
            .rate_limiters()
            .map_err(|e| format!("Network interface update error: {e}"))?;
        let Some((_, net)) = vmm
            .machine()
            .and_then(|m| m.virtio.nets.iter().find(|(name, _)| *name == id))
        else {
            return Err(format!(
                "Network interface update error: {id}: the interface has no device"
            ));
        };
        net.lock()
            .unwrap_or_else(|e| e.into_inner())
            .update_rate_limiters(
                updates(p.rx_rate_limiter.as_ref()),
                updates(p.tx_rate_limiter.as_ref()),
            )
            .map_err(|e| format!("Network interface update error: {id}: rate limiter: {e}"))?;
        *iface = next;
        log::info!("interface {id}: rate limiters now {limiters:?}");
        vmm.record_device_change(|cfg| {
            for n in cfg.net.iter_mut().flatten() {
                if n.id.as_deref() == Some(id.as_str()) {
                    n.rate_limiter_config = limiters.tx;
                    n.rx_rate_limiter_config = limiters.rx;
                }
            }
        });
        Ok(())
    }
}
