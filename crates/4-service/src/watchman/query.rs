//! Watchman queries (docs: "File Queries"): which files (generators), which
//! of them (the expression), what about each (fields), answered from cj's
//! journal when the query has a `since` clock and from a walk otherwise.
//!
//! A clock is `c:` followed by a cj cursor, so it stays valid across daemon
//! restarts and reboots. `is_fresh_instance` is true only when cj cannot
//! answer completely (a foreign or expired clock, a rescan that covers the
//! root, or a directory that went away whose contents the journal does not
//! list): the answer then lists every matching file that exists, as
//! Watchman does, so a client stays correct.

use std::collections::{BTreeMap, HashSet};

use cj_types::path::is_at_or_below;
use cj_types::Changes;

use super::expr::{self, Clocks, Expr, FileView};
use super::files::{self, Info};
use super::value::Val;

/// Files one answer may hold; past it the query fails with an error that
/// says to narrow it (memory stays bounded).
pub const QUERY_FILES_MAX: usize = 4_000_000;

/// The fields Watchman answers when none are asked for.
pub const DEFAULT_FIELDS: [&str; 5] = ["name", "exists", "new", "size", "mode"];

const FIELDS: &[&str] = &[
    "name",
    "exists",
    "new",
    "type",
    "size",
    "mode",
    "uid",
    "gid",
    "ino",
    "dev",
    "nlink",
    "mtime",
    "mtime_ms",
    "mtime_us",
    "mtime_ns",
    "mtime_f",
    "ctime",
    "ctime_ms",
    "ctime_us",
    "ctime_ns",
    "ctime_f",
    "symlink_target",
    "content.sha1hex",
    "oclock",
    "cclock",
];

/// What `since` names.
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    Clock(String),
    /// Seconds since the epoch: files whose mtime or ctime is later.
    Time(i64),
}

/// A `path` generator entry: (relative path, depth; -1 = unlimited).
pub type PathGen = (Vec<u8>, i64);
/// Candidate files by path relative to the query's base.
pub type Files = BTreeMap<Vec<u8>, Candidate>;

#[derive(Debug)]
pub struct Spec {
    pub since: Option<Since>,
    pub suffix: Option<Vec<Vec<u8>>>,
    pub glob: Option<Vec<Vec<u8>>>,
    pub glob_dotfiles: bool,
    pub glob_noescape: bool,
    pub paths: Option<Vec<PathGen>>,
    pub expr: Option<Expr>,
    pub clocks: Clocks,
    pub fields: Vec<String>,
    pub relative_root: Option<Vec<u8>>,
    pub empty_on_fresh_instance: bool,
    pub dedup_results: bool,
    pub sync_timeout_ms: u64,
}

fn err(msg: impl Into<String>) -> String {
    msg.into()
}

impl Spec {
    pub fn parse(v: &Val) -> Result<Spec, String> {
        let Val::Object(_) = v else {
            return Err(err("a query must be an object"));
        };
        let mut clocks = Clocks::default();
        let expr = match v.get("expression") {
            None => None,
            Some(e) => Some(expr::parse(e, &mut clocks)?),
        };
        let since = match v.get("since") {
            None | Some(Val::Null) => None,
            Some(Val::Int(t)) => Some(Since::Time(*t)),
            Some(c) => Some(Since::Clock(
                c.as_str()
                    .ok_or("\"since\" must be a clock string or a time")?
                    .to_string(),
            )),
        };
        let list = |key: &str| -> Result<Option<Vec<Vec<u8>>>, String> {
            match v.get(key) {
                None => Ok(None),
                Some(Val::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_bytes()
                            .map(<[u8]>::to_vec)
                            .ok_or(format!("\"{key}\" must list strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(x) => Ok(Some(vec![x
                    .as_bytes()
                    .ok_or(format!("\"{key}\" must be a string or a list"))?
                    .to_vec()])),
            }
        };
        let paths = path_generator(v.get("path"))?;
        let fields = fields_of(v.get("fields"))?;
        let flag = |k: &str| v.get(k).and_then(Val::as_bool).unwrap_or(false);
        let relative_root = match v.get("relative_root") {
            None => None,
            Some(r) => Some(clean_relative(
                r.as_bytes().ok_or("\"relative_root\" must be a string")?,
            )?),
        };
        Ok(Spec {
            since,
            suffix: list("suffix")?
                .map(|l| l.into_iter().map(|s| s.to_ascii_lowercase()).collect()),
            glob: list("glob")?,
            glob_dotfiles: flag("glob_includedotfiles"),
            glob_noescape: flag("glob_noescape"),
            paths,
            expr,
            clocks,
            fields,
            relative_root,
            empty_on_fresh_instance: flag("empty_on_fresh_instance"),
            dedup_results: flag("dedup_results"),
            sync_timeout_ms: v
                .get("sync_timeout")
                .and_then(Val::as_i64)
                .map_or(60_000, |t| t.clamp(0, 3_600_000) as u64),
        })
    }
}

/// The `path` generator: entries are strings or `{"path", "depth"}`.
fn path_generator(v: Option<&Val>) -> Result<Option<Vec<PathGen>>, String> {
    let Some(v) = v else {
        return Ok(None);
    };
    let list = v.as_array().ok_or("\"path\" must be a list")?;
    list.iter()
        .map(|p| match p {
            Val::Object(_) => Ok((
                p.get("path")
                    .and_then(Val::as_bytes)
                    .ok_or("a path generator entry needs \"path\"")?
                    .to_vec(),
                p.get("depth").and_then(Val::as_i64).unwrap_or(-1),
            )),
            other => Ok((
                other
                    .as_bytes()
                    .ok_or("\"path\" entries are strings or objects")?
                    .to_vec(),
                -1,
            )),
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

fn fields_of(v: Option<&Val>) -> Result<Vec<String>, String> {
    let Some(v) = v else {
        return Ok(DEFAULT_FIELDS.iter().map(|s| s.to_string()).collect());
    };
    let list = v.as_array().ok_or("\"fields\" must be a list")?;
    let mut out = Vec::new();
    for f in list {
        let f = f.as_str().ok_or("fields are strings")?;
        if !FIELDS.contains(&f) {
            return Err(format!("unknown field name {f:?}"));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

/// A relative path without `.`/`..` components or a leading `/`.
pub fn clean_relative(p: &[u8]) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    for part in p
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        if part == b".." {
            return Err(err("a relative path may not contain \"..\""));
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// One candidate file: its path relative to the query root, whether it was
/// created since the clock, and what the journal knew of it if it is gone.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub new: bool,
    /// The kind the journal last saw (for files that no longer exist).
    pub kind: u8,
    /// Changed since each of the expression's `since` clocks (filled by
    /// the caller).
    pub since_clocks: Vec<bool>,
}

/// The answer's file list, before fields are rendered.
pub struct Found {
    pub files: BTreeMap<Vec<u8>, Candidate>,
    pub fresh: bool,
}

/// Whether a generator admits `rel` (a path relative to the query root).
pub fn generated(spec: &Spec, rel: &[u8], kind: u8) -> bool {
    let mut any = false;
    let mut hit = false;
    if let Some(sfx) = &spec.suffix {
        any = true;
        let base = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        hit |= kind != b'd'
            && base
                .iter()
                .rposition(|&b| b == b'.')
                .is_some_and(|i| sfx.iter().any(|s| base[i + 1..].eq_ignore_ascii_case(s)));
    }
    if let Some(globs) = &spec.glob {
        any = true;
        let o = expr::Wild {
            icase: false,
            dotfiles: spec.glob_dotfiles,
            noescape: spec.glob_noescape,
        };
        hit |= globs.iter().any(|g| expr::wildmatch(g, rel, o));
    }
    if let Some(paths) = &spec.paths {
        any = true;
        hit |= paths.iter().any(|(p, depth)| {
            let p = clean_relative(p).unwrap_or_default();
            let rest = if p.is_empty() {
                Some(rel)
            } else if rel == p.as_slice() {
                Some(&b""[..])
            } else {
                rel.strip_prefix(&p[..]).and_then(|r| r.strip_prefix(b"/"))
            };
            match rest {
                None => false,
                Some([]) => true,
                Some(r) => {
                    *depth < 0 || (r.iter().filter(|&&b| b == b'/').count() as i64) <= *depth
                }
            }
        });
    }
    !any || hit
}

/// Why a walk for a query failed.
#[derive(Debug)]
pub enum WalkFailure {
    /// The directory is gone or no longer a directory.
    Vanished,
    Other(String),
}

impl From<WalkFailure> for String {
    fn from(w: WalkFailure) -> String {
        match w {
            WalkFailure::Vanished => "the directory is gone".into(),
            WalkFailure::Other(m) => m,
        }
    }
}

/// Every file below `dir` (absolute; relative names from `base`) from a
/// walk of it below the tracked `root`.
pub fn walk_files(
    root: &[u8],
    dir: &[u8],
    base: &[u8],
    excluded: &[Vec<u8>],
    out: &mut BTreeMap<Vec<u8>, Candidate>,
    new: bool,
) -> Result<(), WalkFailure> {
    let progress = cj_reconcile::WalkProgress::default();
    let entries = cj_reconcile::walk_scope(
        root,
        dir,
        excluded,
        &progress,
        cj_reconcile::Spill::memory(),
    )
    .map_err(|e| match &e {
        cj_reconcile::WalkError::Root { source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR)
            ) =>
        {
            WalkFailure::Vanished
        }
        _ => WalkFailure::Other(e.to_string()),
    })?;
    for (path, st) in entries.iter() {
        if path == base || !is_at_or_below(path, base) {
            continue;
        }
        if out.len() >= QUERY_FILES_MAX {
            return Err(WalkFailure::Other(format!(
                "more than {QUERY_FILES_MAX} files: narrow the query (relative_root, path, suffix)"
            )));
        }
        let rel = relative(path, base).to_vec();
        out.entry(rel).or_insert(Candidate {
            new,
            kind: files::kind_of(st.mode),
            since_clocks: Vec::new(),
        });
    }
    Ok(())
}

/// `path` relative to `base` (which it is at or below).
pub fn relative<'a>(path: &'a [u8], base: &[u8]) -> &'a [u8] {
    let r = &path[base.len().min(path.len())..];
    r.strip_prefix(b"/").unwrap_or(r)
}

/// Candidates by relative path, and directories that went away.
pub type Listed = (BTreeMap<Vec<u8>, Candidate>, Vec<Vec<u8>>);

/// Candidates from a cj answer: each changed path, with the files below a
/// directory that appeared (walked). Directories that went away are
/// returned apart: the journal does not list their old contents, which
/// [`expand_gone`] finds.
pub fn from_answer(
    answer: &crate::query::Answer,
    root: &[u8],
    base: &[u8],
    excluded: &[Vec<u8>],
) -> Result<Listed, String> {
    let mut out = BTreeMap::new();
    let mut gone = Vec::new();
    for e in &answer.entries {
        if !is_at_or_below(&e.path, base) || e.path == base {
            continue;
        }
        let created = e.changes.intersects(Changes::CREATED | Changes::RENAMED_TO)
            && !e
                .first
                .intersects(Changes::DELETED | Changes::RENAMED_FROM | Changes::REPLACED);
        let kind = kind_char(e.kind);
        if e.subtree {
            // What is below it now...
            if files::stat(&e.path).is_some_and(|i| i.kind() == b'd') {
                match walk_files(root, &e.path, base, excluded, &mut out, true) {
                    Ok(()) => {}
                    // Gone or replaced meanwhile: the next answer says so.
                    Err(WalkFailure::Vanished) => {}
                    Err(WalkFailure::Other(m)) => return Err(m),
                }
            }
            // ... and what was below it at the clock, unless its first
            // record made it: `expand_gone` (cj's answer need not name
            // that: a removal read after its directory was gone is folded
            // into the directory's record). Renamed within the tree, also
            // what is below its new name now and what the answer names
            // there, under the old name (`moved_back`).
            let left = Changes::DELETED | Changes::RENAMED_FROM | Changes::REPLACED;
            let made = e.first.contains(Changes::CREATED) && !e.first.intersects(left);
            if !made {
                if e.changes.contains(Changes::RENAMED_FROM) {
                    if let Some(to) = e.renamed_to.as_deref() {
                        moved_back(answer, root, &e.path, to, base, excluded, &mut out)?;
                    }
                }
                gone.push(e.path.clone());
            }
        }
        out.insert(
            relative(&e.path, base).to_vec(),
            Candidate {
                new: created,
                kind,
                since_clocks: Vec::new(),
            },
        );
    }
    Ok((out, gone))
}

/// The names below `from` at the clock of a directory renamed to `to`:
/// what is below `to` now and what the answer names below it, under the
/// old name (exists: false unless something is there again).
fn moved_back(
    answer: &crate::query::Answer,
    root: &[u8],
    from: &[u8],
    to: &[u8],
    base: &[u8],
    excluded: &[Vec<u8>],
    out: &mut Files,
) -> Result<(), String> {
    // Renamed again (and again) since: follow the names to where the tree
    // is now; every name on the way may hold entries the answer names.
    let mut chain = vec![to.to_vec()];
    while let Some(next) = answer
        .entries
        .iter()
        .find(|e| !e.exists && chain.last().is_some_and(|c| *c == e.path))
        .and_then(|e| e.renamed_to.clone())
    {
        if chain.contains(&next) || chain.len() > answer.entries.len() {
            break;
        }
        chain.push(next);
    }
    let last = chain.last().map_or(to, Vec::as_slice);
    if !is_at_or_below(last, root) {
        // Out of the tree: what it held there is not known (`expand_gone`
        // gives what it held at the clock).
        return Ok(());
    }
    let mut now = Files::new();
    match walk_files(root, last, last, excluded, &mut now, false) {
        Ok(()) | Err(WalkFailure::Vanished) => {}
        Err(WalkFailure::Other(m)) => return Err(m),
    }
    let mut moved: Vec<(Vec<u8>, u8)> = now.into_iter().map(|(r, c)| (r, c.kind)).collect();
    for name in &chain {
        moved.extend(
            answer
                .entries
                .iter()
                .filter(|e| e.path != *name && is_at_or_below(&e.path, name))
                .map(|e| (relative(&e.path, name).to_vec(), b'?')),
        );
    }
    for (rel, kind) in moved {
        let mut old = from.to_vec();
        old.push(b'/');
        old.extend_from_slice(&rel);
        if is_at_or_below(&old, base) {
            out.entry(relative(&old, base).to_vec())
                .or_insert(Candidate {
                    new: false,
                    kind,
                    since_clocks: Vec::new(),
                });
        }
    }
    Ok(())
}

/// Every path that may have been below the directories `gone` (absolute)
/// at the clock `since`, and every path the journal names below them
/// since (design 16). From the root's baseline:
/// - taken before the clock: with the journal up to the clock folded over
///   it (`cj_reconcile::fold`, which follows renames, so a directory moved
///   within the root brings what it held), minus what the fold saw leave;
/// - taken after it: as it is. A path below them at the clock is still
///   there, or what made it leave is a record after the clock: its own, or
///   one a refresh or reconciliation journaled for it (design 11.9).
///
/// `Err` with the reason if that cannot be known: no baseline, the journal
/// since it or since the clock expired or damaged, more than the fold
/// follows, or a directory whose contents the journal never named (moved
/// into the root from outside before the clock, or covered whole by a
/// refresh or reconciliation after it) at or below one of them. The query
/// is then a fresh instance.
pub fn expand_gone(
    reader: &cj_journal::Reader,
    snapshots: &std::path::Path,
    root: &[u8],
    gone: &[Vec<u8>],
    since: u64,
) -> Result<Vec<(Vec<u8>, u8)>, &'static str> {
    use cj_reconcile::fold::{Fold, Step};
    let Ok(Some(snap)) = cj_reconcile::Snapshot::load(snapshots, root) else {
        return Err("the root has no readable baseline");
    };
    let start = snap.through_seq.min(since);
    if start + 1 < reader.first_seq() {
        return Err("the journal since the baseline or the clock has expired");
    }
    let below = |p: &[u8]| {
        gone.iter()
            .any(|g| p != g.as_slice() && is_at_or_below(p, g))
    };
    let overlapping = |p: &[u8]| gone.iter().any(|g| cj_types::path::overlaps(p, g));
    let mut fold = Fold::new(root, &snap);
    let mut out: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    let mut too_many = false;
    let mut damaged = false;
    let mut covered = false;
    // Where what was below them went after the clock (a baseline taken
    // since may hold it under the new names).
    let mut moved = Moved::new(gone);
    let scanned = reader.scan(start, reader.durable_seq(), |item| {
        let r = match item {
            cj_journal::Item::Record(r) => r,
            cj_journal::Item::Damaged { .. } => {
                damaged = true;
                return false;
            }
        };
        if r.seq <= since {
            return fold.step(Step::Record(&r));
        }
        if let cj_types::RecordBody::Event(e) = r.body {
            // Before the clock the fold finds these; after it they cover
            // what a refresh or reconciliation could not name.
            covered |= snap.through_seq > since && is_cover(&e) && overlapping(&e.path);
            if snap.through_seq > since {
                moved.note(&e);
            }
            let kind = kind_char(e.kind);
            for p in [e.path, e.old_path] {
                if below(&p) {
                    out.entry(p).or_insert(kind);
                }
            }
        }
        too_many = out.len() > QUERY_FILES_MAX;
        !too_many
    });
    let (Ok(folded), Ok(()), false) = (fold.finish(), scanned, damaged) else {
        return Err("the journal since the baseline is damaged");
    };
    let t = &folded.touched;
    if too_many || folded.too_many {
        return Err("the journal since the baseline names more than is followed");
    }
    if covered
        || t.cover
            .iter()
            .chain(&folded.moved_in)
            .any(|d| overlapping(d))
    {
        return Err(UNKNOWN_CONTENTS);
    }
    if moved.too_many {
        return Err("the directories that went away were renamed too often since the clock");
    }
    held_at_clock(&snap, t, gone, &mut out)?;
    moved.held_then(&snap, &below, &mut out)?;
    Ok(out.into_iter().collect())
}

/// The names the subtrees of some directories had after the clock:
/// `(name now, name at the clock)`, followed through rename records in
/// journal order (what a rename moves out of one is followed too).
struct Moved {
    names: Vec<(Vec<u8>, Vec<u8>)>,
    known: HashSet<(Vec<u8>, Vec<u8>)>,
    too_many: bool,
}

impl Moved {
    /// Names followed at most (each costs a range of the baseline).
    const NAMES_MAX: usize = 10_000;

    fn new(gone: &[Vec<u8>]) -> Moved {
        let names: Vec<(Vec<u8>, Vec<u8>)> = gone.iter().map(|g| (g.clone(), g.clone())).collect();
        Moved {
            known: names.iter().cloned().collect(),
            names,
            too_many: false,
        }
    }

    fn note(&mut self, e: &cj_types::EventRecord) {
        let rename = e
            .changes
            .contains(Changes::RENAMED_FROM | Changes::RENAMED_TO);
        if !rename || e.old_path.is_empty() || e.path.is_empty() || self.too_many {
            return;
        }
        let (old, new) = (e.old_path.as_slice(), e.path.as_slice());
        let mut more = Vec::new();
        for (now, then) in &self.names {
            if is_at_or_below(now, old) {
                let mut to = new.to_vec();
                to.extend_from_slice(&now[old.len()..]);
                more.push((to, then.clone()));
            } else if is_at_or_below(old, now) {
                let mut was = then.clone();
                was.extend_from_slice(&old[now.len()..]);
                more.push((new.to_vec(), was));
            }
        }
        for m in more {
            if self.known.insert(m.clone()) {
                self.names.push(m);
            }
        }
        self.too_many = self.names.len() > Self::NAMES_MAX;
    }

    /// What a baseline taken after the clock holds under the names they
    /// were renamed to, added to `out` under the names they had at the
    /// clock (those `below` admits).
    fn held_then(
        &self,
        snap: &cj_reconcile::Snapshot,
        below: &dyn Fn(&[u8]) -> bool,
        out: &mut BTreeMap<Vec<u8>, u8>,
    ) -> Result<(), &'static str> {
        for (now, then) in self.names.iter().filter(|(now, then)| now != then) {
            for (p, st) in baseline_below(snap, now) {
                let mut old = then.clone();
                old.extend_from_slice(&p[now.len()..]);
                if below(&old) {
                    out.entry(old).or_insert(files::kind_of(st.mode));
                }
            }
            if out.len() > QUERY_FILES_MAX {
                return Err(TOO_MANY);
            }
        }
        Ok(())
    }
}

/// Adds to `out` what was below `gone` at the clock by the baseline and the
/// journal's view up to the clock (`t`).
fn held_at_clock(
    snap: &cj_reconcile::Snapshot,
    t: &cj_reconcile::Touched,
    gone: &[Vec<u8>],
    out: &mut BTreeMap<Vec<u8>, u8>,
) -> Result<(), &'static str> {
    use cj_reconcile::Seen;
    let below = |p: &[u8]| {
        gone.iter()
            .any(|g| p != g.as_slice() && is_at_or_below(p, g))
    };
    for g in gone {
        for (p, st) in baseline_below(snap, g) {
            if below(p) && !matches!(t.seen.get(p), Some(Seen::Gone)) {
                out.entry(p.to_vec()).or_insert(files::kind_of(st.mode));
                if out.len() > QUERY_FILES_MAX {
                    return Err(TOO_MANY);
                }
            }
        }
    }
    for (p, seen) in &t.seen {
        if let Seen::Present(kind, _) = seen {
            if below(p) {
                out.entry(p.clone()).or_insert(kind_char(*kind));
            }
        }
    }
    if out.len() > QUERY_FILES_MAX {
        return Err(TOO_MANY);
    }
    Ok(())
}

/// The baseline's entries strictly below `dir`, in path order.
fn baseline_below<'s>(
    snap: &'s cj_reconcile::Snapshot,
    dir: &[u8],
) -> impl Iterator<Item = (&'s [u8], cj_reconcile::Stat)> + 's {
    let mut hi = dir.to_vec();
    hi.push(0xff);
    let dir = dir.to_vec();
    snap.entries
        .range(
            std::ops::Bound::Included(dir.as_slice()),
            std::ops::Bound::Included(&hi[..]),
        )
        .filter(move |(p, _)| *p != dir.as_slice() && is_at_or_below(p, &dir))
}

/// A record that covers a directory's subtree because nobody could name
/// what it held (`cj_reconcile` cover records: created and deleted,
/// reconciled, a directory).
fn is_cover(e: &cj_types::EventRecord) -> bool {
    e.kind == cj_types::ObjectKind::Dir
        && e.changes
            .contains(Changes::CREATED | Changes::DELETED | Changes::RECONCILED)
        && !e.changes.contains(Changes::REPLACED)
}

/// Why [`expand_gone`] could not answer: a directory whose contents the
/// journal never named.
pub const UNKNOWN_CONTENTS: &str =
    "a directory that went away held one whose contents the journal never named";
const TOO_MANY: &str = "the directories that went away held too many files";

fn kind_char(kind: cj_types::ObjectKind) -> u8 {
    match kind {
        cj_types::ObjectKind::Dir => b'd',
        cj_types::ObjectKind::Symlink => b'l',
        cj_types::ObjectKind::File => b'f',
        _ => b'?',
    }
}

/// The paths (relative to `base`) an answer names, for a `since` term.
pub fn changed_set(answer: &crate::query::Answer, base: &[u8]) -> Option<HashSet<Vec<u8>>> {
    if !answer.rescans.is_empty() {
        return None;
    }
    let mut out = HashSet::new();
    for e in &answer.entries {
        if is_at_or_below(&e.path, base) {
            if e.subtree {
                return None;
            }
            out.insert(relative(&e.path, base).to_vec());
        }
    }
    Some(out)
}

/// One file's fields.
pub struct Render<'a> {
    pub fields: &'a [String],
    pub clock: &'a str,
    pub sha1: &'a files::Sha1Cache,
    /// (uid, groups) of the asker, for content hashes.
    pub reader: (u32, &'a [u32]),
}

impl Render<'_> {
    pub fn file(&self, abs: &[u8], rel: &[u8], c: &Candidate, info: Option<&Info>) -> Val {
        let one = |f: &str| -> Val { self.field(f, abs, rel, c, info) };
        if self.fields.len() == 1 && self.fields[0] == "name" {
            return Val::path(rel);
        }
        Val::Object(self.fields.iter().map(|f| (f.clone(), one(f))).collect())
    }

    fn field(&self, f: &str, abs: &[u8], rel: &[u8], c: &Candidate, info: Option<&Info>) -> Val {
        let int = |v: u64| Val::Int(v.min(i64::MAX as u64) as i64);
        let time = |ns: i64, unit: i64| Val::Int(ns.div_euclid(unit));
        match (f, info) {
            ("name", _) => Val::path(rel),
            ("exists", i) => Val::Bool(i.is_some()),
            ("new", _) => Val::Bool(c.new),
            ("type", Some(i)) => Val::str((i.kind() as char).to_string()),
            ("type", None) => Val::str((c.kind as char).to_string()),
            ("size", Some(i)) => int(i.size),
            ("mode", Some(i)) => int(u64::from(i.mode)),
            ("uid", Some(i)) => int(u64::from(i.uid)),
            ("gid", Some(i)) => int(u64::from(i.gid)),
            ("ino", Some(i)) => int(i.ino),
            ("dev", Some(i)) => int(i.dev),
            ("nlink", Some(i)) => int(u64::from(i.nlink)),
            ("mtime", Some(i)) => time(i.mtime_ns, 1_000_000_000),
            ("mtime_ms", Some(i)) => time(i.mtime_ns, 1_000_000),
            ("mtime_us", Some(i)) => time(i.mtime_ns, 1_000),
            ("mtime_ns", Some(i)) => Val::Int(i.mtime_ns),
            ("mtime_f", Some(i)) => Val::Real(i.mtime_ns as f64 / 1e9),
            ("ctime", Some(i)) => time(i.ctime_ns, 1_000_000_000),
            ("ctime_ms", Some(i)) => time(i.ctime_ns, 1_000_000),
            ("ctime_us", Some(i)) => time(i.ctime_ns, 1_000),
            ("ctime_ns", Some(i)) => Val::Int(i.ctime_ns),
            ("ctime_f", Some(i)) => Val::Real(i.ctime_ns as f64 / 1e9),
            ("symlink_target", Some(i)) if i.kind() == b'l' => {
                files::symlink_target(abs).map_or(Val::Null, |t| Val::path(&t))
            }
            ("content.sha1hex", Some(i)) => {
                if !files::may_read(i, self.reader.0, self.reader.1) {
                    return Val::obj([("error", Val::str("permission denied"))]);
                }
                match self.sha1.hex(abs, i) {
                    Ok(h) => Val::str(h),
                    Err(e) => Val::obj([("error", Val::str(e))]),
                }
            }
            ("oclock" | "cclock", _) => Val::str(self.clock),
            (_, None) => Val::Null,
            _ => Val::Null,
        }
    }
}

/// What the expression sees of a file.
pub fn view<'a>(rel: &'a [u8], c: &'a Candidate, info: Option<&Info>, abs: &[u8]) -> FileView<'a> {
    let kind = info.map_or(c.kind, Info::kind);
    FileView {
        name: rel,
        exists: info.is_some(),
        kind,
        size: info.map_or(0, |i| i.size),
        mtime_s: info.map_or(0, |i| i.mtime_ns.div_euclid(1_000_000_000)),
        ctime_s: info.map_or(0, |i| i.ctime_ns.div_euclid(1_000_000_000)),
        since_clocks: &c.since_clocks,
        empty_dir: kind == b'd' && info.is_some() && files::dir_is_empty(abs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        Spec::parse(&serde_json::from_str::<Val>(json).unwrap()).unwrap()
    }

    #[test]
    fn generators_select_as_documented() {
        let s = spec(r#"{"suffix": ["JS", "ts"]}"#);
        assert!(generated(&s, b"a/b.js", b'f'));
        assert!(!generated(&s, b"a/b.jsx", b'f'));
        let s = spec(r#"{"glob": ["src/**/*.rs"]}"#);
        assert!(generated(&s, b"src/a/b.rs", b'f'));
        assert!(!generated(&s, b"lib/b.rs", b'f'));
        let s = spec(r#"{"path": [{"path": "src", "depth": 0}, "doc"]}"#);
        assert!(generated(&s, b"src/a", b'f'));
        assert!(!generated(&s, b"src/a/b", b'f'));
        assert!(generated(&s, b"doc/x/y/z", b'f'));
        assert!(!generated(&s, b"srcx/a", b'f'));
        let s = spec(r#"{"suffix": "c", "path": ["x"]}"#);
        assert!(generated(&s, b"y/a.c", b'f'));
        assert!(generated(&s, b"x/a.h", b'f'));
        assert!(!generated(&s, b"y/a.h", b'f'));
        assert!(generated(&spec("{}"), b"anything", b'f'));
    }

    #[test]
    fn specs_are_checked() {
        for bad in [
            r#"[]"#,
            r#"{"fields": ["name", "colour"]}"#,
            r#"{"relative_root": "../x"}"#,
            r#"{"since": [1]}"#,
            r#"{"path": "x"}"#,
            r#"{"expression": ["nope"]}"#,
        ] {
            let v: Val = serde_json::from_str(bad).unwrap();
            assert!(Spec::parse(&v).is_err(), "{bad}");
        }
        let s = spec(r#"{"since": "c:x", "relative_root": "./a//b/", "fields": ["name"]}"#);
        assert_eq!(s.since, Some(Since::Clock("c:x".into())));
        assert_eq!(s.relative_root.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(spec("{}").fields.len(), 5);
        assert_eq!(spec(r#"{"since": 5}"#).since, Some(Since::Time(5)));
    }
}
