//! CPU time of the calling thread, for the measuring examples (`#[path]`-included): the
//! machine is shared and the encoders are single-threaded, so this, not wall time, is the
//! figure that does not move with the neighbours.

use std::time::Duration;

/// The calling thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
