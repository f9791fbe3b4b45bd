//! Platform devices: the ACPI power-management registers (sleep control,
//! sleep status, reset, and the Generic Event Device that presses the power
//! button) and the i8042 reset line.
//!
//! Guest requests are reported through a [`PlatformEvents`] callback; the
//! VMM turns them into power-off or reset of the machine.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// What the guest asked the platform for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformRequest {
    PowerOff,
    Reset,
}

/// Receives guest power requests.
pub trait PlatformEvents: Send + Sync {
    fn request(&self, req: PlatformRequest);
}

/// Register layout of [`AcpiPm`], relative to its base port.
pub const SLEEP_CONTROL: u64 = 0;
pub const SLEEP_STATUS: u64 = 1;
pub const RESET: u64 = 2;
pub const GED: u64 = 4;
/// Ports covered by [`AcpiPm`].
pub const ACPI_PM_LEN: u64 = 5;

const SLP_EN: u8 = 1 << 5;
const WAKE_STATUS: u8 = 1 << 7;
/// GED event bit: the power button was pressed.
pub const GED_POWER_BUTTON: u8 = 1;

/// Hardware-reduced ACPI registers.
pub struct AcpiPm {
    s5_type: u8,
    reset_value: u8,
    events: Arc<dyn PlatformEvents>,
    ged_pending: Arc<AtomicU8>,
}

impl AcpiPm {
    /// `s5_type` is the \_S5 SLP_TYP in the DSDT; `reset_value` the FADT's.
    pub fn new(s5_type: u8, reset_value: u8, events: Arc<dyn PlatformEvents>) -> Self {
        Self {
            s5_type,
            reset_value,
            events,
            ged_pending: Arc::new(AtomicU8::new(0)),
        }
    }

    /// A handle that presses the power button: sets the GED bit and pulses
    /// the GED interrupt line.
    pub fn power_button(&self, irq: EventFd) -> PowerButton {
        PowerButton {
            pending: self.ged_pending.clone(),
            irq,
        }
    }
}

/// Presses the guest's ACPI power button.
pub struct PowerButton {
    pending: Arc<AtomicU8>,
    irq: EventFd,
}

impl PowerButton {
    pub fn press(&self) -> std::io::Result<()> {
        self.pending.fetch_or(GED_POWER_BUTTON, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match offset {
            SLEEP_STATUS => *first = WAKE_STATUS,
            GED => *first = self.ged_pending.swap(0, Ordering::SeqCst),
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        log::debug!("acpi pm: write {v:#x} at offset {offset}");
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 => {
                let slp_typ = (v >> 2) & 0x7;
                if slp_typ == self.s5_type {
                    self.events.request(PlatformRequest::PowerOff);
                } else {
                    log::info!("guest asked for sleep state type {slp_typ}; not supported");
                }
            }
            RESET if v == self.reset_value => self.events.request(PlatformRequest::Reset),
            _ => {}
        }
    }
}

/// The i8042 controller's command port (0x64), only for its reset command,
/// which Linux uses when the ACPI reset fails.
pub struct I8042Reset {
    events: Arc<dyn PlatformEvents>,
}

impl I8042Reset {
    pub fn new(events: Arc<dyn PlatformEvents>) -> Self {
        Self { events }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&0xfe) {
            self.events.request(PlatformRequest::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<PlatformRequest>>);
    impl PlatformEvents for Recorder {
        fn request(&self, req: PlatformRequest) {
            self.0.lock().unwrap().push(req);
        }
    }

    #[test]
    fn sleep_reset_and_power_button() {
        let rec = Arc::new(Recorder::default());
        let mut pm = AcpiPm::new(5, 1, rec.clone());
        pm.write(SLEEP_CONTROL, &[5 << 2]); // SLP_EN missing: nothing
        pm.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported
        pm.write(SLEEP_CONTROL, &[(5 << 2) | SLP_EN]);
        pm.write(RESET, &[2]);
        pm.write(RESET, &[1]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![PlatformRequest::PowerOff, PlatformRequest::Reset]
        );
        let irq = EventFd::new(0).unwrap();
        let button = pm.power_button(irq.try_clone().unwrap());
        button.press().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        pm.read(GED, &mut b);
        assert_eq!(b[0], GED_POWER_BUTTON);
        pm.read(GED, &mut b);
        assert_eq!(b[0], 0, "reading the GED register acknowledges the event");
        let mut kbd = I8042Reset::new(rec.clone());
        kbd.write(0, &[0xfe]);
        assert_eq!(rec.0.lock().unwrap().len(), 3);
    }
}
