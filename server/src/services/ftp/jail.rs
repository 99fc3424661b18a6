//! The filesystem jail of an FTP instance: every path a client names is resolved inside `root`
//! and nowhere else.
//!
//! Two locks. First, the client's path is normalised as text against the session's working
//! directory: `.` goes, `..` takes a component off, and a `..` above the root is refused.
//! Second, the kernel resolves what remains beneath an open descriptor of the root
//! (`openat2` with `RESOLVE_BENEATH`), so a symbolic link that leads out — absolute, or
//! relative with enough `..` — fails there, even one swapped in between a check and a use.
//! Creating, removing and renaming act on a name inside a parent directory opened that way.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A path inside the root, as components (never `.`, `..` or empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtualPath(Vec<String>);

/// Why a path was refused or an operation failed; each maps to an FTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JailError {
    /// The path leads outside the root (`..` above it, or a link out of it).
    #[error("outside the served folder")]
    Outside,
    /// The path has a character no file name may have.
    #[error("invalid path")]
    Invalid,
    /// The system refused.
    #[error("{0}")]
    Io(String),
    /// A transfer was to start past the end of the file (a REST offset beyond its size).
    #[error("offset past the end of the file")]
    PastEnd,
}

impl From<Errno> for JailError {
    fn from(errno: Errno) -> Self {
        match errno {
            // RESOLVE_BENEATH refuses escapes with EXDEV, and a loop of links with ELOOP.
            Errno::EXDEV | Errno::ELOOP => Self::Outside,
            Errno::ENOENT => Self::Io("no such file or directory".into()),
            Errno::EEXIST => Self::Io("already exists".into()),
            Errno::ENOTDIR => Self::Io("not a directory".into()),
            Errno::EISDIR => Self::Io("is a directory".into()),
            Errno::ENOTEMPTY => Self::Io("directory not empty".into()),
            Errno::EACCES | Errno::EPERM => Self::Io("permission denied".into()),
            Errno::ENOSPC => Self::Io("no space left".into()),
            other => Self::Io(other.desc().to_lowercase()),
        }
    }
}

impl From<std::io::Error> for JailError {
    fn from(error: std::io::Error) -> Self {
        match error.raw_os_error() {
            Some(code) => Errno::from_raw(code).into(),
            None => Self::Io(error.to_string()),
        }
    }
}

impl VirtualPath {
    /// Resolves `path` (absolute, or relative to `self`) as text; `..` above the root, NUL
    /// characters and empty paths are refused.
    pub fn join(&self, path: &str) -> Result<Self, JailError> {
        if path.contains('\0') {
            return Err(JailError::Invalid);
        }
        let mut parts = if path.starts_with('/') {
            Vec::new()
        } else {
            self.0.clone()
        };
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop().ok_or(JailError::Outside)?;
                }
                name => parts.push(name.to_owned()),
            }
        }
        Ok(Self(parts))
    }

    /// The last component: the name of the file or folder.
    pub fn name(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }

    /// The path relative to the root, for the kernel (`.` for the root).
    fn relative(&self) -> PathBuf {
        if self.0.is_empty() {
            PathBuf::from(".")
        } else {
            self.0.iter().collect()
        }
    }

    /// The parent folder and the name in it; `None` for the root.
    fn split(&self) -> Option<(VirtualPath, &str)> {
        let (name, parent) = self.0.split_last()?;
        Some((Self(parent.to_vec()), name))
    }
}

impl std::fmt::Display for VirtualPath {
    /// `/a/b`, as a client sees it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        for part in &self.0 {
            write!(f, "/{part}")?;
        }
        Ok(())
    }
}

/// One entry of a folder listing.
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its metadata (of a link itself, not of where it points).
    pub stat: FileStat,
}

/// The open root of an instance.
#[derive(Debug)]
pub struct Jail {
    root: OwnedFd,
}

/// How files are opened for an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// STOR: create or truncate.
    Replace,
    /// STOR after REST: create or keep, and write from the offset.
    Resume,
    /// APPE: create or append.
    Append,
}

impl Jail {
    /// Opens `root` (creating it if missing).
    pub fn open(root: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let root = File::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        Ok(Self { root: root.into() })
    }

    /// Opens `path` beneath the root.
    fn resolve(&self, path: &VirtualPath, flags: OFlag) -> Result<OwnedFd, JailError> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        Ok(openat2(self.root.as_fd(), &path.relative(), how)?)
    }

    /// The parent folder of `path`, open, and the name in it.
    fn parent<'p>(&self, path: &'p VirtualPath) -> Result<(OwnedFd, &'p str), JailError> {
        let (parent, name) = path.split().ok_or(JailError::Io("not allowed on the root".into()))?;
        Ok((self.resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?, name))
    }

    /// Metadata of what `path` names (following links that stay inside).
    pub fn stat(&self, path: &VirtualPath) -> Result<FileStat, JailError> {
        Ok(fstat(self.resolve(path, OFlag::O_PATH)?)?)
    }

    /// Whether `path` is a folder one can enter.
    pub fn is_dir(&self, path: &VirtualPath) -> Result<(), JailError> {
        self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY).map(drop)
    }

    /// Opens a regular file for reading.
    pub fn open_read(&self, path: &VirtualPath) -> Result<File, JailError> {
        let file = File::from(self.resolve(path, OFlag::O_RDONLY)?);
        let stat = fstat(&file)?;
        if !is_kind(&stat, SFlag::S_IFREG) {
            return Err(JailError::Io("not a plain file".into()));
        }
        Ok(file)
    }

    /// Opens a file for an upload; the last component is never followed if it is a link.
    pub fn open_write(&self, path: &VirtualPath, mode: Upload) -> Result<File, JailError> {
        let (parent, name) = self.parent(path)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let flags = match mode {
            Upload::Replace => flags | OFlag::O_TRUNC,
            Upload::Resume => flags,
            Upload::Append => flags | OFlag::O_APPEND,
        };
        let fd = openat(parent, name, flags, Mode::from_bits_truncate(0o644))?;
        Ok(File::from(fd))
    }

    /// Lists a folder (or, for a file, that one entry), sorted by name.
    pub fn list(&self, path: &VirtualPath) -> Result<Vec<Entry>, JailError> {
        let stat = self.stat(path)?;
        if !is_kind(&stat, SFlag::S_IFDIR) {
            let name = path.name().unwrap_or("/").to_owned();
            return Ok(vec![Entry { name, stat }]);
        }
        let mut dir = Dir::from_fd(self.resolve(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?)?;
        let names: Vec<String> = dir
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "." && name != "..")
            .collect();
        let mut entries: Vec<Entry> = names
            .into_iter()
            .filter_map(|name| {
                let stat = fstatat(dir.as_fd(), name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
                Some(Entry { name, stat })
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Makes a folder.
    pub fn mkdir(&self, path: &VirtualPath) -> Result<(), JailError> {
        let (parent, name) = self.parent(path)?;
        Ok(mkdirat(parent, name, Mode::from_bits_truncate(0o755))?)
    }

    /// Removes an empty folder.
    pub fn rmdir(&self, path: &VirtualPath) -> Result<(), JailError> {
        let (parent, name) = self.parent(path)?;
        Ok(unlinkat(parent, name, UnlinkatFlags::RemoveDir)?)
    }

    /// Removes a file (a link itself, never where it points).
    pub fn delete(&self, path: &VirtualPath) -> Result<(), JailError> {
        let (parent, name) = self.parent(path)?;
        Ok(unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Renames `from` to `to`.
    pub fn rename(&self, from: &VirtualPath, to: &VirtualPath) -> Result<(), JailError> {
        let (from_parent, from_name) = self.parent(from)?;
        let (to_parent, to_name) = self.parent(to)?;
        Ok(renameat(from_parent, from_name, to_parent, to_name)?)
    }
}

/// Whether `stat` is of that kind of file.
pub fn is_kind(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> Result<String, JailError> {
        VirtualPath::default().join("a/b")?.join(text).map(|p| p.to_string())
    }

    #[test]
    fn paths_resolve_as_text_and_never_climb_above_the_root() {
        assert_eq!(path("c").unwrap(), "/a/b/c");
        assert_eq!(path("../c/./d/").unwrap(), "/a/c/d");
        assert_eq!(path("/x//y").unwrap(), "/x/y");
        assert_eq!(path("../..").unwrap(), "/");
        assert_eq!(path("../../..").unwrap_err(), JailError::Outside);
        assert_eq!(path("/../etc/passwd").unwrap_err(), JailError::Outside);
        assert_eq!(path("c\0d").unwrap_err(), JailError::Invalid);
        // Names that only look like climbing are names.
        assert_eq!(path("%2e%2e/...").unwrap(), "/a/b/%2e%2e/...");
    }
}
