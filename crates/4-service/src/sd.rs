//! The parts of systemd's service protocol the daemon speaks (issue 12),
//! without a library: `sd_notify` datagrams (`READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`, and `FDSTORE=1` with the descriptor passed
//! by `SCM_RIGHTS`) to `$NOTIFY_SOCKET`, and descriptors handed back at start
//! through `$LISTEN_PID`, `$LISTEN_FDS` and `$LISTEN_FDNAMES`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

/// First descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// Descriptors taken from `LISTEN_FDS`, at most.
const LISTEN_FDS_MAX: usize = 64;
/// The name the fanotify group is stored under.
pub const FANOTIFY_FD_NAME: &str = "fanotify";

/// Sends one notification (several `KEY=value` lines) with `fds` attached.
/// `Ok(false)` when not run by systemd.
pub fn notify(state: &str, fds: &[RawFd]) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.into_vec();
    // SAFETY: sockaddr_un is plain old data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty or too long",
        ));
    }
    for (i, b) in path.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    // An abstract socket is written with a leading '@'.
    if path[0] == b'@' {
        addr.sun_path[0] = 0;
    }
    let addr_len = (std::mem::size_of::<libc::sa_family_t>() + path.len()) as libc::socklen_t;
    // SAFETY: a new socket; owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut iov = libc::iovec {
        iov_base: state.as_ptr() as *mut libc::c_void,
        iov_len: state.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; if fds.is_empty() { 0 } else { space }];
    // SAFETY: msghdr is plain old data; every pointer set below outlives
    // the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = addr_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: the control buffer has room for one header and the fds
        // (CMSG_SPACE above); CMSG_FIRSTHDR points into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
    }
    use std::os::fd::AsRawFd;
    // SAFETY: msg describes valid buffers (above).
    let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Takes the descriptors systemd passed to this process (once: the
/// variables are removed so that children do not see them), by name.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let vars = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    let get = |k: &str| std::env::var_os(k).map(OsString::into_vec);
    let (pid, count, names) = (get(vars[0]), get(vars[1]), get(vars[2]));
    for v in vars {
        // Called at start, before the daemon starts its threads.
        std::env::remove_var(v);
    }
    let parse = |v: Option<Vec<u8>>| -> Option<u64> { String::from_utf8(v?).ok()?.parse().ok() };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u64;
    if parse(pid) != Some(me) {
        return Vec::new();
    }
    let n = parse(count).unwrap_or(0).min(LISTEN_FDS_MAX as u64) as usize;
    let names: Vec<String> = names
        .map(|n| {
            String::from_utf8_lossy(&n)
                .split(':')
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (0..n)
        .filter_map(|i| {
            let fd = LISTEN_FDS_START + i as RawFd;
            // SAFETY: fcntl on a descriptor number; a closed one fails.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return None;
            }
            let name = names.get(i).cloned().unwrap_or_else(|| "unknown".into());
            // SAFETY: systemd passed it to us to own; nothing else does.
            Some((name, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect()
}

/// The watchdog interval systemd expects pings within, if it watches us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The service manager's side: one notification and the descriptors it
/// carries (for tests, and tools that supervise the daemon themselves).
pub fn receive(sock: &std::os::unix::net::UnixDatagram) -> io::Result<(String, Vec<OwnedFd>)> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 4096];
    let mut control = vec![0u8; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; its pointers outlive recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel filled in; each
    // SCM_RIGHTS descriptor is new and ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        fds,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_notification_carries_its_text_and_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        // The only test that sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        let file = std::fs::File::open(dir.path()).unwrap();
        assert!(notify("FDSTORE=1\nFDNAME=x", &[file.as_raw_fd()]).unwrap());
        assert!(notify("READY=1", &[]).unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let (text, fds) = receive(&server).unwrap();
        assert_eq!(text, "FDSTORE=1\nFDNAME=x");
        assert_eq!(fds.len(), 1);
        // The same file, through another descriptor.
        let a = std::fs::metadata(dir.path()).unwrap();
        let b = std::fs::metadata(format!("/proc/self/fd/{}", fds[0].as_raw_fd())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        let (text, fds) = receive(&server).unwrap();
        assert_eq!((text.as_str(), fds.len()), ("READY=1", 0));
        assert!(!notify("READY=1", &[]).unwrap(), "no-op outside systemd");
    }
}
