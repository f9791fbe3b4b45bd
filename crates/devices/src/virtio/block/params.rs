//! Configuration of a virtio-blk disk.
//!
//! [`BlockParams`] comes either from a config file (serde) or from the
//! command line's `path=disk.img,readonly=on,id=serial` syntax through
//! [`BlockParams::parse`]. Parsing checks the syntax only;
//! [`BlockParams::validate`] checks the values.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;

/// Length of the serial returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Errors in disk parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("unknown disk option '{0}' (expected path, readonly, id)")]
    UnknownKey(String),
    #[error("disk option '{0}' needs a value (key=value)")]
    MissingValue(String),
    #[error("disk option '{0}' given twice")]
    Duplicate(String),
    #[error("invalid value '{value}' for disk option readonly (expected on, off, true or false)")]
    BadBool { value: String },
    #[error("empty item in disk options")]
    EmptyItem,
    #[error("disk path missing")]
    MissingPath,
    #[error("disk id '{0}' is longer than 20 bytes")]
    IdTooLong(String),
    #[error("disk id must not be empty")]
    EmptyId,
    #[error("disk id '{0}' must be printable ASCII")]
    IdNotAscii(String),
}

/// A disk image backing one virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockParams {
    /// Path of the raw disk image (a regular file or a block device).
    pub path: PathBuf,
    /// Expose the disk read-only; the image is then opened read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Serial returned to the guest by GET_ID (at most 20 ASCII bytes);
    /// derived from the file name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl BlockParams {
    /// Parameters for `path` with every option at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readonly: false,
            id: None,
        }
    }

    /// Parses the command-line syntax: comma-separated `key=value` items with
    /// keys `path`, `readonly` (on/off/true/false) and `id`. A first item
    /// without `=` is the path: `disk.img,readonly=on`.
    pub fn parse(s: &str) -> Result<Self, ParamsError> {
        let mut path: Option<PathBuf> = None;
        let mut readonly: Option<bool> = None;
        let mut id: Option<String> = None;
        for (i, item) in s.split(',').enumerate() {
            if item.is_empty() {
                return Err(ParamsError::EmptyItem);
            }
            let (key, value) = match item.split_once('=') {
                Some(kv) => kv,
                None if i == 0 => ("path", item),
                None => return Err(ParamsError::MissingValue(item.to_string())),
            };
            match key {
                "path" => set_once(&mut path, key, PathBuf::from(value))?,
                "readonly" => set_once(&mut readonly, key, parse_bool(value)?)?,
                "id" => set_once(&mut id, key, value.to_string())?,
                _ => return Err(ParamsError::UnknownKey(key.to_string())),
            }
        }
        let path = path
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or(ParamsError::MissingPath)?;
        Ok(Self {
            path,
            readonly: readonly.unwrap_or(false),
            id,
        })
    }

    /// Checks the values: a non-empty path, and an id of 1 to 20 printable
    /// ASCII bytes.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.path.as_os_str().is_empty() {
            return Err(ParamsError::MissingPath);
        }
        if let Some(id) = &self.id {
            if id.is_empty() {
                return Err(ParamsError::EmptyId);
            }
            if !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                return Err(ParamsError::IdNotAscii(id.clone()));
            }
            if id.len() > ID_BYTES {
                return Err(ParamsError::IdTooLong(id.clone()));
            }
        }
        Ok(())
    }

    /// The 20-byte, NUL-padded device id: `id`, or else the image's file name
    /// (non-printable bytes replaced by `_`, cut to 20 bytes).
    pub fn device_id(&self) -> [u8; ID_BYTES] {
        let source: Vec<u8> = match &self.id {
            Some(id) => id.as_bytes().to_vec(),
            None => self
                .path
                .file_name()
                .map(|n| n.as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        };
        let mut out = [0u8; ID_BYTES];
        for (dst, &b) in out.iter_mut().zip(source.iter()) {
            *dst = if b.is_ascii_graphic() || b == b' ' {
                b
            } else {
                b'_'
            };
        }
        out
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), ParamsError> {
    if slot.is_some() {
        return Err(ParamsError::Duplicate(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_bool(value: &str) -> Result<bool, ParamsError> {
    match value {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ParamsError::BadBool {
            value: value.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bare_path() {
        let p = BlockParams::parse("disk.img").unwrap();
        assert_eq!(p, BlockParams::new("disk.img"));
    }

    #[test]
    fn parse_all_keys() {
        let p = BlockParams::parse("/a/b.img,readonly=on,id=serial-1").unwrap();
        assert_eq!(p.path, PathBuf::from("/a/b.img"));
        assert!(p.readonly);
        assert_eq!(p.id.as_deref(), Some("serial-1"));
        p.validate().unwrap();

        let p = BlockParams::parse("readonly=false,path=x.img").unwrap();
        assert_eq!(p.path, PathBuf::from("x.img"));
        assert!(!p.readonly);
        for (v, want) in [
            ("on", true),
            ("true", true),
            ("off", false),
            ("false", false),
        ] {
            let p = BlockParams::parse(&format!("x.img,readonly={v}")).unwrap();
            assert_eq!(p.readonly, want);
        }
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            BlockParams::parse("x.img,foo=1").unwrap_err(),
            ParamsError::UnknownKey("foo".into())
        );
        assert_eq!(
            BlockParams::parse("x.img,foo=1").unwrap_err().to_string(),
            "unknown disk option 'foo' (expected path, readonly, id)"
        );
        assert_eq!(
            BlockParams::parse("x.img,readonly=maybe").unwrap_err(),
            ParamsError::BadBool {
                value: "maybe".into()
            }
        );
        assert_eq!(
            BlockParams::parse("x.img,readonly").unwrap_err(),
            ParamsError::MissingValue("readonly".into())
        );
        assert_eq!(
            BlockParams::parse("x.img,path=y.img").unwrap_err(),
            ParamsError::Duplicate("path".into())
        );
        assert_eq!(
            BlockParams::parse("readonly=on").unwrap_err(),
            ParamsError::MissingPath
        );
        assert_eq!(BlockParams::parse("").unwrap_err(), ParamsError::EmptyItem);
        assert_eq!(
            BlockParams::parse("x.img,").unwrap_err(),
            ParamsError::EmptyItem
        );
        assert_eq!(
            BlockParams::parse("path=").unwrap_err(),
            ParamsError::MissingPath
        );
    }

    #[test]
    fn validate_id() {
        let mut p = BlockParams::new("x.img");
        p.validate().unwrap();
        p.id = Some("a".repeat(20));
        p.validate().unwrap();
        p.id = Some("a".repeat(21));
        assert!(matches!(p.validate(), Err(ParamsError::IdTooLong(_))));
        p.id = Some(String::new());
        assert_eq!(p.validate(), Err(ParamsError::EmptyId));
        p.id = Some("sé".into());
        assert!(matches!(p.validate(), Err(ParamsError::IdNotAscii(_))));
        assert_eq!(
            BlockParams::new("").validate(),
            Err(ParamsError::MissingPath)
        );
    }

    #[test]
    fn device_id_defaults_to_file_name() {
        let id = BlockParams::new("/images/root\n.img").device_id();
        assert_eq!(&id[..10], b"root_.img\0");
        let long = BlockParams::new("/x/abcdefghijklmnopqrstuvwxyz.img").device_id();
        assert_eq!(&long, b"abcdefghijklmnopqrst");
        let mut p = BlockParams::new("x.img");
        p.id = Some("serial".into());
        assert_eq!(&p.device_id()[..7], b"serial\0");
    }
}
