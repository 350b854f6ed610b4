//! Noticing that the wall clock was set (stepped), which voids comparisons
//! of ctimes against a time watermark (the XFS fast path).
//!
//! A `CLOCK_REALTIME` timerfd armed far in the future with
//! `TFD_TIMER_CANCEL_ON_SET` fails its next read with `ECANCELED` whenever
//! the clock is set (`clock_settime`, `settimeofday`, NTP steps). Gradual
//! NTP slewing does not count: it moves the clock by at most 500 ppm,
//! far inside the fast path's margin.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub struct ClockWatch {
    fd: OwnedFd,
}

/// The timer's expiry: far enough never to fire.
const FAR_FUTURE_SECS: libc::time_t = 100 * 365 * 86_400;

impl ClockWatch {
    pub fn new() -> std::io::Result<ClockWatch> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor from the kernel.
        let w = ClockWatch {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        w.arm()?;
        Ok(w)
    }

    fn arm(&self) -> std::io::Result<()> {
        // SAFETY: itimerspec is plain old data.
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: timespec is plain old data; clock_gettime fills it.
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid clock and output pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        spec.it_value.tv_sec = now.tv_sec.saturating_add(FAR_FUTURE_SECS);
        // SAFETY: valid descriptor and itimerspec.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// True once per clock step since the last call.
    pub fn stepped(&self) -> bool {
        let mut buf = [0u8; 8];
        // SAFETY: reading into a local buffer of the stated size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECANCELED) {
            // Cancelled timers must be armed again to notice the next step.
            let _ = self.arm();
            return true;
        }
        false
    }
}
