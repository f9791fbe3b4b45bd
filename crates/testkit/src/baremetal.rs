//! The bare-metal test guest: freestanding 32-bit C in `guests/baremetal/`
//! that drives PearVisor's devices directly (no Linux), built with the
//! host's own `gcc` and binutils (no cross toolchain, no libc, no Makefile).
//!
//! The guest enters through a Xen PVH note (32-bit protected mode, paging
//! off), reads `mode=NAME` from its command line and runs that mode; each
//! mode is a C file under `modes/` that registers itself with `PV_MODE`.
//! `mode=hostile` is the hostile-guest suite (docs/hostile-guest.md).
//!
//! ```no_run
//! let dir = std::env::temp_dir().join("baremetal");
//! let elf = pv_testkit::baremetal::build(&dir)?;
//! // pearvisor run --kernel <elf> --cmdline mode=hostile ...
//! # Ok::<(), pv_testkit::baremetal::BuildError>(())
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the guest's sources are.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/baremetal")
}

/// The file name of the built guest in the output directory.
pub const ELF_NAME: &str = "baremetal.elf";

/// How every C file is compiled: 32-bit, freestanding, no SSE/x87 (nothing
/// sets them up), warnings are errors.
const CFLAGS: &[&str] = &[
    "-m32",
    "-march=i686",
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-Wall",
    "-Wextra",
    "-Werror",
];

/// Why the guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "`{0}` was not found: the bare-metal test guest needs gcc and binutils \
         (apt-get install gcc binutils, or scripts/setup-host.sh)"
    )]
    MissingTool(&'static str),
    #[error("cannot run `{tool}`")]
    Run {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed:\n{output}")]
    Failed { command: String, output: String },
    #[error("cannot read the guest sources in {}", dir.display())]
    Sources {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("two guest sources are both called {0} (object files would collide)")]
    DuplicateName(String),
    #[error("cannot write to {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Builds the guest into `out_dir` (created if needed; objects go to
/// `out_dir/obj`) and returns the path of the ELF64 file PearVisor boots.
/// Every call rebuilds (a second or two). Callers building concurrently
/// need distinct directories.
pub fn build(out_dir: &Path) -> Result<PathBuf, BuildError> {
    for tool in ["gcc", "ld", "objcopy"] {
        check_tool(tool)?;
    }
    let src = source_dir();
    let obj = out_dir.join("obj");
    let _ = fs::remove_dir_all(&obj);
    fs::create_dir_all(&obj).map_err(|source| BuildError::Output {
        path: obj.clone(),
        source,
    })?;
    let mut sources = Vec::new();
    for sub in ["lib", "modes"] {
        sources.extend(c_files(&src.join(sub))?);
    }
    let mut names: Vec<_> = sources.iter().filter_map(|p| p.file_stem()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(BuildError::DuplicateName(
            w[0].to_string_lossy().into_owned(),
        ));
    }

    // One gcc for every C file; objects land in obj/ by their file names.
    let mut cc = Command::new("gcc");
    cc.current_dir(&obj)
        .args(CFLAGS)
        .arg("-I")
        .arg(src.join("include"))
        .arg("-c")
        .args(&sources);
    run("gcc", &mut cc)?;
    let start = obj.join("start.S.o");
    run(
        "gcc",
        Command::new("gcc")
            .args(["-m32", "-c"])
            .arg(src.join("start.S"))
            .arg("-o")
            .arg(&start),
    )?;
    let mut objects: Vec<PathBuf> = sources
        .iter()
        .filter_map(|p| p.file_stem())
        .map(|s| obj.join(format!("{}.o", s.to_string_lossy())))
        .collect();
    // _start first, at the load address.
    objects.insert(0, start);
    let elf32 = obj.join("baremetal32.elf");
    run(
        "ld",
        Command::new("ld")
            .args([
                "-m",
                "elf_i386",
                "-static",
                "-nostdlib",
                "-z",
                "noexecstack",
                "--no-warn-rwx-segments",
                "-T",
            ])
            .arg(src.join("link.ld"))
            .arg("-o")
            .arg(&elf32)
            .args(&objects),
    )?;
    // PearVisor loads ELF64 only; the PVH entry stays 32-bit code.
    let tmp = out_dir.join(format!("{ELF_NAME}.tmp"));
    run(
        "objcopy",
        Command::new("objcopy")
            .args(["-O", "elf64-x86-64"])
            .arg(&elf32)
            .arg(&tmp),
    )?;
    let elf = out_dir.join(ELF_NAME);
    fs::rename(&tmp, &elf).map_err(|source| BuildError::Output {
        path: elf.clone(),
        source,
    })?;
    Ok(elf)
}

/// The `.c` files directly in `dir`, sorted.
/// What the tests that boot this guest share: a fresh scratch directory
/// per test process, `<tmp>/pv-<name>-<pid>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pv-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test's scratch directory");
    dir
}

/// Fails the calling test with what it needs when this host has no
/// /dev/kvm (any KVM will do, kvm_pvm included: the guest is tiny).
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots the bare-metal guest on /dev/kvm (any KVM, kvm_pvm included); this host has none"
    );
}

fn c_files(dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let err = |source| BuildError::Sources {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.extension().is_some_and(|e| e == "c") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn check_tool(tool: &'static str) -> Result<(), BuildError> {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BuildError::MissingTool(tool)),
        Err(source) => Err(BuildError::Run { tool, source }),
    }
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<(), BuildError> {
    let out = cmd.output().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BuildError::MissingTool(tool),
        _ => BuildError::Run { tool, source },
    })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(BuildError::Failed {
        command: format!("{cmd:?}"),
        output,
    })
}
