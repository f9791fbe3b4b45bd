//! A small "newc" cpio writer and reader, and [`Initramfs`], an in-memory file tree that is
//! written out as a (optionally gzip-compressed) initramfs archive.
//!
//! The archive is reproducible: entries are sorted by path, every timestamp is 0, owners are
//! root, inode numbers count up from 1. No device nodes are written: the kernel creates /dev
//! through devtmpfs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// The newc header magic.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends every cpio archive.
pub const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFMT: u32 = 0o170000;
const HEADER_LEN: usize = 110;

/// Errors of the cpio writer, the reader and the [`Initramfs`] tree.
#[derive(Debug, Error)]
pub enum CpioError {
    #[error("i/o error writing the archive")]
    Io(#[from] io::Error),
    #[error("cannot read {path}")]
    ReadSource { path: PathBuf, source: io::Error },
    #[error("invalid path in image: {0:?} (must be absolute, without '..')")]
    InvalidPath(PathBuf),
    #[error("{path} is too large for a newc archive ({size} bytes)")]
    TooLarge { path: String, size: u64 },
    #[error("{path} was written with a size of {expected} bytes but now has {actual}")]
    SizeChanged {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("malformed cpio archive at byte {offset}: {what}")]
    Malformed { offset: usize, what: &'static str },
}

/// The compression applied to a whole archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// A plain cpio archive: the fastest to unpack for a guest running under emulation.
    None,
    /// gzip (flate2), the format every kernel can unpack.
    #[default]
    Gzip,
}

/// A streaming newc cpio writer. Call [`CpioWriter::finish`] to write the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Writes a directory entry. `name` is the path inside the archive without a leading '/'.
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<(), CpioError> {
        self.header(name, S_IFDIR | (mode & 0o7777), 2, 0)
    }

    /// Writes a regular file with the given contents.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size: data.len() as u64,
        })?;
        self.header(name, S_IFREG | (mode & 0o7777), 1, size)?;
        self.raw(data)?;
        self.pad()
    }

    /// Writes a regular file of `size` bytes copied from `reader`.
    pub fn file_from_reader(
        &mut self,
        name: &str,
        mode: u32,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<u64, CpioError> {
        let size32 = u32::try_from(size).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size,
        })?;
        self.header(name, S_IFREG | (mode & 0o7777), 1, size32)?;
        let copied = io::copy(&mut reader.take(size), &mut self.out)?;
        self.written += copied;
        self.pad()?;
        Ok(copied)
    }

    /// Writes a symbolic link pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        let size = u32::try_from(target.len()).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size: target.len() as u64,
        })?;
        self.header(name, S_IFLNK | 0o777, 1, size)?;
        self.raw(target.as_bytes())?;
        self.pad()
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.next_ino = 0;
        self.header(TRAILER, 0, 1, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: u32) -> Result<(), CpioError> {
        let namesize = u32::try_from(name.len() + 1).map_err(|_| CpioError::TooLarge {
            path: name.to_string(),
            size: name.len() as u64,
        })?;
        let ino = self.next_ino;
        if ino != 0 {
            self.next_ino += 1;
        }
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(NEWC_MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.raw(&header)?;
        self.pad()
    }

    fn raw(&mut self, data: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..pad])
    }
}

/// One entry read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// The path as stored (no leading '/').
    pub name: String,
    /// The full mode, file type bits included.
    pub mode: u32,
    /// File contents or a symlink's target.
    pub data: Vec<u8>,
}

impl CpioEntry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
    /// The permission bits.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// Parses a whole (uncompressed) newc archive, up to its trailer. The trailer is not returned.
pub fn parse_newc(data: &[u8]) -> Result<Vec<CpioEntry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = data
            .get(pos..pos + HEADER_LEN)
            .ok_or(CpioError::Malformed {
                offset: pos,
                what: "truncated header",
            })?;
        if &header[..6] != NEWC_MAGIC {
            return Err(CpioError::Malformed {
                offset: pos,
                what: "bad magic",
            });
        }
        let field = |i: usize| -> Result<u32, CpioError> {
            let start = 6 + i * 8;
            std::str::from_utf8(&header[start..start + 8])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or(CpioError::Malformed {
                    offset: pos + start,
                    what: "bad hex field",
                })
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_start = pos + HEADER_LEN;
        let name_bytes =
            data.get(name_start..name_start + namesize)
                .ok_or(CpioError::Malformed {
                    offset: name_start,
                    what: "truncated name",
                })?;
        let name = match name_bytes.split_last() {
            Some((0, name)) => String::from_utf8_lossy(name).into_owned(),
            _ => {
                return Err(CpioError::Malformed {
                    offset: name_start,
                    what: "name not NUL-terminated",
                })
            }
        };
        let data_start = align4(name_start + namesize);
        if name == TRAILER {
            return Ok(entries);
        }
        let body = data
            .get(data_start..data_start + size)
            .ok_or(CpioError::Malformed {
                offset: data_start,
                what: "truncated data",
            })?;
        entries.push(CpioEntry {
            name,
            mode,
            data: body.to_vec(),
        });
        pos = align4(data_start + size);
    }
}

/// Reads an archive file, gzip-compressed or not, and parses it with [`parse_newc`].
pub fn read_archive(path: &Path) -> Result<Vec<CpioEntry>, CpioError> {
    let raw = fs::read(path).map_err(|source| CpioError::ReadSource {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut plain)?;
        parse_newc(&plain)
    } else {
        parse_newc(&raw)
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Where an [`Initramfs`] file's contents come from.
#[derive(Debug, Clone)]
pub enum FileData {
    /// Bytes held in memory.
    Bytes(Vec<u8>),
    /// A host file, read when the archive is written (its symlinks followed).
    Path(PathBuf),
}

#[derive(Debug, Clone)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: FileData },
    Symlink { target: String },
}

/// An in-memory file tree written out as an initramfs. Paths are absolute ("/bin/busybox");
/// parent directories are created (mode 0755) as needed; adding a path twice replaces it.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

impl Initramfs {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) -> Result<&mut Self, CpioError> {
        let key = self.prepare(path.as_ref())?;
        self.nodes.insert(key, Node::Dir { mode });
        Ok(self)
    }

    /// Adds a file with the given contents.
    pub fn file(
        &mut self,
        path: impl AsRef<Path>,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        let key = self.prepare(path.as_ref())?;
        self.nodes.insert(
            key,
            Node::File {
                mode,
                data: FileData::Bytes(data.into()),
            },
        );
        Ok(self)
    }

    /// Adds a file whose contents are read from `src` on the host when the archive is written.
    pub fn file_from_host(
        &mut self,
        path: impl AsRef<Path>,
        src: impl Into<PathBuf>,
        mode: u32,
    ) -> Result<&mut Self, CpioError> {
        let key = self.prepare(path.as_ref())?;
        self.nodes.insert(
            key,
            Node::File {
                mode,
                data: FileData::Path(src.into()),
            },
        );
        Ok(self)
    }

    /// Adds a symbolic link.
    pub fn symlink(
        &mut self,
        path: impl AsRef<Path>,
        target: impl Into<String>,
    ) -> Result<&mut Self, CpioError> {
        let key = self.prepare(path.as_ref())?;
        self.nodes.insert(
            key,
            Node::Symlink {
                target: target.into(),
            },
        );
        Ok(self)
    }

    /// Copies a host directory tree to `dest`: files keep their permission bits, symbolic links
    /// are kept as links.
    pub fn host_dir(&mut self, src: &Path, dest: impl AsRef<Path>) -> Result<&mut Self, CpioError> {
        let dest = dest.as_ref().to_path_buf();
        let read_err = |source| CpioError::ReadSource {
            path: src.to_path_buf(),
            source,
        };
        let meta = fs::metadata(src).map_err(read_err)?;
        self.dir(&dest, permissions(&meta))?;
        let mut children: Vec<_> = fs::read_dir(src)
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            let target = dest.join(child.file_name());
            let meta = fs::symlink_metadata(&path).map_err(|source| CpioError::ReadSource {
                path: path.clone(),
                source,
            })?;
            if meta.file_type().is_symlink() {
                let link = fs::read_link(&path).map_err(|source| CpioError::ReadSource {
                    path: path.clone(),
                    source,
                })?;
                self.symlink(&target, link.to_string_lossy().into_owned())?;
            } else if meta.is_dir() {
                self.host_dir(&path, &target)?;
            } else {
                self.file_from_host(&target, &path, permissions(&meta))?;
            }
        }
        Ok(self)
    }

    /// Whether `path` is in the tree.
    pub fn contains(&self, path: impl AsRef<Path>) -> bool {
        normalize(path.as_ref()).is_ok_and(|key| self.nodes.contains_key(&key))
    }

    /// The paths in the tree, sorted, without a leading '/'.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// The in-memory contents of the file at `path` (None for directories, links, host files).
    pub fn bytes(&self, path: impl AsRef<Path>) -> Option<&[u8]> {
        let key = normalize(path.as_ref()).ok()?;
        match self.nodes.get(&key) {
            Some(Node::File {
                data: FileData::Bytes(b),
                ..
            }) => Some(b),
            _ => None,
        }
    }

    /// Writes the archive to `out`.
    pub fn write_to<W: Write>(&self, out: W) -> Result<W, CpioError> {
        let mut cpio = CpioWriter::new(out);
        for (name, node) in &self.nodes {
            match node {
                Node::Dir { mode } => cpio.dir(name, *mode)?,
                Node::File {
                    mode,
                    data: FileData::Bytes(b),
                } => cpio.file(name, *mode, b)?,
                Node::File {
                    mode,
                    data: FileData::Path(src),
                } => {
                    let read_err = |source| CpioError::ReadSource {
                        path: src.clone(),
                        source,
                    };
                    let mut file = fs::File::open(src).map_err(read_err)?;
                    let size = file.metadata().map_err(read_err)?.len();
                    let copied = cpio.file_from_reader(name, *mode, size, &mut file)?;
                    if copied != size {
                        return Err(CpioError::SizeChanged {
                            path: src.clone(),
                            expected: size,
                            actual: copied,
                        });
                    }
                }
                Node::Symlink { target } => cpio.symlink(name, target)?,
            }
        }
        cpio.finish()
    }

    /// Writes the archive to the file `path` (replaced atomically through a temporary name).
    pub fn write_file(&self, path: &Path, compression: Compression) -> Result<(), CpioError> {
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let result = (|| {
            let file = BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
            match compression {
                Compression::None => {
                    let mut out = self.write_to(file)?;
                    out.flush()?;
                }
                Compression::Gzip => {
                    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
                    let mut out = self.write_to(gz)?.finish()?;
                    out.flush()?;
                }
            }
            fs::rename(&tmp, path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Validates `path`, creates its missing parents and returns its key.
    fn prepare(&mut self, path: &Path) -> Result<String, CpioError> {
        let key = normalize(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = key.split('/').collect();
        for part in &components[..components.len().saturating_sub(1)] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        Ok(key)
    }
}

/// "/a/b" → "a/b"; rejects relative paths, "..", and the root itself.
fn normalize(path: &Path) -> Result<String, CpioError> {
    let mut parts = Vec::new();
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(CpioError::InvalidPath(path.to_path_buf()));
    }
    for c in components {
        match c {
            Component::Normal(p) => match p.to_str() {
                Some(s) => parts.push(s),
                None => return Err(CpioError::InvalidPath(path.to_path_buf())),
            },
            Component::CurDir => {}
            _ => return Err(CpioError::InvalidPath(path.to_path_buf())),
        }
    }
    if parts.is_empty() {
        return Err(CpioError::InvalidPath(path.to_path_buf()));
    }
    Ok(parts.join("/"))
}

fn permissions(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_output_parses_back() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("empty", 0o644, b"").unwrap();
        w.symlink("sh", "bin/hello").unwrap();
        let bytes = w.finish().unwrap();

        assert_eq!(&bytes[..6], NEWC_MAGIC);
        assert_eq!(bytes.len() % 4, 0, "archive is padded to 4 bytes");
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 16..]);
        assert!(tail.contains(TRAILER));

        let entries = parse_newc(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "bin/hello", "empty", "sh"]);
        assert!(entries[0].is_dir());
        assert_eq!(entries[0].permissions(), 0o755);
        assert!(entries[1].is_file());
        assert_eq!(entries[1].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(entries[1].data.len(), 18);
        assert!(entries[2].data.is_empty());
        assert!(entries[3].is_symlink());
        assert_eq!(entries[3].data, b"bin/hello");
    }

    #[test]
    fn header_fields_and_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("abc", 0o600, b"12345").unwrap();
        let bytes = w.finish().unwrap();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[6..14], "00000001", "ino");
        assert_eq!(&header[14..22], "00008180", "mode S_IFREG|0600");
        assert_eq!(&header[54..62], "00000005", "filesize");
        assert_eq!(&header[94..102], "00000004", "namesize includes NUL");
        // 110 + "abc\0" = 114 → padded to 116; data 5 bytes → padded to 124.
        assert_eq!(&bytes[110..114], b"abc\0");
        assert_eq!(&bytes[114..116], &[0, 0]);
        assert_eq!(&bytes[116..121], b"12345");
        assert_eq!(&bytes[121..124], &[0, 0, 0]);
        assert_eq!(&bytes[124..130], NEWC_MAGIC);
    }

    #[test]
    fn initramfs_creates_parents_and_sorts() {
        let mut fs = Initramfs::new();
        fs.file("/usr/bin/tool", b"x".to_vec(), 0o755).unwrap();
        fs.symlink("/bin/sh", "busybox").unwrap();
        fs.dir("/tmp", 0o1777).unwrap();
        let bytes = fs.write_to(Vec::new()).unwrap();
        let entries = parse_newc(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/sh", "tmp", "usr", "usr/bin", "usr/bin/tool"]
        );
        assert_eq!(entries[2].permissions(), 0o1777);
    }

    #[test]
    fn initramfs_rejects_bad_paths() {
        let mut fs = Initramfs::new();
        assert!(fs.file("relative", Vec::new(), 0o644).is_err());
        assert!(fs.file("/a/../b", Vec::new(), 0o644).is_err());
        assert!(fs.dir("/", 0o755).is_err());
    }

    #[test]
    fn gzip_archive_reads_back() {
        let dir = std::env::temp_dir().join(format!("pv-image-cpio-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.cpio.gz");
        let mut tree = Initramfs::new();
        tree.file("/init", b"#!/bin/busybox sh\n".to_vec(), 0o755)
            .unwrap();
        tree.write_file(&path, Compression::Gzip).unwrap();
        let raw = fs::read(&path).unwrap();
        assert_eq!(&raw[..2], &[0x1f, 0x8b]);
        let entries = read_archive(&path).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "init");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("abc", 0o600, b"12345").unwrap();
        let bytes = w.finish().unwrap();
        assert!(parse_newc(&bytes[..100]).is_err());
        assert!(parse_newc(&bytes[..118]).is_err());
    }
}
