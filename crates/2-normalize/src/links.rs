//! Names of multiply-linked files known from the baselines (issue 9,
//! defect 7).
//!
//! A change to a file with `nlink > 1` changes every name of it (content,
//! mode and ctime are per inode). Names the daemon saw in events are in the
//! name cache; names made before the daemon started are not, and without
//! them the change becomes an unknown-path record (a rescan of the roots on
//! that filesystem). Every baseline knows those names: the reconciler
//! publishes each baseline's multiply-linked entries here, keyed by
//! filesystem and inode number, and normalisation takes them as candidates.
//! A candidate is only ever reported after `name_to_handle_at` proves it
//! names the same object now, so a stale index costs a lookup, never a
//! wrong record.

use std::collections::HashMap;
use std::sync::RwLock;

/// Paths held at most, over all roots; a baseline with more multiply-linked
/// entries than fit publishes none (its changes fall back to the rescan).
pub const LINKED_PATHS_MAX: usize = 1 << 20;

#[derive(Default)]
pub struct LinkIndex {
    inner: RwLock<Inner>,
}

/// Inode number -> the paths a baseline holds for it.
type ByInode = HashMap<u64, Vec<Vec<u8>>>;

#[derive(Default)]
struct Inner {
    /// Root -> (fsid, its entries).
    roots: HashMap<Vec<u8>, (u64, ByInode)>,
    paths: usize,
}

impl LinkIndex {
    /// Replaces what is known for `root` (on filesystem `fsid`) by the
    /// multiply-linked `(inode, path)` entries of its new baseline.
    pub fn publish(&self, root: &[u8], fsid: u64, linked: impl Iterator<Item = (u64, Vec<u8>)>) {
        let mut by_ino: ByInode = HashMap::new();
        let mut n = 0usize;
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let others = inner.paths - inner.roots.get(root).map_or(0, |(_, m)| count(m));
        for (ino, path) in linked {
            n += 1;
            if others + n > LINKED_PATHS_MAX {
                by_ino.clear();
                n = 0;
                break;
            }
            by_ino.entry(ino).or_default().push(path);
        }
        inner.roots.insert(root.to_vec(), (fsid, by_ino));
        inner.paths = others + n;
    }

    pub fn forget(&self, root: &[u8]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = inner.roots.remove(root) {
            inner.paths -= count(&m);
        }
    }

    /// Every path the baselines on `fsid` hold for inode `ino`.
    pub fn names(&self, fsid: u64, ino: u64) -> Vec<Vec<u8>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .roots
            .values()
            .filter(|(f, _)| *f == fsid)
            .filter_map(|(_, m)| m.get(&ino))
            .flatten()
            .cloned()
            .collect()
    }
}

fn count(m: &ByInode) -> usize {
    m.values().map(Vec::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_names_are_found_by_filesystem_and_inode_and_replaced() {
        let ix = LinkIndex::default();
        ix.publish(
            b"/a",
            1,
            vec![(5, b"/a/x".to_vec()), (5, b"/a/y".to_vec())].into_iter(),
        );
        ix.publish(b"/b", 2, vec![(5, b"/b/z".to_vec())].into_iter());
        assert_eq!(ix.names(1, 5), vec![b"/a/x".to_vec(), b"/a/y".to_vec()]);
        assert_eq!(ix.names(2, 5), vec![b"/b/z".to_vec()]);
        assert!(ix.names(1, 6).is_empty());
        ix.publish(b"/a", 1, std::iter::empty());
        assert!(ix.names(1, 5).is_empty());
        ix.forget(b"/b");
        assert!(ix.names(2, 5).is_empty());
        assert_eq!(ix.inner.read().unwrap().paths, 0);
    }
}
