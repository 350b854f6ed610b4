//! The Watchman commands (docs/watchman.md lists what each answers).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cj_types::path::is_at_or_below;
use cj_types::protocol::RescanReason;
use cj_types::Cursor;

use super::query::{self, Render, Since, Spec};
use super::value::Val;
use super::{files, subscribe, Conn, Endpoint, CAPABILITIES, VERSION, WATCHES_MAX};

/// Files whose presence makes a directory a project root for
/// `watch-project`, in Watchman's default order.
pub const ROOT_FILES: [&str; 4] = [".watchmanconfig", ".git", ".hg", ".svn"];

/// A clock: `c:` and a cj cursor.
pub fn clock_of(c: &Cursor) -> String {
    format!("c:{}", c.encode())
}

fn cursor_of(clock: &str) -> Result<Cursor, RescanReason> {
    let text = clock.strip_prefix("c:").unwrap_or(clock);
    Cursor::parse(text).map_err(|_| RescanReason::ForeignCursor)
}

pub fn command(ep: &Arc<Endpoint>, conn: &Arc<Conn>, req: &Val) -> Result<Val, String> {
    let args = req
        .as_array()
        .ok_or("a command is an array: [NAME, ARGS...]")?;
    let name = args
        .first()
        .and_then(Val::as_str)
        .ok_or("a command starts with its name")?;
    let arg = |i: usize| args.get(i).ok_or(format!("{name}: missing argument {i}"));
    match name {
        "version" => Ok(version(args.get(1))?),
        "list-capabilities" => Ok(Val::obj([(
            "capabilities",
            Val::Array(CAPABILITIES.iter().map(|c| Val::str(*c)).collect()),
        )])),
        "get-sockname" => {
            let s = Val::path(ep.socket.as_os_str().as_encoded_bytes());
            Ok(Val::obj([("sockname", s.clone()), ("unix_domain", s)]))
        }
        "get-config" => {
            root_of(ep, conn, arg(1)?)?;
            Ok(Val::obj([("config", Val::Object(Vec::new()))]))
        }
        "watch" => {
            let root = root_of(ep, conn, arg(1)?)?;
            watch(ep, &root)?;
            Ok(Val::obj([("watch", Val::path(&root)), ("watcher", Val::str("cj"))]))
        }
        "watch-project" => watch_project(ep, conn, arg(1)?),
        "watch-list" => {
            let w = ep.watches.lock().unwrap_or_else(|e| e.into_inner());
            let visible = w
                .iter()
                .filter(|r| conn.client.access.is_admin() || conn.client.access.sees(r))
                .map(|r| Val::path(r))
                .collect();
            Ok(Val::obj([("roots", Val::Array(visible))]))
        }
        "watch-del" => {
            let root = root_of(ep, conn, arg(1)?)?;
            let mut w = ep.watches.lock().unwrap_or_else(|e| e.into_inner());
            let had = w.contains(&root);
            w.retain(|r| *r != root);
            // cj keeps tracking (other clients may use the journal).
            Ok(Val::obj([("watch-del", Val::Bool(had)), ("root", Val::path(&root))]))
        }
        "watch-del-all" => Err("watch-del-all is not supported: cj keeps tracking every tree".into()),
        "clock" => {
            let root = root_of(ep, conn, arg(1)?)?;
            let end = ep.ctx.sync().map_err(|f| f.message)?;
            let c = Cursor {
                journal_id: ep.ctx.reader.journal_id(),
                seq: end,
            };
            let _ = root;
            Ok(Val::obj([("clock", Val::str(clock_of(&c)))]))
        }
        "query" => {
            let root = root_of(ep, conn, arg(1)?)?;
            let spec = Spec::parse(arg(2)?)?;
            Ok(run_query(ep, conn, &root, &spec)?.0)
        }
        "find" | "since" => legacy(ep, conn, name, args),
        "subscribe" => subscribe::subscribe(ep, conn, args),
        "unsubscribe" => subscribe::unsubscribe(ep, conn, args),
        "flush-subscriptions" => subscribe::flush(ep, conn, args),
        "state-enter" | "state-leave" => subscribe::state(ep, conn, args, name == "state-enter"),
        "shutdown-server" => Err(
            "shutdown-server is refused: this is cj's Watchman endpoint; stop cj with `systemctl stop cj` (or SIGTERM)"
                .into(),
        ),
        "log" | "log-level" | "debug-recrawl" | "debug-ageout" | "trigger" | "trigger-del" | "trigger-list" => Err(
            format!("{name} is not supported by cj's Watchman endpoint (docs/watchman.md)"),
        ),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn version(opts: Option<&Val>) -> Result<Val, String> {
    let mut out = Val::obj([
        ("version", Val::str(VERSION)),
        (
            "buildinfo",
            Val::str(concat!("cj ", env!("CARGO_PKG_VERSION"))),
        ),
    ]);
    let Some(opts) = opts else {
        return Ok(out);
    };
    let names = |k: &str| -> Vec<String> {
        opts.get(k)
            .and_then(Val::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut caps = Vec::new();
    for c in names("optional").into_iter().chain(names("required")) {
        caps.push((c.clone(), Val::Bool(CAPABILITIES.contains(&c.as_str()))));
    }
    if let Some(missing) = names("required")
        .into_iter()
        .find(|c| !CAPABILITIES.contains(&c.as_str()))
    {
        return Err(format!(
            "client required capability `{missing}` is not supported by cj's Watchman endpoint"
        ));
    }
    out.set("capabilities", Val::Object(caps));
    Ok(out)
}

/// An absolute path argument the client may see, inside a tracked tree.
pub fn root_of(ep: &Endpoint, conn: &Conn, v: &Val) -> Result<Vec<u8>, String> {
    let p = v.as_bytes().ok_or("a root must be a path string")?;
    if !p.starts_with(b"/") {
        return Err(format!(
            "{} is not an absolute path",
            String::from_utf8_lossy(p)
        ));
    }
    let mut root = b"/".to_vec();
    root.extend(query::clean_relative(p)?);
    conn.client
        .access
        .scopes(Some(&root))
        .map_err(|e| format!("permission denied: {e}"))?;
    crate::server::check_tracked(&ep.ctx, &root).map_err(|f| {
        if conn.client.access.is_admin() {
            format!("{} (or `watch` it first)", f.message)
        } else {
            f.message
        }
    })?;
    Ok(root)
}

fn watch(ep: &Endpoint, root: &[u8]) -> Result<(), String> {
    let mut w = ep.watches.lock().unwrap_or_else(|e| e.into_inner());
    if !w.iter().any(|r| r == root) {
        if w.len() >= WATCHES_MAX {
            return Err(format!("more than {WATCHES_MAX} watches; watch-del some"));
        }
        w.push(root.to_vec());
    }
    Ok(())
}

/// `watch-project`: the nearest enclosing directory with a root file (or
/// the directory itself), tracked if needed (root only).
fn watch_project(ep: &Endpoint, conn: &Conn, v: &Val) -> Result<Val, String> {
    let p = v.as_bytes().ok_or("watch-project needs a path")?;
    if !p.starts_with(b"/") {
        return Err(format!(
            "{} is not an absolute path",
            String::from_utf8_lossy(p)
        ));
    }
    let mut dir = b"/".to_vec();
    dir.extend(query::clean_relative(p)?);
    conn.client
        .access
        .scopes(Some(&dir))
        .map_err(|e| format!("permission denied: {e}"))?;
    if files::stat(&dir).map(|i| i.kind()) != Some(b'd') {
        return Err(format!(
            "{} is not a directory",
            String::from_utf8_lossy(&dir)
        ));
    }
    // The nearest enclosing directory with a root file that the client
    // may see, else the directory itself.
    let mut root = dir.clone();
    let mut at: &[u8] = &dir;
    loop {
        let has = ROOT_FILES.iter().any(|f| {
            let mut c = at.to_vec();
            if !c.ends_with(b"/") {
                c.push(b'/');
            }
            c.extend_from_slice(f.as_bytes());
            files::stat(&c).is_some()
        });
        if has {
            if conn.client.access.is_admin() || conn.client.access.sees(at) {
                root = at.to_vec();
            }
            break;
        }
        match cj_normalize::sys::split_parent(at) {
            Some((parent, _)) if !parent.is_empty() => at = parent,
            _ => break,
        }
    }
    if !captured(ep, &root) {
        if !conn.client.access.is_admin() {
            return Err(format!(
                "{} is not in a tracked tree; ask the administrator to track it (`cj track`)",
                String::from_utf8_lossy(&root)
            ));
        }
        crate::server::track(&ep.ctx, root.clone(), true).map_err(|f| f.message)?;
    }
    watch(ep, &root)?;
    let mut out = Val::obj([("watch", Val::path(&root)), ("watcher", Val::str("cj"))]);
    let rel = query::relative(&dir, &root);
    if !rel.is_empty() {
        out.set("relative_path", Val::path(rel));
    }
    Ok(out)
}

/// `find ROOT [PATTERN...]` and `since ROOT CLOCK [PATTERN...]`: a query
/// whose patterns match basenames.
fn legacy(ep: &Arc<Endpoint>, conn: &Arc<Conn>, name: &str, args: &[Val]) -> Result<Val, String> {
    let root = root_of(ep, conn, args.get(1).ok_or("missing root")?)?;
    let mut rest = &args[2.min(args.len())..];
    let mut q = vec![(
        "fields".to_string(),
        Val::Array(query::DEFAULT_FIELDS.iter().map(|f| Val::str(*f)).collect()),
    )];
    if name == "since" {
        let c = rest.first().ok_or("since needs a clock")?.clone();
        q.push(("since".into(), c));
        rest = &rest[1..];
    }
    if !rest.is_empty() {
        let terms: Vec<Val> = rest
            .iter()
            .map(|p| Val::Array(vec![Val::str("match"), p.clone()]))
            .collect();
        let mut any = vec![Val::str("anyof")];
        any.extend(terms);
        q.push(("expression".into(), Val::Array(any)));
    }
    let spec = Spec::parse(&Val::Object(q))?;
    Ok(run_query(ep, conn, &root, &spec)?.0)
}

/// One query's setting: where it looks and until when it waits.
struct Q<'a> {
    ep: &'a Endpoint,
    conn: &'a Conn,
    spec: &'a Spec,
    base: Vec<u8>,
    tracked: Vec<u8>,
    deadline: Instant,
}

impl Q<'_> {
    /// cj's answer since `clock` below the query's base (waiting for a
    /// gap to be closed until the deadline, scoped catch-up included).
    fn answer_since(&self, clock: &str) -> Result<crate::query::Answer, String> {
        let scopes = [self.base.clone()];
        let (mut a, _permit) = crate::server::answer_when_ready(
            &self.ep.ctx,
            cursor_of(clock),
            Some(&scopes),
            self.deadline,
        )
        .map_err(|f| f.message)?;
        if !self.conn.client.access.is_admin() {
            crate::query::hide_outside(&mut a, |p| self.conn.client.access.sees(p));
        }
        Ok(a)
    }

    /// The files changed since `clock`; `None`: a fresh instance.
    fn since_clock(&self, clock: &str) -> Result<(Option<query::Files>, Cursor), String> {
        let a = self.answer_since(clock)?;
        let since_seq = cursor_of(clock).map_or(0, |c| c.seq);
        if !a.rescans.is_empty() {
            crate::logging::log(format!(
                "watchman: a fresh instance for {} since {clock}: cj's answer names a scope to rescan",
                cj_types::log_path(&self.base)
            ));
            return Ok((None, a.cursor));
        }
        let (mut files, gone) =
            query::from_answer(&a, &self.tracked, &self.base, &self.ep.excluded)?;
        if gone.is_empty() {
            return Ok((Some(files), a.cursor));
        }
        let paths = match query::expand_gone(
            &self.ep.ctx.reader,
            &self.ep.ctx.snapshots,
            &self.tracked,
            &gone,
            since_seq,
        ) {
            Ok(paths) => paths,
            Err(why) => {
                crate::logging::log(format!(
                    "watchman: a fresh instance for {} since {clock}: {why}",
                    cj_types::log_path(&self.base)
                ));
                return Ok((None, a.cursor));
            }
        };
        for (p, kind) in paths.iter().filter(|(p, _)| is_at_or_below(p, &self.base)) {
            files
                .entry(query::relative(p, &self.base).to_vec())
                .or_insert(query::Candidate {
                    new: false,
                    kind: *kind,
                    since_clocks: Vec::new(),
                });
        }
        Ok((Some(files), a.cursor))
    }

    /// Every file below the base, from a walk.
    fn everything(
        &self,
        new: bool,
        into: &mut BTreeMap<Vec<u8>, query::Candidate>,
    ) -> Result<(), String> {
        query::walk_files(
            &self.tracked,
            &self.base,
            &self.base,
            &self.ep.excluded,
            into,
            new,
        )
        .map_err(String::from)
    }
}

/// Runs a query; returns the response and its clock.
pub fn run_query(
    ep: &Endpoint,
    conn: &Conn,
    root: &[u8],
    spec: &Spec,
) -> Result<(Val, Cursor), String> {
    let base = match &spec.relative_root {
        Some(r) if !r.is_empty() => join(root, r),
        _ => root.to_vec(),
    };
    let q = Q {
        ep,
        conn,
        spec,
        tracked: tracked_root(ep, &base)?,
        base,
        deadline: Instant::now() + Duration::from_millis(spec.sync_timeout_ms),
    };
    let mut found = BTreeMap::new();
    let (fresh, cursor) = match &spec.since {
        Some(Since::Clock(c)) => match q.since_clock(c)? {
            (Some(files), cursor) => {
                found = files;
                (false, cursor)
            }
            (None, cursor) => {
                if !spec.empty_on_fresh_instance {
                    q.everything(true, &mut found)?;
                }
                (true, cursor)
            }
        },
        // No clock, or a time (then an mtime/ctime filter in `files`):
        // everything is looked at.
        _ => {
            let end = ep.ctx.sync().map_err(|f| f.message)?;
            q.everything(false, &mut found)?;
            let journal_id = ep.ctx.reader.journal_id();
            (
                false,
                Cursor {
                    journal_id,
                    seq: end,
                },
            )
        }
    };
    // Each `since` term's clock, answered once.
    let mut changed = Vec::new();
    for c in &spec.clocks.0 {
        changed.push(query::changed_set(&q.answer_since(c)?, &q.base));
    }
    let clock = clock_of(&cursor);
    let out = files_of(&q, found, fresh, &changed, &clock);
    crate::shared::WATCHMAN_QUERIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if fresh {
        crate::shared::WATCHMAN_FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let response = Val::obj([
        ("version", Val::str(VERSION)),
        ("clock", Val::str(clock)),
        ("is_fresh_instance", Val::Bool(fresh)),
        ("files", Val::Array(out)),
    ]);
    Ok((response, cursor))
}

/// The candidates that pass the generators and the expression, rendered.
fn files_of(
    q: &Q<'_>,
    found: BTreeMap<Vec<u8>, query::Candidate>,
    fresh: bool,
    changed: &[Option<std::collections::HashSet<Vec<u8>>>],
    clock: &str,
) -> Vec<Val> {
    let (spec, conn) = (q.spec, q.conn);
    let render = Render {
        fields: &spec.fields,
        clock,
        sha1: &q.ep.sha1,
        reader: (conn.client.uid, &conn.gids),
    };
    let since_time = match &spec.since {
        Some(Since::Time(t)) => Some(*t),
        _ => None,
    };
    let mut out = Vec::new();
    for (rel, mut c) in found {
        let abs = join(&q.base, &rel);
        if !conn.client.access.is_admin() && !conn.client.access.sees(&abs) {
            continue;
        }
        let info = files::stat(&abs);
        // Only a `since` clock's answer lists files that are gone.
        if (fresh || !matches!(spec.since, Some(Since::Clock(_)))) && info.is_none() {
            continue;
        }
        if !query::generated(spec, &rel, info.map_or(c.kind, |i| i.kind())) {
            continue;
        }
        if let (Some(t), Some(i)) = (since_time, info.as_ref()) {
            let s = |ns: i64| ns.div_euclid(1_000_000_000);
            if s(i.mtime_ns) <= t && s(i.ctime_ns) <= t {
                continue;
            }
        }
        c.since_clocks = changed
            .iter()
            .map(|set| set.as_ref().is_none_or(|s| s.contains(&rel)))
            .collect();
        if let Some(e) = &spec.expr {
            if !e.eval(&query::view(&rel, &c, info.as_ref(), &abs)) {
                continue;
            }
        }
        out.push(render.file(&abs, &rel, &c, info.as_ref()));
    }
    out
}

fn join(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

/// True if `path` is at or below a tracked root.
fn captured(ep: &Endpoint, path: &[u8]) -> bool {
    ep.ctx.roots().iter().any(|r| is_at_or_below(path, &r.path))
}

/// The tracked root that holds `path` (the deepest).
fn tracked_root(ep: &Endpoint, path: &[u8]) -> Result<Vec<u8>, String> {
    ep.ctx
        .roots()
        .into_iter()
        .filter(|r| r.unavailable.is_none() && is_at_or_below(path, &r.path))
        .max_by_key(|r| r.path.len())
        .map(|r| r.path)
        .ok_or_else(|| {
            format!(
                "{} is not inside a tracked tree that is captured now (`cj status`); \
                 watch-project it, or ask the administrator to track it",
                String::from_utf8_lossy(path)
            )
        })
}
