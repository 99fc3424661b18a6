//! What folder listings look like on the wire: `ls -l` lines for LIST, names for NLST,
//! machine-readable facts for MLSD and MLST (RFC 3659), and the MDTM timestamp.

use std::fmt::Write as _;

use nix::sys::stat::{FileStat, SFlag};
use time::OffsetDateTime;

use super::jail::{Entry, is_kind};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Half a year, in seconds: `ls -l` shows the year instead of the time beyond it.
const HALF_YEAR: i64 = 182 * 24 * 3600;

fn modified(stat: &FileStat) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(stat.st_mtime).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `YYYYMMDDHHMMSS` in UTC (MDTM, and the `modify` fact).
pub fn timestamp(stat: &FileStat) -> String {
    let at = modified(stat);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The `drwxr-xr-x` column of `ls -l`.
fn mode_string(stat: &FileStat) -> String {
    let kind = if is_kind(stat, SFlag::S_IFDIR) {
        'd'
    } else if is_kind(stat, SFlag::S_IFLNK) {
        'l'
    } else {
        '-'
    };
    let mut text = String::with_capacity(10);
    text.push(kind);
    for shift in [6, 3, 0] {
        let bits = (stat.st_mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

/// LIST: one `ls -l` line per entry, owner and group shown as `ftp`.
pub fn list(entries: &[Entry], now: i64) -> Vec<u8> {
    let mut out = String::new();
    for entry in entries {
        let at = modified(&entry.stat);
        let month = MONTHS[usize::from(u8::from(at.month())) - 1];
        let when = if (now - entry.stat.st_mtime).abs() > HALF_YEAR {
            format!("{month} {:>2}  {}", at.day(), at.year())
        } else {
            format!("{month} {:>2} {:02}:{:02}", at.day(), at.hour(), at.minute())
        };
        let _ = write!(
            out,
            "{} {:>3} ftp      ftp      {:>12} {when} {}\r\n",
            mode_string(&entry.stat),
            entry.stat.st_nlink,
            entry.stat.st_size,
            entry.name
        );
    }
    out.into_bytes()
}

/// NLST: names only.
pub fn names(entries: &[Entry]) -> Vec<u8> {
    let mut out = String::new();
    for entry in entries {
        let _ = write!(out, "{}\r\n", entry.name);
    }
    out.into_bytes()
}

/// The facts of one entry: `type=file;size=12;modify=20261121120000;perm=rwadf;`.
pub fn facts(stat: &FileStat, read_only: bool) -> String {
    let dir = is_kind(stat, SFlag::S_IFDIR);
    let kind = if dir { "dir" } else { "file" };
    let perm = match (dir, read_only) {
        (true, true) => "el",
        (true, false) => "elcmfp",
        (false, true) => "r",
        (false, false) => "rwadf",
    };
    let mut text = format!("type={kind};");
    if !dir {
        let _ = write!(text, "size={};", stat.st_size);
    }
    let _ = write!(text, "modify={};perm={perm};", timestamp(stat));
    text
}

/// MLSD: a facts line per entry.
pub fn machine(entries: &[Entry], read_only: bool) -> Vec<u8> {
    let mut out = String::new();
    for entry in entries {
        let _ = write!(out, "{} {}\r\n", facts(&entry.stat, read_only), entry.name);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mode: u32, size: i64, mtime: i64) -> FileStat {
        // SAFETY: FileStat is plain old data; every field is set or zero.
        let mut stat: FileStat = unsafe { std::mem::zeroed() };
        stat.st_mode = mode;
        stat.st_size = size;
        stat.st_mtime = mtime;
        stat.st_nlink = 1;
        stat
    }

    #[test]
    fn listings_look_like_ls_and_rfc_3659() {
        // 2026-11-21 12:34:56 UTC
        let noon = 1_795_264_496;
        let entries = [
            Entry {
                name: "notes.txt".into(),
                stat: stat(0o100644, 1234, noon),
            },
            Entry {
                name: "old".into(),
                stat: stat(0o040755, 4096, noon - 400 * 24 * 3600),
            },
        ];
        let list = String::from_utf8(list(&entries, noon)).unwrap();
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(
            lines[0],
            "-rw-r--r--   1 ftp      ftp              1234 Nov 21 12:34 notes.txt"
        );
        assert_eq!(
            lines[1],
            "drwxr-xr-x   1 ftp      ftp              4096 Oct 17  2025 old"
        );
        let mlsd = String::from_utf8(machine(&entries, false)).unwrap();
        assert_eq!(
            mlsd,
            "type=file;size=1234;modify=20261121123456;perm=rwadf; notes.txt\r\n\
             type=dir;modify=20251017123456;perm=elcmfp; old\r\n"
        );
        assert_eq!(
            facts(&entries[0].stat, true),
            "type=file;size=1234;modify=20261121123456;perm=r;"
        );
        assert_eq!(String::from_utf8(names(&entries)).unwrap(), "notes.txt\r\nold\r\n");
    }
}
