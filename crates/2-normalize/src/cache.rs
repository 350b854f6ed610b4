//! Bounded caches: directory handle -> path (+ descriptor), and file handle
//! -> names seen. Both are plain hash maps that are emptied when full: simple,
//! bounded, and a miss only costs one `open_by_handle_at`.

use std::collections::HashMap;
use std::os::unix::io::OwnedFd;

/// Directories kept with their path and, once needed, an `O_PATH` descriptor.
/// Bounded below the default soft `RLIMIT_NOFILE` headroom the daemon raises.
pub const DIR_CACHE_ENTRIES_MAX: usize = 8192;
/// File handles whose names are remembered (for handle-only events).
pub const NAME_CACHE_ENTRIES_MAX: usize = 262_144;
/// Names remembered per file handle (hard links).
pub const NAMES_PER_FILE_MAX: usize = 8;

/// Cache key: fsid, handle type and handle bytes.
pub fn key_into(out: &mut Vec<u8>, fsid: u64, handle_type: i32, handle: &[u8]) {
    out.clear();
    out.extend_from_slice(&fsid.to_le_bytes());
    out.extend_from_slice(&handle_type.to_le_bytes());
    out.extend_from_slice(handle);
}

pub struct CachedDir {
    pub path: Vec<u8>,
    pub fd: Option<OwnedFd>,
}

#[derive(Default)]
pub struct DirCache {
    map: HashMap<Vec<u8>, CachedDir>,
    /// Keys given a descriptor since the last [`DirCache::drop_fds`], so
    /// that dropping costs what was opened, not the cache's size (it runs
    /// after every read that empties the kernel queue).
    with_fd: Vec<Vec<u8>>,
    /// `with_fd` overflowed: some descriptors are not listed.
    with_fd_overflow: bool,
}

impl DirCache {
    pub fn get(&self, key: &[u8]) -> Option<&CachedDir> {
        self.map.get(key)
    }

    /// Gives a cached directory its descriptor; false if it is not cached.
    pub fn set_fd(&mut self, key: &[u8], fd: OwnedFd) -> bool {
        let Some(d) = self.map.get_mut(key) else {
            return false;
        };
        d.fd = Some(fd);
        self.note_fd(key);
        true
    }

    pub fn insert(&mut self, key: &[u8], path: Vec<u8>, fd: Option<OwnedFd>) {
        if self.map.len() >= DIR_CACHE_ENTRIES_MAX && !self.map.contains_key(key) {
            self.map.clear();
            self.with_fd.clear();
        }
        if fd.is_some() {
            self.note_fd(key);
        }
        self.map.insert(key.to_vec(), CachedDir { path, fd });
    }

    fn note_fd(&mut self, key: &[u8]) {
        if self.with_fd.len() < DIR_CACHE_ENTRIES_MAX {
            self.with_fd.push(key.to_vec());
        } else {
            // Past the bound the list says nothing: drop_fds looks at all.
            self.with_fd.clear();
            self.with_fd_overflow = true;
        }
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    /// Closes every descriptor, keeping the paths: a tracked filesystem
    /// the daemon holds nothing open on can be unmounted.
    pub fn drop_fds(&mut self) {
        if std::mem::take(&mut self.with_fd_overflow) {
            for d in self.map.values_mut() {
                d.fd = None;
            }
        }
        for key in self.with_fd.drain(..) {
            if let Some(d) = self.map.get_mut(&key) {
                d.fd = None;
            }
        }
    }

    /// Drops every entry of one filesystem (its root was untracked or
    /// unmounted: the descriptors would keep the superblock alive).
    pub fn clear_fs(&mut self, fsid: u64) {
        let fsid = fsid.to_le_bytes();
        self.map.retain(|k, _| !k.starts_with(&fsid));
    }

    /// Drops every directory at or below `path` on the filesystem `fsid`:
    /// after a directory rename or removal their cached paths are wrong.
    pub fn invalidate_below(&mut self, fsid: u64, path: &[u8]) {
        let fsid = fsid.to_le_bytes();
        self.map
            .retain(|k, v| !(k.starts_with(&fsid) && is_at_or_below(&v.path, path)));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// True if `path` is `root` or inside it.
pub use cj_types::path::is_at_or_below;

#[derive(Default)]
pub struct NameCache {
    map: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

impl NameCache {
    pub fn add(&mut self, key: &[u8], path: &[u8]) {
        if self.map.len() >= NAME_CACHE_ENTRIES_MAX && !self.map.contains_key(key) {
            self.map.clear();
        }
        let names = self.map.entry(key.to_vec()).or_default();
        if !names.iter().any(|n| n == path) {
            if names.len() >= NAMES_PER_FILE_MAX {
                names.remove(0);
            }
            names.push(path.to_vec());
        }
    }

    pub fn remove_name(&mut self, key: &[u8], path: &[u8]) {
        if let Some(names) = self.map.get_mut(key) {
            names.retain(|n| n != path);
            if names.is_empty() {
                self.map.remove(key);
            }
        }
    }

    /// A directory was renamed: names below it move with it. O(entries),
    /// bounded by `NAME_CACHE_ENTRIES_MAX`; directory renames are rare next
    /// to file events.
    pub fn move_below(&mut self, old: &[u8], new: &[u8]) {
        for names in self.map.values_mut() {
            for n in names.iter_mut() {
                if is_at_or_below(n, old) {
                    let mut moved = new.to_vec();
                    moved.extend_from_slice(&n[old.len()..]);
                    *n = moved;
                }
            }
        }
    }

    /// A directory left every root or vanished: its names are unknown now.
    pub fn forget_below(&mut self, old: &[u8]) {
        for names in self.map.values_mut() {
            names.retain(|n| !is_at_or_below(n, old));
        }
        self.map.retain(|_, v| !v.is_empty());
    }

    pub fn take(&mut self, key: &[u8]) -> Vec<Vec<u8>> {
        self.map.remove(key).unwrap_or_default()
    }

    pub fn get(&self, key: &[u8]) -> &[Vec<u8>] {
        self.map.get(key).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// The name cache as a file, for the next run of the daemon when it takes
/// over this run's fanotify group (design 5.9): `"CJNM"`, `version u32`
/// (1), `entries u32`, then per entry `key_len u16`, key, `names u8`, per
/// name `len u32` and the bytes; last `crc32c u32` of everything before.
/// Little-endian.
const NAMES_MAGIC: &[u8; 4] = b"CJNM";
const NAMES_VERSION: u32 = 1;

impl NameCache {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(NAMES_MAGIC);
        out.extend_from_slice(&NAMES_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u32).to_le_bytes());
        for (key, names) in &self.map {
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(key);
            out.push(names.len() as u8);
            for n in names {
                out.extend_from_slice(&(n.len() as u32).to_le_bytes());
                out.extend_from_slice(n);
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` unless the bytes are exactly what [`NameCache::encode`]
    /// writes (checksum, version, lengths, bounds).
    pub fn decode(bytes: &[u8]) -> Option<NameCache> {
        use cj_types::bytes::{le_u16, le_u32};
        let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
        if le_u32(crc, 0)? != crc32c::crc32c(body) || body.get(..4)? != NAMES_MAGIC {
            return None;
        }
        if le_u32(body, 4)? != NAMES_VERSION {
            return None;
        }
        let entries = le_u32(body, 8)? as usize;
        if entries > NAME_CACHE_ENTRIES_MAX {
            return None;
        }
        let mut at = 12;
        let mut cache = NameCache::default();
        for _ in 0..entries {
            let klen = le_u16(body, at)? as usize;
            let key = body.get(at + 2..at + 2 + klen)?.to_vec();
            at += 2 + klen;
            let count = *body.get(at)? as usize;
            at += 1;
            if count == 0 || count > NAMES_PER_FILE_MAX {
                return None;
            }
            let mut names = Vec::with_capacity(count);
            for _ in 0..count {
                let len = le_u32(body, at)? as usize;
                names.push(body.get(at + 4..at.checked_add(4 + len)?)?.to_vec());
                at += 4 + len;
            }
            cache.map.insert(key, names);
        }
        (at == body.len()).then_some(cache)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_cache_round_trips_and_rejects_damage() {
        let mut n = NameCache::default();
        n.add(b"k1", b"/a/b");
        n.add(b"k1", b"/a/\xff\n");
        n.add(b"k2", b"/c");
        let bytes = n.encode();
        let back = NameCache::decode(&bytes).unwrap();
        assert_eq!(back.get(b"k1"), n.get(b"k1"));
        assert_eq!(back.get(b"k2"), n.get(b"k2"));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(NameCache::decode(&bad).is_none(), "byte {i}");
        }
        assert!(NameCache::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(NameCache::decode(b"").is_none());
    }

    use super::*;

    #[test]
    fn below() {
        assert!(is_at_or_below(b"/a/b", b"/a"));
        assert!(is_at_or_below(b"/a", b"/a"));
        assert!(!is_at_or_below(b"/ab", b"/a"));
        assert!(is_at_or_below(b"/x", b"/"));
    }

    #[test]
    fn dropping_descriptors_closes_every_one_given() {
        let fd = || std::fs::File::open("/").unwrap().into();
        let mut d = DirCache::default();
        d.insert(b"a", b"/a".to_vec(), Some(fd()));
        d.insert(b"b", b"/b".to_vec(), None);
        assert!(d.set_fd(b"b", fd()));
        assert!(!d.set_fd(b"c", fd()));
        // Past the list's bound every entry is looked at.
        for i in 0..DIR_CACHE_ENTRIES_MAX + 1 {
            d.insert(&i.to_le_bytes(), b"/x".to_vec(), Some(fd()));
        }
        d.insert(b"z", b"/z".to_vec(), Some(fd()));
        d.drop_fds();
        assert!(d.map.values().all(|e| e.fd.is_none()));
        assert!(d.map.values().all(|e| !e.path.is_empty()));
    }

    #[test]
    fn caches_stay_bounded() {
        let mut d = DirCache::default();
        for i in 0..DIR_CACHE_ENTRIES_MAX * 2 {
            d.insert(&i.to_le_bytes(), vec![b'/'], None);
        }
        assert!(d.len() <= DIR_CACHE_ENTRIES_MAX);
        let mut n = NameCache::default();
        for i in 0..20 {
            n.add(b"k", format!("/{i}").as_bytes());
        }
        assert_eq!(n.get(b"k").len(), NAMES_PER_FILE_MAX);
    }
}
