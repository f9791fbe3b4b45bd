//! Configuration of the virtio-gpu device.
//!
//! [`GpuParams`] comes from a config file (serde) or from the command line's
//! `width=1920,height=1080,displays=2,max-hostmem=512M` through
//! [`GpuParams::parse`]. Parsing checks the syntax; [`GpuParams::validate`]
//! checks the values.

use serde::{Deserialize, Serialize};

use super::protocol::MAX_SCANOUTS;
use crate::virgl::ContextTypes;

/// Default mode of every display.
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 800;
/// Default cap on host memory held by the guest's resources.
pub const DEFAULT_MAX_HOSTMEM: u64 = 256 << 20;
/// Default size of the host-visible window (3D only).
pub const DEFAULT_HOSTMEM: u64 = 1 << 30;
/// Smallest and largest host-visible windows.
pub const MIN_HOSTMEM: u64 = 16 << 20;
pub const MAX_HOSTMEM_WINDOW: u64 = 64 << 30;
/// Smallest and largest display sizes (the Linux driver's limits).
pub const MIN_SIZE: u32 = 32;
pub const MAX_SIZE: u32 = 8192;

/// Errors in GPU parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("unknown gpu option '{0}' (expected width, height, displays, max-hostmem, context-types, hostmem)")]
    UnknownKey(String),
    #[error("gpu option '{0}' needs a value (key=value)")]
    MissingValue(String),
    #[error("gpu option '{0}' given twice")]
    Duplicate(String),
    #[error("empty item in gpu options")]
    EmptyItem,
    #[error("invalid number '{value}' for gpu option {key}")]
    BadNumber { key: &'static str, value: String },
    #[error(
        "invalid size '{0}' for gpu option max-hostmem (expected bytes or a K, M, G or T suffix)"
    )]
    BadSize(String),
    #[error("gpu display size {width}x{height} is outside 32x32 to 8192x8192")]
    BadMode { width: u32, height: u32 },
    #[error("unknown context type '{0}' in gpu context-types (expected venus, virgl, or both as venus:virgl)")]
    BadContextType(String),
    #[error("gpu hostmem={0} must be a power of two from 16M to 64G")]
    BadHostmem(u64),
    #[error("gpu hostmem sizes the 3D host-visible window: give context-types=venus and/or virgl with it")]
    HostmemWithout3d,
    #[error("gpu displays={0} is outside 1 to 16")]
    BadDisplays(u32),
    #[error("gpu max-hostmem={max} bytes cannot hold one {width}x{height} frame ({frame} bytes)")]
    HostmemTooSmall {
        max: u64,
        width: u32,
        height: u32,
        frame: u64,
    },
}

/// The virtio-gpu device's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuParams {
    /// Preferred width of every display, in pixels.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Preferred height of every display, in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Number of displays (scanouts), 1 to 16.
    #[serde(default = "default_displays")]
    pub displays: u32,
    /// The most host memory, in bytes, the guest's resources may hold.
    #[serde(default = "default_max_hostmem")]
    pub max_hostmem: u64,
    /// 3D context types (none: a 2D device).
    #[serde(default, skip_serializing_if = "is_2d")]
    pub context_types: ContextTypes,
    /// Size of the host-visible window for mapped blobs (3D only; 0: the
    /// default, [`DEFAULT_HOSTMEM`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hostmem: u64,
}

fn is_2d(t: &ContextTypes) -> bool {
    !t.any()
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_width() -> u32 {
    DEFAULT_WIDTH
}

fn default_height() -> u32 {
    DEFAULT_HEIGHT
}

fn default_displays() -> u32 {
    1
}

fn default_max_hostmem() -> u64 {
    DEFAULT_MAX_HOSTMEM
}

impl Default for GpuParams {
    fn default() -> Self {
        Self {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            displays: 1,
            max_hostmem: DEFAULT_MAX_HOSTMEM,
            context_types: ContextTypes::default(),
            hostmem: 0,
        }
    }
}

impl GpuParams {
    /// Parses the command-line syntax: comma-separated `key=value` items with
    /// keys `width`, `height`, `displays` and `max-hostmem` (bytes, or with a
    /// K, M, G or T suffix: `512M`). An empty string gives the defaults.
    pub fn parse(s: &str) -> Result<Self, ParamsError> {
        let mut width = None;
        let mut height = None;
        let mut displays = None;
        let mut max_hostmem = None;
        let mut context_types = None;
        let mut hostmem = None;
        if s.is_empty() {
            return Ok(Self::default());
        }
        for item in s.split(',') {
            if item.is_empty() {
                return Err(ParamsError::EmptyItem);
            }
            let Some((key, value)) = item.split_once('=') else {
                return Err(ParamsError::MissingValue(item.to_string()));
            };
            match key {
                "width" => set_once(&mut width, key, number("width", value)?)?,
                "height" => set_once(&mut height, key, number("height", value)?)?,
                "displays" => set_once(&mut displays, key, number("displays", value)?)?,
                "max-hostmem" | "max_hostmem" => set_once(
                    &mut max_hostmem,
                    "max-hostmem",
                    parse_size(value).ok_or_else(|| ParamsError::BadSize(value.to_string()))?,
                )?,
                "context-types" | "context_types" => {
                    set_once(&mut context_types, "context-types", parse_types(value)?)?
                }
                "hostmem" => set_once(
                    &mut hostmem,
                    "hostmem",
                    parse_size(value).ok_or_else(|| ParamsError::BadSize(value.to_string()))?,
                )?,
                _ => return Err(ParamsError::UnknownKey(key.to_string())),
            }
        }
        Ok(Self {
            width: width.unwrap_or(DEFAULT_WIDTH),
            height: height.unwrap_or(DEFAULT_HEIGHT),
            displays: displays.unwrap_or(1),
            max_hostmem: max_hostmem.unwrap_or(DEFAULT_MAX_HOSTMEM),
            context_types: context_types.unwrap_or_default(),
            hostmem: hostmem.unwrap_or(0),
        })
    }

    /// The host-visible window's size (0 for a 2D device).
    pub fn hostmem_window(&self) -> u64 {
        match (self.context_types.any(), self.hostmem) {
            (false, _) => 0,
            (true, 0) => DEFAULT_HOSTMEM,
            (true, n) => n,
        }
    }

    /// Checks the values: a mode of 32x32 to 8192x8192, 1 to 16 displays,
    /// and room in `max_hostmem` for at least one full-screen frame.
    pub fn validate(&self) -> Result<(), ParamsError> {
        check_mode(self.width, self.height)?;
        if self.displays == 0 || self.displays as usize > MAX_SCANOUTS {
            return Err(ParamsError::BadDisplays(self.displays));
        }
        if self.hostmem != 0 {
            if !self.context_types.any() {
                return Err(ParamsError::HostmemWithout3d);
            }
            if !self.hostmem.is_power_of_two()
                || !(MIN_HOSTMEM..=MAX_HOSTMEM_WINDOW).contains(&self.hostmem)
            {
                return Err(ParamsError::BadHostmem(self.hostmem));
            }
        }
        let frame = u64::from(self.width) * u64::from(self.height) * 4;
        if self.max_hostmem < frame {
            return Err(ParamsError::HostmemTooSmall {
                max: self.max_hostmem,
                width: self.width,
                height: self.height,
                frame,
            });
        }
        Ok(())
    }
}

/// `venus`, `virgl`, `venus:virgl` (either order).
fn parse_types(value: &str) -> Result<ContextTypes, ParamsError> {
    let mut types = ContextTypes::default();
    for t in value.split(':') {
        match t {
            "venus" => types.venus = true,
            "virgl" | "virgl2" => types.virgl = true,
            other => return Err(ParamsError::BadContextType(other.to_string())),
        }
    }
    Ok(types)
}

/// Checks a display size is within [`MIN_SIZE`] and [`MAX_SIZE`].
pub fn check_mode(width: u32, height: u32) -> Result<(), ParamsError> {
    let ok = |v: u32| (MIN_SIZE..=MAX_SIZE).contains(&v);
    if ok(width) && ok(height) {
        Ok(())
    } else {
        Err(ParamsError::BadMode { width, height })
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), ParamsError> {
    if slot.is_some() {
        return Err(ParamsError::Duplicate(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn number(key: &'static str, value: &str) -> Result<u32, ParamsError> {
    value.parse().map_err(|_| ParamsError::BadNumber {
        key,
        value: value.to_string(),
    })
}

/// Parses `512M`, `1G`, `4096`, `64KiB` (binary units) into bytes.
fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let suffix = suffix.to_ascii_uppercase();
    let shift = match suffix.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_defaults_and_keys() {
        assert_eq!(GpuParams::parse("").unwrap(), GpuParams::default());
        let p = GpuParams::parse("width=1920,height=1080,displays=2,max-hostmem=512M").unwrap();
        assert_eq!(
            p,
            GpuParams {
                width: 1920,
                height: 1080,
                displays: 2,
                max_hostmem: 512 << 20,
                ..GpuParams::default()
            }
        );
        let p = GpuParams::parse("context-types=venus:virgl,hostmem=2G").unwrap();
        assert!(p.context_types.venus && p.context_types.virgl);
        assert_eq!(p.hostmem_window(), 2 << 30);
        p.validate().unwrap();
        let p = GpuParams::parse("context-types=venus").unwrap();
        assert!(p.context_types.venus && !p.context_types.virgl);
        assert_eq!(p.hostmem_window(), DEFAULT_HOSTMEM);
        assert_eq!(GpuParams::default().hostmem_window(), 0);
        p.validate().unwrap();
        let p = GpuParams::parse("displays=16").unwrap();
        assert_eq!((p.width, p.height, p.displays), (1280, 800, 16));
        assert_eq!(p.max_hostmem, 256 << 20);
        for (s, want) in [
            ("4096", 4096),
            ("64K", 64 << 10),
            ("64KiB", 64 << 10),
            ("1g", 1 << 30),
            ("2GB", 2 << 30),
            ("1T", 1 << 40),
        ] {
            let p = GpuParams::parse(&format!("max-hostmem={s}")).unwrap();
            assert_eq!(p.max_hostmem, want, "{s}");
        }
        assert_eq!(
            GpuParams::parse("max_hostmem=1M").unwrap().max_hostmem,
            1 << 20
        );
    }

    #[test]
    fn parse_errors() {
        let cases = [
            (
                "depth=24",
                ParamsError::UnknownKey("depth".into()),
                "unknown gpu option 'depth' (expected width, height, displays, max-hostmem, context-types, hostmem)",
            ),
            (
                "width",
                ParamsError::MissingValue("width".into()),
                "gpu option 'width' needs a value (key=value)",
            ),
            (
                "width=1,width=2",
                ParamsError::Duplicate("width".into()),
                "gpu option 'width' given twice",
            ),
            (
                "width=1,",
                ParamsError::EmptyItem,
                "empty item in gpu options",
            ),
            (
                "height=-1",
                ParamsError::BadNumber {
                    key: "height",
                    value: "-1".into(),
                },
                "invalid number '-1' for gpu option height",
            ),
            (
                "max-hostmem=lots",
                ParamsError::BadSize("lots".into()),
                "invalid size 'lots' for gpu option max-hostmem (expected bytes or a K, M, G or T suffix)",
            ),
            (
                "max-hostmem=99999999999T",
                ParamsError::BadSize("99999999999T".into()),
                "invalid size '99999999999T' for gpu option max-hostmem (expected bytes or a K, M, G or T suffix)",
            ),
        ];
        let more = [
            (
                "context-types=metal",
                ParamsError::BadContextType("metal".into()),
                "unknown context type 'metal' in gpu context-types (expected venus, virgl, or both as venus:virgl)",
            ),
        ];
        for (s, err, msg) in cases.into_iter().chain(more) {
            let got = GpuParams::parse(s).unwrap_err();
            assert_eq!(got, err, "{s}");
            assert_eq!(got.to_string(), msg);
        }
    }

    #[test]
    fn validate_values() {
        GpuParams::default().validate().unwrap();
        let bad_mode = GpuParams {
            width: 16,
            ..GpuParams::default()
        };
        assert_eq!(
            bad_mode.validate().unwrap_err().to_string(),
            "gpu display size 16x800 is outside 32x32 to 8192x8192"
        );
        let big = GpuParams {
            width: 8192,
            height: 8192,
            ..GpuParams::default()
        };
        big.validate().unwrap();
        assert!(GpuParams {
            width: 8193,
            ..big.clone()
        }
        .validate()
        .is_err());
        for n in [0, 17] {
            let p = GpuParams {
                displays: n,
                ..GpuParams::default()
            };
            assert_eq!(p.validate(), Err(ParamsError::BadDisplays(n)));
        }
        let p = GpuParams::parse("hostmem=1G").unwrap();
        assert_eq!(p.validate(), Err(ParamsError::HostmemWithout3d));
        for bad in [
            "context-types=venus,hostmem=3G",
            "context-types=venus,hostmem=8M",
        ] {
            let p = GpuParams::parse(bad).unwrap();
            assert!(
                matches!(p.validate(), Err(ParamsError::BadHostmem(_))),
                "{bad}"
            );
        }
        let small = GpuParams {
            max_hostmem: 1 << 20,
            ..GpuParams::default()
        };
        assert_eq!(
            small.validate().unwrap_err().to_string(),
            "gpu max-hostmem=1048576 bytes cannot hold one 1280x800 frame (4096000 bytes)"
        );
    }

    #[test]
    fn serde_fields() {
        let p: GpuParams = serde_json::from_str(r#"{"width": 800, "displays": 2}"#).unwrap();
        assert_eq!((p.width, p.height, p.displays), (800, 800, 2));
        assert_eq!(p.max_hostmem, DEFAULT_MAX_HOSTMEM);
        let err = serde_json::from_str::<GpuParams>(r#"{"depth": 24}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `depth`"), "{err}");
        let json = serde_json::to_value(GpuParams::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"width": 1280, "height": 800, "displays": 1, "max_hostmem": 268435456u64})
        );
    }
}
