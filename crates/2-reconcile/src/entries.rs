//! The entries of a snapshot: a sorted map from path to [`Stat`].
//!
//! A loaded snapshot keeps the file's bytes as they are (mapped, or one
//! allocation) with a small [`Index`], instead of a map node and a path
//! allocation per entry: loading a million entries is a checksummed pass
//! over the file (design 11.4). Changes made afterwards (a refresh, a test)
//! go to a small sorted overlay; reading merges the two.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

use cj_types::Stat;

use crate::store::{Store, RELEASE_BYTES};

/// Fixed-size part of an encoded entry after its path.
pub(crate) const ENTRY_FIXED_LEN: usize = 48;

// Offsets were checked by `Snapshot::decode` (or written here); a field past
// the end reads as 0 instead of panicking (cj_types::bytes).
fn u32_at(b: &[u8], at: usize) -> u32 {
    cj_types::bytes::le_u32(b, at).unwrap_or(0)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    cj_types::bytes::le_u64(b, at).unwrap_or(0)
}

/// The offset of the entry after the one at `o`.
pub(crate) fn next_off(b: &[u8], o: usize) -> usize {
    o + 4 + u32_at(b, o) as usize + ENTRY_FIXED_LEN
}

/// The path of the entry at `o` (empty past the end: never a panic).
pub(crate) fn path_at(b: &[u8], o: usize) -> &[u8] {
    let len = u32_at(b, o) as usize;
    b.get(o + 4..o + 4 + len).unwrap_or_default()
}

fn stat_at(b: &[u8], o: usize) -> Stat {
    let f = o + 4 + u32_at(b, o) as usize;
    Stat {
        ino: u64_at(b, f),
        mode: u32_at(b, f + 8),
        uid: u32_at(b, f + 12),
        gid: u32_at(b, f + 16),
        nlink: u32_at(b, f + 20),
        size: u64_at(b, f + 24),
        mtime_ns: u64_at(b, f + 32) as i64,
        ctime_ns: u64_at(b, f + 40) as i64,
    }
}

/// Encodes one entry: `path length u32`, path, then the 48 fixed bytes.
pub(crate) fn encode_entry(out: &mut Vec<u8>, path: &[u8], s: &Stat) {
    out.extend_from_slice(&(path.len() as u32).to_le_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(&s.ino.to_le_bytes());
    out.extend_from_slice(&s.mode.to_le_bytes());
    out.extend_from_slice(&s.uid.to_le_bytes());
    out.extend_from_slice(&s.gid.to_le_bytes());
    out.extend_from_slice(&s.nlink.to_le_bytes());
    out.extend_from_slice(&s.size.to_le_bytes());
    out.extend_from_slice(&s.mtime_ns.to_le_bytes());
    out.extend_from_slice(&s.ctime_ns.to_le_bytes());
}

/// Entries per sample of an [`Index`]. Divides the snapshot file's
/// block size, so the entries of one sample never straddle a block's
/// checksum.
pub(crate) const SAMPLE: usize = 16;

/// Entries per fence of [`Index`]: every 256th entry's path is kept in
/// memory, so a lookup searches memory first and then reads at most a few
/// pages of a mapped file (a binary search over the file alone would fault
/// in a page per probe, and thousands of lookups would map most of it).
pub(crate) const FENCE: usize = 256;
const _: () = assert!(FENCE.is_multiple_of(SAMPLE));

/// Where the entries are: every [`SAMPLE`]th entry's offset and every
/// [`FENCE`]th entry's path. Built while the entries are written or checked
/// ([`IndexBuilder`]), never by reading a mapped file again.
#[derive(Clone, Default)]
pub(crate) struct Index {
    samples: Vec<u64>,
    /// The fence paths, back to back.
    fence_bytes: Vec<u8>,
    /// Where each fence path starts in `fence_bytes` (and one past the
    /// last).
    fence_offs: Vec<u64>,
    len: usize,
}

impl Index {
    fn fence(&self, j: usize) -> &[u8] {
        let a = self.fence_offs[j] as usize;
        let b = self.fence_offs[j + 1] as usize;
        &self.fence_bytes[a..b]
    }

    fn fences(&self) -> usize {
        self.fence_offs.len().saturating_sub(1)
    }
}

/// Builds an [`Index`] from the entries in order.
#[derive(Default)]
pub(crate) struct IndexBuilder {
    index: Index,
}

impl IndexBuilder {
    /// Entry number `len()` is at `off` and has `path`.
    pub(crate) fn push(&mut self, off: u64, path: &[u8]) {
        let ix = &mut self.index;
        if ix.len.is_multiple_of(SAMPLE) {
            ix.samples.push(off);
        }
        if ix.len.is_multiple_of(FENCE) {
            if ix.fence_offs.is_empty() {
                ix.fence_offs.push(0);
            }
            ix.fence_bytes.extend_from_slice(path);
            ix.fence_offs.push(ix.fence_bytes.len() as u64);
        }
        ix.len += 1;
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len
    }

    pub(crate) fn finish(mut self) -> Index {
        self.index.samples.shrink_to_fit();
        self.index.fence_bytes.shrink_to_fit();
        self.index.fence_offs.shrink_to_fit();
        self.index
    }
}

/// Encoded entries, sorted by path, validated when built.
///
/// Only every [`SAMPLE`]th entry's offset is kept (8 bytes per 16 entries):
/// entry `i` is found by stepping from the sample before it, over entries
/// that lie back to back.
#[derive(Clone, Default)]
struct Base {
    store: Store,
    index: Index,
}

impl Base {
    fn len(&self) -> usize {
        self.index.len
    }

    fn sample(&self, s: usize) -> usize {
        self.index.samples.get(s).copied().unwrap_or(0) as usize
    }

    /// Offset of entry `i`'s path length field.
    fn off(&self, i: usize) -> usize {
        let b = self.store.bytes();
        let mut o = self.sample(i / SAMPLE);
        for _ in 0..i % SAMPLE {
            o = next_off(b, o);
        }
        o
    }

    fn path(&self, i: usize) -> &[u8] {
        path_at(self.store.bytes(), self.off(i))
    }

    fn stat(&self, i: usize) -> Stat {
        stat_at(self.store.bytes(), self.off(i))
    }

    /// The first index whose path is not below `lo`.
    fn start(&self, lo: Bound<&[u8]>) -> usize {
        match lo {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.lower(k, true),
            Bound::Excluded(k) => self.lower(k, false),
        }
    }

    /// The first index past `hi`.
    fn end(&self, hi: Bound<&[u8]>) -> usize {
        match hi {
            Bound::Unbounded => self.len(),
            Bound::Included(k) => self.lower(k, false),
            Bound::Excluded(k) => self.lower(k, true),
        }
    }

    /// First index with path >= k (`inclusive`) or > k: the fences in
    /// memory narrow it to [`FENCE`] entries, a binary search among those
    /// finds it.
    fn lower(&self, k: &[u8], inclusive: bool) -> usize {
        let before = |p: &[u8]| match p.cmp(k) {
            Ordering::Less => true,
            Ordering::Equal => !inclusive,
            Ordering::Greater => false,
        };
        // Fences before `k`: the answer is past the last of them and at or
        // before the next.
        let (mut lo, mut hi) = (0usize, self.index.fences());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.index.fence(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return 0;
        }
        let (mut lo, mut hi) = ((lo - 1) * FENCE + 1, (lo * FENCE).min(self.len()));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.path(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Offset of entry `i`, or the end of the entries when `i` is past
    /// them.
    fn end_off(&self, i: usize) -> usize {
        if i < self.len() {
            self.off(i)
        } else {
            self.store.bytes().len()
        }
    }

    /// First index `>= from` whose path is `>= k`, searching outward from
    /// `from` (galloping): cheap when the answer is near, as the next child
    /// of a directory is.
    fn lower_from(&self, from: usize, k: &[u8]) -> usize {
        let n = self.len();
        if from >= n || self.path(from) >= k {
            return from;
        }
        // path(lo) < k; the answer lies in (lo, hi].
        let (mut lo, mut step) = (from, 1usize);
        let mut hi = loop {
            let probe = from.saturating_add(step);
            if probe >= n {
                break n;
            }
            if self.path(probe) >= k {
                break probe;
            }
            lo = probe;
            step = step.saturating_mul(2);
        };
        lo += 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.path(mid) < k {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The stat at path `k`. The pages the lookup read are given back:
    /// thousands of lookups must not map the file piece by piece.
    fn find(&self, k: &[u8]) -> Option<Stat> {
        let i = self.lower(k, true);
        let found = (i < self.len() && self.path(i) == k).then(|| self.stat(i));
        // The lookup read entries of one fence at most.
        let fence = i.saturating_sub(1) / FENCE * FENCE;
        self.store
            .release_around(self.end_off(fence), self.end_off(fence + FENCE + 1));
        found
    }
}

/// A sorted map from path to [`Stat`] (see the module comment).
#[derive(Clone, Default)]
pub struct Entries {
    base: Base,
    /// `None` hides a base entry.
    overlay: BTreeMap<Vec<u8>, Option<Stat>>,
    len: usize,
}

impl Entries {
    pub fn new() -> Entries {
        Entries::default()
    }

    /// Wraps already validated encoded entries in path order, with their
    /// [`Index`]; entries within a sample lie back to back.
    pub(crate) fn from_store(store: Store, index: Index) -> Entries {
        let len = index.len;
        assert_eq!(index.samples.len(), len.div_ceil(SAMPLE), "entry samples");
        assert_eq!(index.fences(), len.div_ceil(FENCE), "entry fences");
        Entries {
            base: Base { store, index },
            overlay: BTreeMap::new(),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Where the entries read before any change live: "memory" or
    /// "mapped" (tests).
    pub fn store_kind(&self) -> &'static str {
        match self.base.store {
            Store::Owned(_) => "memory",
            Store::Mapped(_) => "mapped",
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, path: &[u8]) -> Option<Stat> {
        match self.overlay.get(path) {
            Some(o) => *o,
            None => self.base.find(path),
        }
    }

    pub fn contains_key(&self, path: &[u8]) -> bool {
        self.get(path).is_some()
    }

    pub fn insert(&mut self, path: Vec<u8>, stat: Stat) {
        if self.get(&path).is_none() {
            self.len += 1;
        }
        self.overlay.insert(path, Some(stat));
    }

    pub fn remove(&mut self, path: &[u8]) {
        if self.get(path).is_none() {
            return;
        }
        self.len -= 1;
        if self.base.find(path).is_some() {
            self.overlay.insert(path.to_vec(), None);
        } else {
            self.overlay.remove(path);
        }
    }

    pub fn iter(&self) -> Range<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    /// Entries with `lo <= path <= hi` (as the bounds say), in path order.
    pub fn range<'a>(&'a self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Range<'a> {
        let bi = self.base.start(lo);
        let bend = self.base.end(hi).max(bi);
        let off = if bi < bend { self.base.off(bi) } else { 0 };
        Range {
            base: &self.base,
            start: bi,
            bi,
            bend,
            off,
            released: off,
            overlay: self.overlay.range::<[u8], _>((lo, hi)).peekable(),
        }
    }

    /// Entries from pairs sorted by path without duplicates (checked: an
    /// out-of-order pair is a bug, refused rather than stored).
    pub fn from_sorted(pairs: Vec<(Vec<u8>, Stat)>) -> Entries {
        let mut bytes = Vec::new();
        let mut index = IndexBuilder::default();
        let mut last: Option<Vec<u8>> = None;
        for (p, st) in pairs {
            if let Some(l) = &last {
                assert!(*l < p, "walk output out of order");
            }
            index.push(bytes.len() as u64, &p);
            encode_entry(&mut bytes, &p, &st);
            last = Some(p);
        }
        bytes.shrink_to_fit();
        Entries::from_store(Store::Owned(bytes), index.finish())
    }

    /// Everything in a sorted map, e.g. a walk.
    pub fn from_map(map: BTreeMap<Vec<u8>, Stat>) -> Entries {
        let len = map.len();
        Entries {
            base: Base::default(),
            overlay: map.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            len,
        }
    }

    /// `dir`'s direct children (keys `dir/name`): names and stats, in order.
    /// A child's own subtree is skipped by a galloping search, so the cost
    /// follows the number of children, not of entries below `dir`.
    pub fn children(&self, dir: &[u8]) -> Vec<(Vec<u8>, Stat)> {
        let base = dir.strip_suffix(b"/").unwrap_or(dir);
        let mut lo = base.to_vec();
        lo.push(b'/');
        let mut names: Vec<(Vec<u8>, Stat)> = Vec::new();
        // Direct children among keys in [lo, hi): seek past each child's
        // subtree (`child/` .. `child0`).
        let mut i = self.base.lower(&lo, true);
        let first = self.base.end_off(i);
        let mut released = first;
        let mut skip = Vec::new();
        while i < self.base.len() {
            let k = self.base.path(i);
            if !k.starts_with(&lo) {
                break;
            }
            let rest = &k[lo.len()..];
            let name_len = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            if name_len == rest.len() {
                match self.overlay.get(k) {
                    None => names.push((rest.to_vec(), self.base.stat(i))),
                    Some(Some(o)) => names.push((rest.to_vec(), *o)),
                    Some(None) => {}
                }
            }
            if name_len < rest.len() {
                // Deeper: jump past `lo + name + "/..."`.
                skip.clear();
                skip.extend_from_slice(&k[..lo.len() + name_len]);
                skip.push(b'/' + 1);
                i = self.base.lower_from(i, &skip);
                // The children of a big directory span most of the file:
                // what lies behind is given back as the pass goes.
                let at = self.base.end_off(i);
                if at >= released + RELEASE_BYTES {
                    self.base.store.release(released, at);
                    released = at;
                }
            } else {
                i += 1;
            }
        }
        self.base
            .store
            .release_around(first, self.base.end_off(i.min(self.base.len())));
        let mut hi = base.to_vec();
        hi.push(b'/' + 1);
        let extra: Vec<(Vec<u8>, Stat)> = self
            .overlay
            .range::<[u8], _>((Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
            .filter(|(k, _)| !k[lo.len()..].contains(&b'/'))
            .filter_map(|(k, v)| Some((k[lo.len()..].to_vec(), (*v)?)))
            .collect();
        if !extra.is_empty() {
            names.extend(extra);
            names.sort_by(|a, b| a.0.cmp(&b.0));
            names.dedup_by(|a, b| a.0 == b.0);
        }
        names
    }

    pub fn to_map(&self) -> BTreeMap<Vec<u8>, Stat> {
        self.iter().map(|(k, v)| (k.to_vec(), v)).collect()
    }
}

impl From<BTreeMap<Vec<u8>, Stat>> for Entries {
    fn from(map: BTreeMap<Vec<u8>, Stat>) -> Entries {
        Entries::from_map(map)
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
            .finish()
    }
}

/// A merged, sorted walk over the base and the overlay.
pub struct Range<'a> {
    base: &'a Base,
    /// The first base entry of the range.
    start: usize,
    bi: usize,
    bend: usize,
    /// Offset of entry `bi` (when `bi < bend`).
    off: usize,
    /// Bytes before this were given back ([`Store::release`]).
    released: usize,
    overlay: std::iter::Peekable<std::collections::btree_map::Range<'a, Vec<u8>, Option<Stat>>>,
}

impl<'a> Range<'a> {
    /// The base entry at `bi`, and a step past it.
    fn take_base(&mut self) -> (&'a [u8], Stat) {
        let base: &'a Base = self.base;
        let b = base.store.bytes();
        let got = (path_at(b, self.off), stat_at(b, self.off));
        self.bi += 1;
        self.off = if self.bi.is_multiple_of(SAMPLE) {
            self.base.sample(self.bi / SAMPLE)
        } else {
            next_off(b, self.off)
        };
        if self.off >= self.released + RELEASE_BYTES {
            // Read in order: what lies behind is not read again by this
            // range (a path already returned stays readable).
            self.base.store.release(self.released, self.off);
            self.released = self.off;
        }
        got
    }
}

impl Drop for Range<'_> {
    fn drop(&mut self) {
        // What this range read last is given back too.
        if self.bi > self.start {
            let end = self.base.end_off(self.bi);
            self.base.store.release(self.released, end);
        }
    }
}

impl<'a> Iterator for Range<'a> {
    type Item = (&'a [u8], Stat);

    fn next(&mut self) -> Option<(&'a [u8], Stat)> {
        loop {
            let base: &'a Base = self.base;
            let b = (self.bi < self.bend).then(|| path_at(base.store.bytes(), self.off));
            let o = self.overlay.peek().map(|(k, v)| (k.as_slice(), **v));
            match (b, o) {
                (None, None) => return None,
                (Some(_), None) => return Some(self.take_base()),
                (bp, Some((op, ov))) => {
                    let order = bp.map_or(Ordering::Greater, |bp| bp.cmp(op));
                    if order == Ordering::Less {
                        return Some(self.take_base());
                    }
                    if order == Ordering::Equal {
                        self.take_base();
                    }
                    self.overlay.next();
                    if let Some(s) = ov {
                        return Some((op, s));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(ino: u64) -> Stat {
        Stat {
            ino,
            ..Stat::default()
        }
    }

    fn base_of(paths: &[&[u8]]) -> Entries {
        Entries::from_sorted(
            paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_vec(), st(i as u64)))
                .collect(),
        )
    }

    #[test]
    fn overlay_merges_with_base_like_a_map() {
        let paths: Vec<&[u8]> = vec![b"/a", b"/a b", b"/a/x", b"/a/y", b"/b", b"/c/d"];
        let mut e = base_of(&paths);
        let mut m: BTreeMap<Vec<u8>, Stat> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_vec(), st(i as u64)))
            .collect();
        assert_eq!(e.to_map(), m);
        for (k, v) in [
            (&b"/a/x"[..], 9u64),
            (b"/a/z", 10),
            (b"/0", 11),
            (b"/d", 12),
        ] {
            e.insert(k.to_vec(), st(v));
            m.insert(k.to_vec(), st(v));
        }
        for k in [&b"/a/y"[..], b"/d", b"/nothing", b"/a"] {
            e.remove(k);
            m.remove(k);
        }
        assert_eq!(e.to_map(), m);
        assert_eq!(e.len(), m.len());
        for k in m.keys() {
            assert_eq!(e.get(k), m.get(k).copied());
        }
        assert_eq!(e.get(b"/a/y"), None);
        type Bounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);
        let bounds: [Bounds; 4] = [
            (Bound::Included(b"/a/"), Bound::Excluded(b"/a0")),
            (Bound::Excluded(b"/a b"), Bound::Included(b"/b")),
            (Bound::Unbounded, Bound::Excluded(b"/a/z")),
            (Bound::Included(b"/c"), Bound::Unbounded),
        ];
        for (lo, hi) in bounds {
            let got: Vec<Vec<u8>> = e.range(lo, hi).map(|(k, _)| k.to_vec()).collect();
            let want: Vec<Vec<u8>> = m
                .range::<[u8], _>((lo, hi))
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(got, want, "{lo:?}..{hi:?}");
        }
    }

    /// `children` agrees with a naive filter over the merged map, for
    /// names that sort around '/' ('-' and '0') and deep subtrees between
    /// children, with an overlay that adds and hides entries.
    #[test]
    fn children_match_a_naive_filter() {
        let mut paths: Vec<Vec<u8>> = Vec::new();
        for top in ["/r/a", "/r/a-", "/r/a0", "/r/b", "/r/b/c", "/r/z"] {
            paths.push(top.as_bytes().to_vec());
            for i in 0..40 {
                paths.push(format!("{top}/f{i:03}").into_bytes());
                paths.push(format!("{top}/g{i:03}/deep").into_bytes());
            }
        }
        paths.push(b"/r".to_vec());
        paths.push(b"/r0".to_vec());
        paths.push(b"/q/x".to_vec());
        paths.sort();
        paths.dedup();
        let refs: Vec<&[u8]> = paths.iter().map(|p| &p[..]).collect();
        let mut e = base_of(&refs);
        let mut m = e.to_map();
        for (k, add) in [
            (&b"/r/a-"[..], false),
            (b"/r/new", true),
            (b"/r/a/f005", false),
            (b"/r/a/new", true),
            (b"/r/b/c/x/y", true),
        ] {
            if add {
                e.insert(k.to_vec(), st(1));
                m.insert(k.to_vec(), st(1));
            } else {
                e.remove(k);
                m.remove(k);
            }
        }
        for dir in [
            &b"/r"[..],
            b"/r/",
            b"/r/a",
            b"/r/a-",
            b"/r/b",
            b"/r/b/c",
            b"/q",
            b"/none",
            b"/",
        ] {
            let d = dir.strip_suffix(b"/").unwrap_or(dir);
            let mut lo = d.to_vec();
            lo.push(b'/');
            let want: Vec<(Vec<u8>, Stat)> = m
                .iter()
                .filter(|(k, _)| k.starts_with(&lo) && !k[lo.len()..].contains(&b'/'))
                .map(|(k, v)| (k[lo.len()..].to_vec(), *v))
                .collect();
            assert_eq!(e.children(dir), want, "{}", String::from_utf8_lossy(dir));
        }
    }
}
