//! The disk guard: keeps a participant from promising what it cannot write.
//!
//! A YES vote is a promise to commit later, and committing needs a little disk. So new
//! Prepares (and saga Executes) are refused while the data directory's file system has less
//! free space than a reserve, or is mounted read-only; everything else keeps working:
//! Commits and Aborts of txns already prepared (they write into the reserve), Reads, and the
//! resolver. Checking free space ahead of time, rather than reacting to ENOSPC, matters because
//! a write that fails inside sled's flush fails the store for good, and the service then has to
//! stop (fail stop: the log is never left half-written, recovery replays it on restart).

use std::ffi::CString;
use std::path::Path;

use txn_metrics::RefusalReason;

/// Crash-test hook: while armed (any action), the guard reports the disk as read-only. There
/// is no portable way to remount a test's directory read-only without privileges.
pub const READ_ONLY_FAILPOINT: &str = "participant::disk_read_only";

/// How often the guard looks at the file system.
pub const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// What the guard saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskReading {
    pub free_bytes: u64,
    pub read_only: bool,
}

/// Why new Prepares are refused, with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRefusal {
    pub reason: RefusalReason,
    pub message: String,
}

/// Decides from a reading whether new Prepares must be refused. Pure, for tests.
pub fn verdict(dir: &Path, reading: DiskReading, reserve_bytes: u64) -> Option<DiskRefusal> {
    if reading.read_only {
        return Some(DiskRefusal {
            reason: RefusalReason::ReadOnly,
            message: format!(
                "disk: the data directory {} is on a read-only file system; this participant \
                 refuses new prepares until it is writable (commits, aborts and reads go on)",
                dir.display()
            ),
        });
    }
    if reading.free_bytes < reserve_bytes {
        return Some(DiskRefusal {
            reason: RefusalReason::DiskFull,
            message: format!(
                "disk: {} MiB free for {}, below the reserve of {} MiB (--min-free-mb); this \
                 participant refuses new prepares until space is freed (commits, aborts and \
                 reads go on)",
                reading.free_bytes / (1024 * 1024),
                dir.display(),
                reserve_bytes / (1024 * 1024)
            ),
        });
    }
    None
}

/// Reads free space and the read-only flag of the file system holding `dir`.
pub fn read(dir: &Path) -> std::io::Result<DiskReading> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let read_only =
        (st.f_flag & libc::ST_RDONLY) != 0 || txn_server::failpoint::armed(READ_ONLY_FAILPOINT);
    Ok(DiskReading {
        free_bytes: (st.f_bavail as u64).saturating_mul(st.f_frsize as u64),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn refuses_below_the_reserve_and_when_read_only() {
        let dir = Path::new("/data/p1");
        let ok = DiskReading {
            free_bytes: 100 * MIB,
            read_only: false,
        };
        assert_eq!(verdict(dir, ok, 64 * MIB), None);
        let low = DiskReading {
            free_bytes: 10 * MIB,
            ..ok
        };
        let r = verdict(dir, low, 64 * MIB).expect("refused");
        assert_eq!(r.reason, RefusalReason::DiskFull);
        assert!(r.message.contains("10 MiB free"), "{}", r.message);
        let ro = DiskReading {
            read_only: true,
            ..ok
        };
        assert_eq!(
            verdict(dir, ro, 0).expect("refused").reason,
            RefusalReason::ReadOnly
        );
    }

    #[test]
    fn reads_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let r = read(dir.path()).unwrap();
        assert!(r.free_bytes > 0);
        assert!(!r.read_only);
    }
}
