//! Filesystem-specific ways to find the inodes changed since a watermark
//! without walking the tree, and the filesystem identity the baseline keeps.
//!
//! - XFS: `XFS_IOC_BULKSTAT` (v5) streams every allocated inode in inode
//!   order straight from the inode btrees; we keep those whose ctime is at
//!   or after the watermark (minus [`CTIME_MARGIN_NS`]).
//! - btrfs: `BTRFS_IOC_TREE_SEARCH` over the subvolume's tree with
//!   `min_transid` skips every tree block not written since the watermark
//!   transaction; we keep the inode items whose `transid` is at or after it.
//!
//! Both need `CAP_SYS_ADMIN`, which the daemon has. Every structure is read
//! at fixed offsets from byte buffers (checked against the kernel headers,
//! `docs/design.md`, "Fast paths"); a short or odd answer is an error, never
//! a guess.

use std::collections::HashSet;
use std::os::unix::io::RawFd;

/// Changes can carry a ctime slightly before the moment the baseline's walk
/// started (coarse clock ticks); anything this close counts as changed.
pub const CTIME_MARGIN_NS: u64 = 2_000_000_000;
/// Changed inodes collected before the fast path gives up (the generic walk
/// is as good when this much changed).
pub const CHANGED_INODES_MAX: usize = 2_000_000;

const XFS_IOC_BULKSTAT: libc::c_ulong = 0x8040_587f;
const XFS_BULK_IREQ_LEN: usize = 64;
const XFS_BULKSTAT_LEN: usize = 192;
/// Inodes per `XFS_IOC_BULKSTAT` call.
const XFS_BULKSTAT_BATCH: usize = 4096;
const XFS_IOC_FSGEOMETRY: libc::c_ulong = 0x8100_587e;
const XFS_FSOP_GEOM_LEN: usize = 256;
/// `XFS_BULK_IREQ_AGNO`: only the allocation group in `agno`.
const XFS_BULK_IREQ_AGNO: u32 = 1;
/// Allocation groups read at once (each by its own thread): the inode
/// btrees of different groups are independent, so the reads overlap.
pub const XFS_BULKSTAT_THREADS: usize = 4;

const BTRFS_IOC_TREE_SEARCH: libc::c_ulong = 0xd000_9411;
const BTRFS_IOC_FS_INFO: libc::c_ulong = 0x8400_941f;
const BTRFS_IOC_START_SYNC: libc::c_ulong = 0x8008_9418;
const BTRFS_IOC_WAIT_SYNC: libc::c_ulong = 0x4008_9416;
const BTRFS_SEARCH_ARGS_LEN: usize = 4096;
const BTRFS_SEARCH_KEY_LEN: usize = 104;
const BTRFS_SEARCH_HEADER_LEN: usize = 32;
const BTRFS_INODE_ITEM_KEY: u32 = 1;
const BTRFS_INODE_ITEM_LEN: usize = 160;
const BTRFS_FS_INFO_FLAG_GENERATION: u64 = 1 << 1;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume root.
pub const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;

const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;

/// How changed inodes can be found on a filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Walk and compare (every filesystem).
    Walk,
    Xfs,
    Btrfs,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Walk => "walk",
            Method::Xfs => "xfs-bulkstat",
            Method::Btrfs => "btrfs-tree-search",
        }
    }
}

/// What a baseline remembers about the filesystem and the clocks when its
/// walk started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsMarks {
    /// `CLOCK_REALTIME`, ns.
    pub realtime_ns: u64,
    /// `CLOCK_BOOTTIME`, ns: with `boot_id`, tells a clock step.
    pub boottime_ns: u64,
    pub boot_id: [u8; 16],
    /// The filesystem's UUID (`FS_IOC_GETFSUUID`, or btrfs' fsid); zero if
    /// the filesystem has none.
    pub fs_uuid: [u8; 16],
    /// btrfs: the lowest transaction id a change after the walk started can
    /// carry; zero elsewhere.
    pub generation: u64,
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and output pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec.max(0) as u64) * 1_000_000_000 + ts.tv_nsec.max(0) as u64
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), as 16 bytes;
/// zeros if unreadable.
pub fn boot_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        if hex.len() == 32 {
            for (i, pair) in hex.chunks(2).enumerate() {
                let s = std::str::from_utf8(pair).unwrap_or("00");
                out[i] = u8::from_str_radix(s, 16).unwrap_or(0);
            }
        }
    }
    out
}

/// The fast method the filesystem of `fd` offers, if any.
pub fn probe(fd: RawFd) -> Method {
    use cj_types::sys::fs_magic;
    match cj_types::sys::fs_magic_of(fd) {
        Ok(fs_magic::XFS) => Method::Xfs,
        Ok(fs_magic::BTRFS) => Method::Btrfs,
        _ => Method::Walk,
    }
}

fn ioctl(fd: RawFd, req: libc::c_ulong, buf: &mut [u64]) -> std::io::Result<()> {
    // SAFETY: `buf` is writable, 8-byte aligned and at least as large as the
    // structure the request names (checked by each caller).
    let rc = unsafe { libc::ioctl(fd, req as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: any u64 slice is a valid byte slice of 8x the length.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) }
}

fn bytes_mut(buf: &mut [u64]) -> &mut [u8] {
    // SAFETY: as `bytes`; u8 has no invalid values.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8) }
}

use cj_types::bytes::le_u32 as u32_at;
use cj_types::bytes::le_u64 as u64_at;

fn btrfs_fs_info(fd: RawFd) -> std::io::Result<([u8; 16], Option<u64>)> {
    let mut args = vec![0u64; 1024 / 8];
    bytes_mut(&mut args)[48..56].copy_from_slice(&BTRFS_FS_INFO_FLAG_GENERATION.to_le_bytes());
    ioctl(fd, BTRFS_IOC_FS_INFO, &mut args)?;
    let b = bytes(&args);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    let flags = u64_at(b, 48).unwrap_or(0);
    let generation = (flags & BTRFS_FS_INFO_FLAG_GENERATION != 0)
        .then(|| u64_at(b, 56))
        .flatten();
    Ok((uuid, generation))
}

/// The filesystem's UUID, zeros if it has none or the kernel cannot say.
pub fn fs_uuid(fd: RawFd) -> [u8; 16] {
    if probe(fd) == Method::Btrfs {
        if let Ok((uuid, _)) = btrfs_fs_info(fd) {
            return uuid;
        }
    }
    // struct fsuuid2 { __u8 len; __u8 uuid[16]; }
    let mut buf = vec![0u64; 3];
    if ioctl(fd, FS_IOC_GETFSUUID, &mut buf).is_err() {
        return [0; 16];
    }
    let b = bytes(&buf);
    let len = usize::from(b[0]).min(16);
    let mut uuid = [0u8; 16];
    uuid[..len].copy_from_slice(&b[1..1 + len]);
    uuid
}

/// The lowest btrfs transaction id any change from now on can carry.
///
/// The current generation alone would do (a change made now lands in the
/// running transaction or a later one), but it would also count everything
/// in that transaction, which can hold minutes of earlier writes. So the
/// running transaction is committed first (`START_SYNC` returns its id):
/// if no newer one has started when the generation is read, changes from now
/// on land in a later one.
fn btrfs_watermark(fd: RawFd) -> Option<u64> {
    let mut id = vec![0u64; 1];
    let committed = ioctl(fd, BTRFS_IOC_START_SYNC, &mut id)
        .and_then(|()| {
            let mut wait = vec![id[0]];
            ioctl(fd, BTRFS_IOC_WAIT_SYNC, &mut wait)
        })
        .ok()
        .map(|()| id[0]);
    let generation = btrfs_fs_info(fd).ok().and_then(|(_, g)| g)?;
    Some(match committed {
        Some(c) if c == generation => c + 1,
        _ => generation,
    })
}

/// Reads the marks for a walk of the filesystem of `fd` that starts now.
pub fn marks(fd: RawFd) -> FsMarks {
    let generation = if probe(fd) == Method::Btrfs {
        btrfs_watermark(fd).unwrap_or(0)
    } else {
        0
    };
    FsMarks {
        realtime_ns: clock_ns(libc::CLOCK_REALTIME),
        boottime_ns: clock_ns(libc::CLOCK_BOOTTIME),
        boot_id: boot_id(),
        fs_uuid: fs_uuid(fd),
        generation,
    }
}

/// Why a fast path cannot be trusted for a baseline; `None` if it can.
pub fn distrust(method: Method, then: &FsMarks, now: &FsMarks) -> Option<&'static str> {
    if then.fs_uuid != now.fs_uuid {
        return Some("the filesystem changed identity since the baseline");
    }
    match method {
        Method::Walk => Some("the filesystem has no fast path"),
        Method::Btrfs if then.generation == 0 || now.generation < then.generation => {
            Some("the btrfs generation went backwards (restored or rolled-back filesystem)")
        }
        Method::Btrfs => None,
        Method::Xfs => {
            if now.realtime_ns < then.realtime_ns {
                return Some("the clock is behind the baseline's");
            }
            if then.boot_id == now.boot_id && then.boot_id != [0; 16] {
                // Same boot: REALTIME - BOOTTIME moves only when the clock
                // is set; backwards means ctimes may lie below the watermark.
                let off_then = then.realtime_ns as i128 - then.boottime_ns as i128;
                let off_now = now.realtime_ns as i128 - now.boottime_ns as i128;
                if off_now + (CTIME_MARGIN_NS as i128) < off_then {
                    return Some("the clock was set back since the baseline");
                }
            }
            None
        }
    }
}

/// Inodes of the filesystem of `fd` changed at or after `since`
/// (`Method::Xfs`: ctime; `Method::Btrfs`: transaction id), or an error.
pub fn changed_inodes(fd: RawFd, method: Method, since: &FsMarks) -> std::io::Result<HashSet<u64>> {
    match method {
        Method::Xfs => xfs_changed(fd, since.realtime_ns.saturating_sub(CTIME_MARGIN_NS)),
        Method::Btrfs => {
            // The tree holds an inode's new transaction id only once its
            // dirty data and delayed inode item are written back: a file
            // appended to while cj was down, not yet written back, still
            // carries its old id even after a transaction commit (found
            // by the Watchman oracle, `btrfs_changes_not_yet_written_back_
            // are_found`). `syncfs` writes them back first.
            // SAFETY: a valid descriptor.
            if unsafe { libc::syncfs(fd) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            btrfs_changed(fd, since.generation)
        }
        Method::Walk => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
    }
}

fn too_many() -> std::io::Error {
    std::io::Error::other(format!(
        "more than {CHANGED_INODES_MAX} inodes changed; walking instead"
    ))
}

fn xfs_agcount(fd: RawFd) -> std::io::Result<u32> {
    let mut geom = vec![0u64; XFS_FSOP_GEOM_LEN / 8];
    ioctl(fd, XFS_IOC_FSGEOMETRY, &mut geom)?;
    match u32_at(bytes(&geom), 12) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
    }
}

fn xfs_changed(fd: RawFd, since_ns: u64) -> std::io::Result<HashSet<u64>> {
    let ags = xfs_agcount(fd)?;
    let next_ag = std::sync::atomic::AtomicU32::new(0);
    let results: Vec<std::io::Result<HashSet<u64>>> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..XFS_BULKSTAT_THREADS.min(ags as usize))
            .map(|_| {
                sc.spawn(|| {
                    let mut out = HashSet::new();
                    loop {
                        let ag = next_ag.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if ag >= ags {
                            return Ok(out);
                        }
                        xfs_changed_in_ag(fd, ag, since_ns, &mut out)?;
                        if out.len() > CHANGED_INODES_MAX {
                            return Err(too_many());
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("bulkstat thread panicked")))
            })
            .collect()
    });
    let mut all = HashSet::new();
    for r in results {
        all.extend(r?);
        if all.len() > CHANGED_INODES_MAX {
            return Err(too_many());
        }
    }
    Ok(all)
}

/// Adds the inodes of allocation group `ag` changed at or after `since_ns`.
fn xfs_changed_in_ag(
    fd: RawFd,
    ag: u32,
    since_ns: u64,
    out: &mut HashSet<u64>,
) -> std::io::Result<()> {
    let len = XFS_BULK_IREQ_LEN + XFS_BULKSTAT_LEN * XFS_BULKSTAT_BATCH;
    let mut buf = vec![0u64; len / 8];
    let mut next: u64 = 0;
    loop {
        {
            let b = bytes_mut(&mut buf);
            b[..XFS_BULK_IREQ_LEN].fill(0);
            b[0..8].copy_from_slice(&next.to_le_bytes());
            b[8..12].copy_from_slice(&XFS_BULK_IREQ_AGNO.to_le_bytes());
            b[12..16].copy_from_slice(&(XFS_BULKSTAT_BATCH as u32).to_le_bytes());
            b[20..24].copy_from_slice(&ag.to_le_bytes());
        }
        ioctl(fd, XFS_IOC_BULKSTAT, &mut buf)?;
        let b = bytes(&buf);
        let got = u32_at(b, 16).unwrap_or(0) as usize;
        if got == 0 {
            return Ok(());
        }
        if got > XFS_BULKSTAT_BATCH {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        for i in 0..got {
            let at = XFS_BULK_IREQ_LEN + i * XFS_BULKSTAT_LEN;
            let ino = u64_at(b, at).unwrap_or(0);
            let sec = u64_at(b, at + 48).unwrap_or(0) as i64;
            let nsec = u32_at(b, at + 88).unwrap_or(0);
            let ctime = sec
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::from(nsec));
            if ctime < 0 || ctime as u64 >= since_ns {
                out.insert(ino);
            }
        }
        let after = u64_at(b, 0).unwrap_or(0);
        if after <= next {
            // The kernel always moves the cursor forward; anything else
            // would loop forever.
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        next = after;
    }
}

fn btrfs_changed(fd: RawFd, since_gen: u64) -> std::io::Result<HashSet<u64>> {
    let mut out = HashSet::new();
    let (mut objectid, mut kind, mut offset) = (0u64, BTRFS_INODE_ITEM_KEY, 0u64);
    let mut args = vec![0u64; BTRFS_SEARCH_ARGS_LEN / 8];
    loop {
        {
            let k = bytes_mut(&mut args);
            k[..BTRFS_SEARCH_KEY_LEN].fill(0);
            // tree_id 0: the subvolume holding `fd`.
            k[8..16].copy_from_slice(&objectid.to_le_bytes());
            k[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            k[24..32].copy_from_slice(&offset.to_le_bytes());
            k[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
            k[40..48].copy_from_slice(&since_gen.to_le_bytes());
            k[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
            k[56..60].copy_from_slice(&kind.to_le_bytes());
            k[60..64].copy_from_slice(&255u32.to_le_bytes());
            k[64..68].copy_from_slice(&4096u32.to_le_bytes());
        }
        ioctl(fd, BTRFS_IOC_TREE_SEARCH, &mut args)?;
        let b = bytes(&args);
        let items = u32_at(b, 64).unwrap_or(0);
        if items == 0 {
            return Ok(out);
        }
        let data = &b[BTRFS_SEARCH_KEY_LEN..];
        let mut at = 0usize;
        let mut last = None;
        for _ in 0..items {
            let h = data
                .get(at..at + BTRFS_SEARCH_HEADER_LEN)
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?;
            let obj = u64_at(h, 8).unwrap_or(0);
            let off = u64_at(h, 16).unwrap_or(0);
            let typ = u32_at(h, 24).unwrap_or(0);
            let len = u32_at(h, 28).unwrap_or(0) as usize;
            let item = data
                .get(at + BTRFS_SEARCH_HEADER_LEN..at + BTRFS_SEARCH_HEADER_LEN + len)
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EIO))?;
            if typ == BTRFS_INODE_ITEM_KEY && len >= BTRFS_INODE_ITEM_LEN {
                let transid = u64_at(item, 8).unwrap_or(u64::MAX);
                if transid >= since_gen {
                    out.insert(obj);
                }
            }
            last = Some((obj, typ, off));
            at += BTRFS_SEARCH_HEADER_LEN + len;
        }
        if out.len() > CHANGED_INODES_MAX {
            return Err(too_many());
        }
        let Some((o, t, f)) = last else {
            return Ok(out);
        };
        // The next key after the last one returned.
        (objectid, kind, offset) = if f < u64::MAX {
            (o, t, f + 1)
        } else if t < 255 {
            (o, t + 1, 0)
        } else if o < u64::MAX {
            (o + 1, 0, 0)
        } else {
            return Ok(out);
        };
    }
}
