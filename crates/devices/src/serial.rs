//! The 16550A UART on COM1 (vm-superio), with its interrupt on an eventfd.
//!
//! Output goes to any `Write` (the terminal, a file, or nowhere). Input is
//! queued by [`SerialPort::enqueue_input`] from the VMM's stdin thread; bytes
//! that don't fit the UART's FIFO are kept in a bounded backlog and fed in
//! as the guest drains it.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt line by signalling an irqfd.
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Most input bytes held back while the guest isn't reading.
const INPUT_BACKLOG_MAX: usize = 64 * 1024;

/// COM1 as a bus device.
pub struct SerialPort {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    backlog: VecDeque<u8>,
}

impl SerialPort {
    /// A UART whose interrupt signals `irq` and whose output goes to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(irq), out),
            backlog: VecDeque::new(),
        }
    }

    /// Queues input for the guest. Returns false if the backlog is full and
    /// bytes were dropped.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> bool {
        let room = INPUT_BACKLOG_MAX.saturating_sub(self.backlog.len());
        self.backlog.extend(&bytes[..bytes.len().min(room)]);
        self.feed();
        bytes.len() <= room
    }

    fn feed(&mut self) {
        while !self.backlog.is_empty() {
            let room = self.uart.fifo_capacity();
            if room == 0 {
                break;
            }
            let chunk: Vec<u8> = self.backlog.drain(..room.min(self.backlog.len())).collect();
            if self.uart.enqueue_raw_bytes(&chunk).is_err() {
                break;
            }
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
        if !self.backlog.is_empty() {
            self.feed();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::debug!("serial: write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives() {
        let sink = Sink::default();
        let irq = EventFd::new(0).unwrap();
        let mut port = SerialPort::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            port.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi");
        // Enable the received-data interrupt, then queue more than the FIFO holds.
        port.write(1, &[0x01]);
        let input: Vec<u8> = (0..200u8).collect();
        assert!(port.enqueue_input(&input));
        assert!(irq.read().unwrap() >= 1);
        let mut got = Vec::new();
        for _ in 0..200 {
            let mut lsr = [0];
            port.read(5, &mut lsr);
            assert_ne!(lsr[0] & 1, 0, "data ready after {} bytes", got.len());
            let mut b = [0];
            port.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }
}
