//! virtio-gpu's request decoder: any bytes a guest puts in a control or
//! cursor queue request. It must answer every input with a command or a
//! decode error (never a panic), and a decoded command's error response
//! type must be one the spec defines.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_gpu::virtio_gpu::protocol::GpuCommand;

fuzz_target!(|data: &[u8]| {
    match GpuCommand::decode(data) {
        Ok((_hdr, cmd)) => {
            let _ = cmd.name();
        }
        Err(e) => {
            let t = e.response_type();
            assert!((0x1200..=0x1205).contains(&t), "response type {t:#x}");
        }
    }
});
