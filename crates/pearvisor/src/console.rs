//! The terminal side of the serial console: raw mode while the guest owns
//! the terminal (restored on exit), and a thread feeding stdin to the guest.
//! Ctrl-A x quits, as in QEMU.

use std::io::Read;
use std::sync::Mutex;

use pv_vmm::vm::ConsoleInput;

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts the terminal back as it was (idempotent).
pub fn restore_terminal() {
    if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // SAFETY: tcsetattr reads a termios we saved from the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Restores the terminal when dropped.
pub struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn set_raw() {
    // SAFETY: isatty only inspects the fd.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return;
    }
    // SAFETY: zeroed termios is a valid value for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios; stdin is a terminal.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return;
    }
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
    let mut raw = t;
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so the host's own messages stay readable.
    raw.c_oflag |= libc::OPOST | libc::ONLCR;
    // SAFETY: `raw` is a valid termios for stdin.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
}

/// Raw mode and a stdin thread that sends what is typed to the guest.
pub fn attach_stdin(input: ConsoleInput) -> TerminalGuard {
    set_raw();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            pv_seccomp::apply_or_abort(pv_seccomp::ThreadKind::Stdin);
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            let mut escape = false;
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut out = Vec::with_capacity(n);
                for &b in &buf[..n] {
                    if escape {
                        escape = false;
                        match b {
                            b'x' | b'X' => {
                                restore_terminal();
                                eprintln!("\r\npearvisor: terminated by Ctrl-A x");
                                std::process::exit(0);
                            }
                            0x01 => out.push(0x01),
                            _ => out.push(b),
                        }
                    } else if b == 0x01 {
                        escape = true;
                    } else {
                        out.push(b);
                    }
                }
                input.send(&out);
            }
        });
    TerminalGuard
}
