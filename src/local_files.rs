//! Housekeeping shared by the two embedded adapters (the directory store and the spool
//! queue): both write through temp files and rename, and both sweep what a crashed writer
//! left behind.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Best-effort removal of files in `dir` last modified more than `max_age` ago: temp files a
/// crashed writer left behind. Errors are ignored; a file that stays is swept next time.
pub fn remove_stale_files(dir: &Path, max_age: Duration) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|m| now.duration_since(m).unwrap_or_default() > max_age)
            .unwrap_or(false);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}
