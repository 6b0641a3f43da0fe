//! Frames the device answers itself instead of passing them to the tap.

/// Something inside the VMM that answers some of the guest's frames (the MMDS): the device
/// offers it every frame the guest sends before the tap; a frame it takes does not reach the
/// tap. The frames it has for the guest are delivered before any frame from the tap.
pub trait LocalResponder: Send {
    /// Takes `frame` (an Ethernet frame, no vnet header) if it is for the responder.
    fn take(&mut self, frame: &[u8]) -> bool;
    /// The next frame for the guest (an Ethernet frame, checksums complete), if any.
    fn next_frame(&mut self) -> Option<Vec<u8>>;
    /// Whether frames for the guest are waiting.
    fn has_frames(&self) -> bool;
}
