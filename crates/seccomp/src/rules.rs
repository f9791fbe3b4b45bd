//! The allow list of each thread kind.
//!
//! Lists name syscalls, not paths: a list that allows `openat` allows any
//! file. Arguments are checked where that is what makes a list narrow:
//! ioctls by their type (KVM's 0xAE for vCPUs), `clone` by its flags
//! (threads only), `prctl` by its option, `tgkill` by the process id.
//! The lists were taken from what each thread calls (strace of the test
//! suite and of guests doing I/O, 2D and 3D graphics), plus the C
//! library's and the Rust runtime's needs when a thread starts, stops,
//! allocates, logs or panics.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::ThreadKind;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What every thread needs: memory, locks, signals, time, its own exit,
/// logging to stderr, and starting threads (tokio's pools, the renderer's
/// and the GL driver's threads, the C library's fallback from clone3).
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone3,
    libc::SYS_statx,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// Waiting on eventfds and sockets.
const EVENTS: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_dup,
    libc::SYS_fcntl,
];

/// A device worker's disk and entropy I/O.
const DISK: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
];

/// Serving sockets that are already listening.
const SERVER: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

/// A GPU driver in the process (virglrenderer with Mesa or NVIDIA's GL):
/// device files, its shader cache on disk, shared memory, sockets to the
/// render server, its own threads and the render server it reaps.
const GPU_DRIVER: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_getcwd,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_ioctl,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_socketpair,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_kcmp,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getppid,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_setscheduler,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_set_tid_address,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_utimensat,
    libc::SYS_fchmod,
    libc::SYS_membarrier,
    libc::SYS_get_mempolicy,
    libc::SYS_mbind,
    libc::SYS_mlock,
    libc::SYS_munlock,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_sync_file_range,
];

/// A native window's client libraries (X11 with shared memory, Wayland).
const WINDOW: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmdt,
    libc::SYS_shmctl,
];

/// KVM's ioctl type (`_IOC_TYPE`), bits 8..16 of the request number.
const KVM_IOCTL_TYPE: u64 = 0xae;
/// `_IOC_TYPE`'s field in an ioctl request number.
const IOCTL_TYPE_MASK: u64 = 0xff00;

/// clone creating a thread (not a process): CLONE_THREAD is set.
fn thread_clone() -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?])
}

/// One condition on argument `arg` being `value`.
fn arg_is(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        len,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// ioctls of KVM only (vCPU, VM and system ioctls).
fn kvm_ioctls() -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(IOCTL_TYPE_MASK),
        KVM_IOCTL_TYPE << 8,
    )?])
}

/// The syscalls `kind` may make (unconditionally or with argument checks).
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    rules(kind)
        .map(|r| r.into_keys().collect())
        .unwrap_or_default()
}

/// `kind`'s rules: syscall → conditions (empty: any arguments).
pub(crate) fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    let mut allow = |list: &[i64]| {
        for &nr in list {
            r.insert(nr, Vec::new());
        }
    };
    allow(BASE);
    match kind {
        ThreadKind::Vcpu => allow(EVENTS),
        ThreadKind::VirtioWorker => {
            allow(EVENTS);
            allow(DISK);
        }
        ThreadKind::Gpu2d => allow(EVENTS),
        ThreadKind::GpuRenderer => {
            allow(EVENTS);
            allow(GPU_DRIVER);
        }
        ThreadKind::Api | ThreadKind::DisplayWeb => {
            allow(EVENTS);
            allow(SERVER);
        }
        ThreadKind::DisplayWindow => {
            allow(EVENTS);
            allow(SERVER);
            allow(GPU_DRIVER);
            allow(WINDOW);
        }
        ThreadKind::Stdin => {}
    }
    // Threads only, never a new process.
    r.insert(libc::SYS_clone, vec![thread_clone()?]);
    // Naming threads (the Rust runtime does it for every new thread) and
    // reading the name (the SIGSYS handler's message).
    r.insert(
        libc::SYS_prctl,
        vec![
            arg_is(0, SeccompCmpArgLen::Dword, libc::PR_SET_NAME as u64)?,
            arg_is(0, SeccompCmpArgLen::Dword, libc::PR_GET_NAME as u64)?,
        ],
    );
    // Signals to this process's own threads only (vCPU kicks, abort).
    r.insert(
        libc::SYS_tgkill,
        vec![arg_is(
            0,
            SeccompCmpArgLen::Dword,
            u64::from(std::process::id()),
        )?],
    );
    match kind {
        // vCPUs, the 2D GPU worker and the API (pausing reads and restores
        // the guest clock) talk to KVM; the API and the viewer set sockets
        // non-blocking.
        ThreadKind::Vcpu | ThreadKind::Gpu2d => {
            r.insert(libc::SYS_ioctl, vec![kvm_ioctls()?]);
        }
        ThreadKind::Api => {
            r.insert(
                libc::SYS_ioctl,
                vec![
                    kvm_ioctls()?,
                    arg_is(1, SeccompCmpArgLen::Dword, libc::FIONBIO)?,
                    arg_is(1, SeccompCmpArgLen::Dword, libc::FIOCLEX)?,
                ],
            );
        }
        // The viewer reaches the guest only through the display store and
        // the input devices' queues: no KVM.
        ThreadKind::DisplayWeb => {
            r.insert(
                libc::SYS_ioctl,
                vec![
                    arg_is(1, SeccompCmpArgLen::Dword, libc::FIONBIO)?,
                    arg_is(1, SeccompCmpArgLen::Dword, libc::FIOCLEX)?,
                ],
            );
        }
        ThreadKind::Stdin => {
            r.insert(
                libc::SYS_ioctl,
                vec![
                    arg_is(1, SeccompCmpArgLen::Dword, libc::TCGETS)?,
                    arg_is(1, SeccompCmpArgLen::Dword, libc::TCSETS)?,
                ],
            );
        }
        // The GPU driver's ioctls go to its own device files (DRM,
        // NVIDIA): any request is allowed there.
        ThreadKind::VirtioWorker | ThreadKind::GpuRenderer | ThreadKind::DisplayWindow => {}
    }
    // Every thread may ask whether a descriptor is a terminal (TCGETS):
    // the logger does when a thread first logs, to choose colours.
    let tcgets = arg_is(1, SeccompCmpArgLen::Dword, libc::TCGETS)?;
    match r.get_mut(&libc::SYS_ioctl) {
        // Any ioctl already (the GPU driver's kinds).
        Some(rules) if rules.is_empty() => {}
        Some(rules) => rules.push(tcgets),
        None => {
            r.insert(libc::SYS_ioctl, vec![tcgets]);
        }
    }
    Ok(r)
}

/// The filters `kind` installs, in order: the refusals (syscalls that
/// fail with an error instead of stopping the process), then the allow
/// list, whose misses get `mismatch`. Where filters disagree the kernel
/// takes the strictest answer, so a refused syscall is also in the allow
/// list.
pub(crate) fn filters(
    kind: ThreadKind,
    mismatch: SeccompAction,
) -> Result<Vec<SeccompFilter>, BackendError> {
    let arch = || std::env::consts::ARCH.try_into();
    let refuse = |syscalls: &[i64], errno: i32| {
        SeccompFilter::new(
            syscalls.iter().map(|&nr| (nr, Vec::new())).collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch()?,
        )
    };
    let mut filters = vec![
        // clone3 passes its flags in memory, where a filter cannot see
        // them: it fails with ENOSYS, and the C library falls back to
        // clone, whose flags the allow lists check (threads only).
        refuse(&[libc::SYS_clone3], libc::ENOSYS)?,
    ];
    if !opens_files(kind) {
        // Threads that have no business opening files get EACCES rather
        // than a stop: the C library's allocator reads
        // /proc/sys/vm/overcommit_memory the first time a thread's heap
        // shrinks, and copes when it cannot.
        // The same for what a panic's backtrace asks (the executable's
        // path, the working directory): a worker that panics is reported as one, not
        // turned into a stop of the whole VMM.
        filters.push(refuse(REFUSED_FILE_ACCESS, libc::EACCES)?);
    }
    let mut allowed = rules(kind)?;
    for &nr in REFUSED_FILE_ACCESS {
        allowed.entry(nr).or_default();
    }
    filters.push(SeccompFilter::new(
        allowed,
        mismatch,
        SeccompAction::Allow,
        arch()?,
    )?);
    Ok(filters)
}

/// File access refused with EACCES to threads that open no files.
const REFUSED_FILE_ACCESS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
];

/// Whether `kind` opens files (a GPU driver's device files and caches).
fn opens_files(kind: ThreadKind) -> bool {
    matches!(kind, ThreadKind::GpuRenderer | ThreadKind::DisplayWindow)
}
