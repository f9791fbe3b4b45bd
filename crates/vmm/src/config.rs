//! The VM's configuration: one serde type for the command line, a JSON file
//! and (later) the REST API, validated apart from construction.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pv_devices::virtio::block::BlockParams;
pub use pv_gpu::virtio_gpu::GpuParams;

use crate::memory;

/// Errors in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "invalid size '{0}': use a number with an optional K, M, G or T suffix, like 512M or 2G"
    )]
    Size(String),
    #[error("--cpus must be between 1 and {max}, not {got}")]
    Cpus { got: u32, max: u32 },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("{what} '{path}' is not readable")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --serial '{0}': use tty, file=PATH or none")]
    Serial(String),
    #[error("invalid --display '{0}': use headless, web, web=ADDR:PORT or window")]
    Display(String),
    #[error("--gpu: {0}")]
    Gpu(String),

    #[error("disk {index}: {message}")]
    Disk { index: usize, message: String },
    #[error(transparent)]
    Kernel(#[from] crate::arch::x86_64::boot::BootError),
    #[error("the kernel command line is longer than {max} bytes")]
    CmdlineTooLong { max: usize },
}

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 254;

/// Parses sizes like `512M`, `2G`, `1073741824`, `64KiB`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let err = || ConfigError::Size(s.to_string());
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let shift = match suffix
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SerialMode {
    /// The VMM's own stdin/stdout.
    #[default]
    Tty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "tty" | "stdio" => Ok(SerialMode::Tty),
            "none" | "off" => Ok(SerialMode::None),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(SerialMode::File(PathBuf::from(p))),
                _ => Err(ConfigError::Serial(s.to_string())),
            },
        }
    }
}

/// Where the guest's screens are shown (with `--gpu`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DisplayMode {
    /// Kept in memory for screenshots only.
    #[default]
    Headless,
    /// A web viewer on this address (keyboard and mouse go to the guest).
    Web(std::net::SocketAddr),
    /// A native window per scanout.
    Window,
}

/// The web viewer's address when `--display web` names none.
pub const DEFAULT_WEB_ADDR: &str = "127.0.0.1:8080";

impl std::str::FromStr for DisplayMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let err = || ConfigError::Display(s.to_string());
        match s {
            "headless" => Ok(DisplayMode::Headless),
            "window" => Ok(DisplayMode::Window),
            "web" => Ok(DisplayMode::Web(
                DEFAULT_WEB_ADDR.parse().map_err(|_| err())?,
            )),
            _ => match s.strip_prefix("web=") {
                Some(addr) => addr.parse().map(DisplayMode::Web).map_err(|_| err()),
                None => Err(err()),
            },
        }
    }
}

impl DisplayMode {
    /// Whether this display sends keyboard and mouse to the guest.
    pub fn takes_input(&self) -> bool {
        !matches!(self, DisplayMode::Headless)
    }
}

fn default_cpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    512 << 20
}
fn default_true() -> bool {
    true
}

/// Everything needed to build and run a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image: a bzImage or an ELF vmlinux.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest RAM in bytes.
    #[serde(default = "default_memory")]
    pub memory: u64,
    #[serde(default)]
    pub disks: Vec<BlockParams>,
    #[serde(default)]
    pub serial: SerialMode,
    /// Offer a virtio-rng device.
    #[serde(default = "default_true")]
    pub rng: bool,
    /// Restart the guest when it reboots (otherwise exit).
    #[serde(default = "default_true")]
    pub reboot: bool,
    /// A virtio-gpu device (2D) and its scanouts.
    #[serde(default)]
    pub gpu: Option<GpuParams>,
    /// Where the GPU's scanouts are shown.
    #[serde(default)]
    pub display: DisplayMode,
}

impl VmConfig {
    /// Checks everything that can be checked before building the VM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cpus == 0 || u32::from(self.cpus) > MAX_VCPUS {
            return Err(ConfigError::Cpus {
                got: u32::from(self.cpus),
                max: MAX_VCPUS,
            });
        }
        memory::validate_size(self.memory)?;
        readable("kernel", &self.kernel)?;
        crate::arch::x86_64::boot::check_kernel(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            readable("initrd", initrd)?;
        }
        if self.cmdline.len() >= crate::arch::x86_64::layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong {
                max: crate::arch::x86_64::layout::CMDLINE_MAX_SIZE - 1,
            });
        }
        if let Some(gpu) = &self.gpu {
            gpu.validate()
                .map_err(|e| ConfigError::Gpu(e.to_string()))?;
        } else if self.display != DisplayMode::Headless {
            return Err(ConfigError::Gpu(
                "a display needs a GPU: add --gpu".to_string(),
            ));
        }
        for (index, disk) in self.disks.iter().enumerate() {
            disk.validate().map_err(|e| ConfigError::Disk {
                index,
                message: e.to_string(),
            })?;
            std::fs::OpenOptions::new()
                .read(true)
                .write(!disk.readonly)
                .open(&disk.path)
                .map_err(|e| ConfigError::Disk {
                    index,
                    message: format!(
                        "cannot open '{}'{}: {e}",
                        disk.path.display(),
                        if disk.readonly {
                            ""
                        } else {
                            " for writing (add readonly=on?)"
                        }
                    ),
                })?;
        }
        Ok(())
    }
}

fn readable(what: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .and_then(|f| {
            if f.metadata()?.is_dir() {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a directory",
                ))
            } else {
                Ok(())
            }
        })
        .map_err(|source| ConfigError::Unreadable {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        for bad in ["", "M", "12Q", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_modes() {
        assert_eq!(
            "headless".parse::<DisplayMode>().unwrap(),
            DisplayMode::Headless
        );
        assert_eq!(
            "web".parse::<DisplayMode>().unwrap(),
            DisplayMode::Web("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            "web=0.0.0.0:9000".parse::<DisplayMode>().unwrap(),
            DisplayMode::Web("0.0.0.0:9000".parse().unwrap())
        );
        assert!("web=nowhere".parse::<DisplayMode>().is_err());
        assert!("vnc".parse::<DisplayMode>().is_err());
        assert!(!DisplayMode::Headless.takes_input());
    }

    #[test]
    fn serial_modes() {
        assert_eq!("tty".parse::<SerialMode>().unwrap(), SerialMode::Tty);
        assert_eq!("none".parse::<SerialMode>().unwrap(), SerialMode::None);
        assert_eq!(
            "file=/tmp/x".parse::<SerialMode>().unwrap(),
            SerialMode::File("/tmp/x".into())
        );
        assert!("file=".parse::<SerialMode>().is_err());
        assert!("pty".parse::<SerialMode>().is_err());
    }

    #[test]
    fn json_config_round_trips_and_rejects_unknown_fields() {
        let json = r#"{"kernel":"/k","cpus":2,"memory":1073741824,
            "disks":[{"path":"/d.img","readonly":true}],"serial":"none"}"#;
        let c: VmConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.cpus, 2);
        assert!(c.disks[0].readonly);
        assert!(c.rng && c.reboot);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","cpu":2}"#).is_err());
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let mut c: VmConfig = serde_json::from_str(r#"{"kernel":"/nonexistent/vmlinuz"}"#).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("kernel '/nonexistent/vmlinuz' is not readable"),
            "{e}"
        );
        c.cpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Cpus { .. })));
        c.cpus = 1;
        c.memory = 1 << 20;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(_))));
    }
}
