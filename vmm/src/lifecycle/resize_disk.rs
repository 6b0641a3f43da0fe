//! `vm.resize-disk` on the [`Vmm`]: a running VM's raw disk grows and the guest is told
//! (a virtio configuration-change interrupt; Linux reads the new capacity at once).

use api::compat::VmResizeDisk;

use super::{OpError, Vmm};

impl Vmm {
    /// `vm.resize-disk`: grows disk `r.id` to `r.desired_size` bytes.
    pub fn resize_disk(&mut self, r: &VmResizeDisk) -> Result<(), OpError> {
        let Some(machine) = self.machine() else {
            return Err(OpError::state("vm.resize-disk", self.state));
        };
        let Some(block) = machine
            .virtio
            .disks
            .iter()
            .find(|(name, _)| *name == r.id)
            .map(|(_, b)| b.clone())
        else {
            return Err(OpError::invalid(format!(
                "vm.resize-disk: the VM has no disk with id '{}'",
                r.id
            )));
        };
        let sectors = block
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resize(r.desired_size)
            .map_err(|e| OpError::invalid(format!("vm.resize-disk: disk '{}': {e}", r.id)))?;
        log::info!(
            "disk {}: now {} bytes ({sectors} sectors)",
            r.id,
            r.desired_size
        );
        Ok(())
    }
}
