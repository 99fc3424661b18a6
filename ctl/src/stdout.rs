//! Standard output that a closed pipe ends quietly (`supersocket list | head -1`): once a
//! reader has gone, nothing more is written and no error is told, and the command still ends
//! with the status of what it did, as ripgrep and fd do (not 141, the status of a process
//! killed by SIGPIPE, which would fail `set -o pipefail` scripts for a reader that had all it
//! wanted). Any other failure to write (a full disk) is told once on stderr and makes the exit
//! status 1.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stdout can take no more.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set when a write failed for another reason than a closed pipe.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout; false once stdout is closed (a pager or `head` that quit).
pub fn write(text: impl AsRef<[u8]>) -> bool {
    if CLOSED.load(Ordering::Relaxed) {
        return false;
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_ref()).and_then(|()| stdout.flush()) {
        Ok(()) => true,
        Err(error) => {
            CLOSED.store(true, Ordering::Relaxed);
            if error.kind() != ErrorKind::BrokenPipe {
                FAILED.store(true, Ordering::Relaxed);
                let _ = writeln!(std::io::stderr(), "supersocket: cannot write to stdout: {error}");
            }
            false
        }
    }
}

/// Whether some output was lost for another reason than a reader that went away.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}
