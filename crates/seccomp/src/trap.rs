//! What a forbidden syscall does in `kill` mode: the filter raises SIGSYS,
//! whose handler writes which thread kind made which syscall to stderr,
//! then lets SIGSYS end the process (exit status 128 + 31 in a shell).
//!
//! The handler only calls what every allow list permits (write,
//! prctl(PR_GET_NAME), rt_sigaction, getpid, gettid, tgkill) and
//! allocates nothing.

use std::cell::Cell;
use std::sync::Once;

use crate::ThreadKind;

thread_local! {
    /// The kind of filter the current thread runs under (for the message).
    static KIND: Cell<&'static str> = const { Cell::new("inherited") };
}

pub(crate) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(kind.name()));
}

/// Installs the SIGSYS handler (once per process).
pub(crate) fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: an all-zero sigaction is valid; the fields set below
        // make it an SA_SIGINFO handler with an empty mask.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `act` is a valid handler description; the old one is
        // not needed.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
        if rc != 0 {
            log::error!(
                "seccomp: cannot install the SIGSYS handler: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Offset of `si_syscall` in a SIGSYS siginfo on 64-bit Linux: after
/// si_signo, si_errno, si_code (and padding) and si_call_addr.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose
    // si_syscall field sits at SI_SYSCALL_OFFSET.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let kind = KIND.with(|k| k.get());
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into
    // `name`; every filter allows it.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let mut buf = [0u8; 256];
    let mut len = 0;
    for part in [
        b"\npearvisor: seccomp: thread ".as_slice(),
        &name[..name_len],
        b" (",
        kind.as_bytes(),
        b" filter) made syscall ",
    ] {
        len += copy(&mut buf[len..], part);
    }
    len += decimal(&mut buf[len..], nr);
    len += copy(
        &mut buf[len..],
        b", which its filter forbids; stopping (--seccomp=log lets it through and logs it)\n",
    );
    // SAFETY: write, sigaction, getpid, gettid and tgkill are
    // async-signal-safe and allowed by every filter; `buf[..len]` is
    // initialized.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &dfl, std::ptr::null_mut());
        // Delivered (default action: terminate) when the handler returns.
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

fn copy(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

fn decimal(dst: &mut [u8], v: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut n = 0;
    let mut v = i64::from(v);
    let negative = v < 0;
    v = v.abs();
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        digits[n] = b'-';
        n += 1;
    }
    digits[..n].reverse();
    copy(dst, &digits[..n])
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_writes_numbers() {
        let mut b = [0u8; 16];
        let n = super::decimal(&mut b, 16);
        assert_eq!(&b[..n], b"16");
        let n = super::decimal(&mut b, -5);
        assert_eq!(&b[..n], b"-5");
        let n = super::decimal(&mut b, 0);
        assert_eq!(&b[..n], b"0");
    }
}
