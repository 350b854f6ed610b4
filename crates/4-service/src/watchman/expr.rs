//! Watchman's expression language (docs: "Expression Terms"): parsed from
//! a request into [`Expr`], evaluated on one file at a time. Pure: every
//! term is table-tested below against Watchman's documented semantics.

use super::value::Val;

/// Terms nested deeper than this are refused.
pub const EXPR_DEPTH_MAX: usize = 32;

/// What an expression sees of one file.
#[derive(Clone, Debug, Default)]
pub struct FileView<'a> {
    /// Relative to the query's root (or `relative_root`), no leading `/`.
    pub name: &'a [u8],
    pub exists: bool,
    /// `f`, `d`, `l`, `b`, `c`, `p`, `s` or `?`.
    pub kind: u8,
    pub size: u64,
    pub mtime_s: i64,
    pub ctime_s: i64,
    /// Changed since each clock of the query's `since` terms, in order.
    pub since_clocks: &'a [bool],
    /// A directory with no entries.
    pub empty_dir: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Basename,
    Wholename,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn parse(s: &str) -> Result<Cmp, String> {
        Ok(match s {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            _ => return Err(format!("unknown comparison {s:?}")),
        })
    }

    fn test(self, a: i64, b: i64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeField {
    Mtime,
    Ctime,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    True,
    False,
    AllOf(Vec<Expr>),
    AnyOf(Vec<Expr>),
    Not(Box<Expr>),
    /// Lower-case suffixes, without the dot.
    Suffix(Vec<Vec<u8>>),
    Match {
        pattern: Vec<u8>,
        scope: Scope,
        icase: bool,
        dotfiles: bool,
        noescape: bool,
    },
    Name {
        names: Vec<Vec<u8>>,
        scope: Scope,
        icase: bool,
    },
    Dirname {
        dir: Vec<u8>,
        depth: Option<(Cmp, i64)>,
        icase: bool,
    },
    Type(u8),
    Exists,
    Empty,
    Size(Cmp, i64),
    /// Changed since the query's n-th `since` clock.
    SinceClock(usize),
    SinceTime(TimeField, i64),
}

/// Clocks named by `since` terms, collected while parsing (the query
/// answers each once).
#[derive(Default, Debug)]
pub struct Clocks(pub Vec<String>);

pub fn parse(v: &Val, clocks: &mut Clocks) -> Result<Expr, String> {
    parse_at(v, clocks, 0)
}

// long: one arm per term of the expression language, read as a table
fn parse_at(v: &Val, clocks: &mut Clocks, depth: usize) -> Result<Expr, String> {
    if depth > EXPR_DEPTH_MAX {
        return Err("expression nested too deeply".into());
    }
    // A bare string is a term without arguments.
    let (name, args): (&str, &[Val]) = match v {
        Val::Str(_) | Val::Bytes(_) => (v.as_str().unwrap_or(""), &[]),
        Val::Array(a) if !a.is_empty() => (
            a[0].as_str()
                .ok_or("an expression term name must be a string")?,
            &a[1..],
        ),
        _ => return Err(format!("expected an expression term, got {}", short(v))),
    };
    let sub = |vals: &[Val], clocks: &mut Clocks| -> Result<Vec<Expr>, String> {
        vals.iter()
            .map(|x| parse_at(x, clocks, depth + 1))
            .collect()
    };
    let arg = |i: usize| -> Result<&Val, String> {
        args.get(i)
            .ok_or_else(|| format!("\"{name}\" needs more arguments"))
    };
    Ok(match name {
        "true" => Expr::True,
        "false" => Expr::False,
        "allof" => Expr::AllOf(sub(args, clocks)?),
        "anyof" => Expr::AnyOf(sub(args, clocks)?),
        "not" => Expr::Not(Box::new(parse_at(arg(0)?, clocks, depth + 1)?)),
        "suffix" => Expr::Suffix(
            strings(arg(0)?)?
                .into_iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        ),
        "match" | "imatch" => {
            let pattern = arg(0)?
                .as_bytes()
                .ok_or("\"match\" needs a pattern string")?
                .to_vec();
            let scope = scope_arg(args.get(1))?;
            let opts = args.get(2);
            let flag = |k: &str| {
                opts.and_then(|o| o.get(k))
                    .and_then(Val::as_bool)
                    .unwrap_or(false)
            };
            Expr::Match {
                pattern,
                scope,
                icase: name == "imatch",
                dotfiles: flag("includedotfiles"),
                noescape: flag("noescape"),
            }
        }
        "name" | "iname" => Expr::Name {
            names: strings(arg(0)?)?,
            scope: scope_arg(args.get(1))?,
            icase: name == "iname",
        },
        "dirname" | "idirname" => {
            let dir = arg(0)?
                .as_bytes()
                .ok_or("\"dirname\" needs a directory string")?;
            let dir = dir.strip_suffix(b"/").unwrap_or(dir).to_vec();
            let depth = match args.get(1) {
                None => None,
                Some(d) => {
                    let a = d.as_array().ok_or("dirname depth: [\"depth\", OP, N]")?;
                    match a {
                        [k, op, n] if k.as_str() == Some("depth") => Some((
                            Cmp::parse(op.as_str().unwrap_or(""))?,
                            n.as_i64().ok_or("dirname depth must be an integer")?,
                        )),
                        _ => return Err("dirname depth: [\"depth\", OP, N]".into()),
                    }
                }
            };
            Expr::Dirname {
                dir,
                depth,
                icase: name == "idirname",
            }
        }
        "type" => {
            let t = arg(0)?.as_str().ok_or("\"type\" needs a type letter")?;
            match t.as_bytes() {
                [c @ (b'b' | b'c' | b'd' | b'f' | b'p' | b'l' | b's' | b'D')] => Expr::Type(*c),
                _ => return Err(format!("unknown file type {t:?}")),
            }
        }
        "exists" => Expr::Exists,
        "empty" => Expr::Empty,
        "size" => {
            let op = Cmp::parse(arg(0)?.as_str().unwrap_or(""))?;
            let n = arg(1)?.as_i64().ok_or("\"size\" needs an integer")?;
            Expr::Size(op, n)
        }
        "since" => match arg(0)? {
            Val::Int(t) => Expr::SinceTime(time_field(args.get(1))?, *t),
            clock => {
                let c = clock.as_str().ok_or("\"since\" needs a clock or a time")?;
                let field = args.get(1).and_then(Val::as_str).unwrap_or("oclock");
                match field {
                    "oclock" | "cclock" => {}
                    _ => {
                        return Err(format!(
                            "\"since\" with a clock compares oclock or cclock, not {field}"
                        ))
                    }
                }
                clocks.0.push(c.to_string());
                Expr::SinceClock(clocks.0.len() - 1)
            }
        },
        other => return Err(format!("unknown expression term {other:?}")),
    })
}

fn short(v: &Val) -> String {
    let s = v.to_json().to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

fn strings(v: &Val) -> Result<Vec<Vec<u8>>, String> {
    match v {
        Val::Array(a) => a
            .iter()
            .map(|x| {
                x.as_bytes()
                    .map(<[u8]>::to_vec)
                    .ok_or("expected strings".to_string())
            })
            .collect(),
        other => Ok(vec![other
            .as_bytes()
            .ok_or("expected a string or an array of strings")?
            .to_vec()]),
    }
}

fn scope_arg(v: Option<&Val>) -> Result<Scope, String> {
    match v.map(|v| v.as_str()) {
        None | Some(Some("basename")) => Ok(Scope::Basename),
        Some(Some("wholename")) => Ok(Scope::Wholename),
        _ => Err("scope must be \"basename\" or \"wholename\"".into()),
    }
}

fn time_field(v: Option<&Val>) -> Result<TimeField, String> {
    match v.map(|v| v.as_str()) {
        None | Some(Some("mtime")) => Ok(TimeField::Mtime),
        Some(Some("ctime")) => Ok(TimeField::Ctime),
        _ => Err("\"since\" with a time compares mtime or ctime".into()),
    }
}

fn basename(name: &[u8]) -> &[u8] {
    name.rsplit(|&b| b == b'/').next().unwrap_or(name)
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

impl Expr {
    // long: one arm per term of the expression language, read as a table
    pub fn eval(&self, f: &FileView<'_>) -> bool {
        match self {
            Expr::True => true,
            Expr::False => false,
            Expr::AllOf(list) => list.iter().all(|e| e.eval(f)),
            Expr::AnyOf(list) => list.iter().any(|e| e.eval(f)),
            Expr::Not(e) => !e.eval(f),
            Expr::Suffix(list) => {
                let base = basename(f.name);
                match base.iter().rposition(|&b| b == b'.') {
                    Some(i) if i + 1 < base.len() => {
                        let ext = lower(&base[i + 1..]);
                        list.contains(&ext)
                    }
                    _ => false,
                }
            }
            Expr::Match {
                pattern,
                scope,
                icase,
                dotfiles,
                noescape,
            } => {
                let subject = match scope {
                    Scope::Basename => basename(f.name),
                    Scope::Wholename => f.name,
                };
                let opts = Wild {
                    icase: *icase,
                    dotfiles: *dotfiles,
                    noescape: *noescape,
                };
                wildmatch(pattern, subject, opts)
            }
            Expr::Name {
                names,
                scope,
                icase,
            } => {
                let subject = match scope {
                    Scope::Basename => basename(f.name),
                    Scope::Wholename => f.name,
                };
                if *icase {
                    let s = lower(subject);
                    names.iter().any(|n| lower(n) == s)
                } else {
                    names.iter().any(|n| n.as_slice() == subject)
                }
            }
            Expr::Dirname { dir, depth, icase } => {
                let (name, dir) = if *icase {
                    (lower(f.name), lower(dir))
                } else {
                    (f.name.to_vec(), dir.clone())
                };
                // Strictly below `dir` ("" is the root); depth counts the
                // directories between.
                let rest = if dir.is_empty() {
                    Some(&name[..])
                } else {
                    name.strip_prefix(&dir[..])
                        .and_then(|r| r.strip_prefix(b"/"))
                };
                match rest {
                    Some(r) if !r.is_empty() => {
                        let d = r.iter().filter(|&&b| b == b'/').count() as i64;
                        depth.is_none_or(|(op, n)| op.test(d, n))
                    }
                    _ => false,
                }
            }
            // A file that is gone keeps the type last seen; one whose type
            // nobody saw (`?`) may have been any (a false positive at worst).
            Expr::Type(t) => f.kind == *t || f.kind == b'?',
            Expr::Exists => f.exists,
            Expr::Empty => {
                f.exists && ((f.kind == b'f' && f.size == 0) || (f.kind == b'd' && f.empty_dir))
            }
            Expr::Size(op, n) => f.exists && op.test(f.size as i64, *n),
            Expr::SinceClock(i) => f.since_clocks.get(*i).copied().unwrap_or(true),
            Expr::SinceTime(field, t) => {
                let v = match field {
                    TimeField::Mtime => f.mtime_s,
                    TimeField::Ctime => f.ctime_s,
                };
                v > *t
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Wild {
    pub icase: bool,
    /// `*`, `?` and classes may match a `.` that starts a name.
    pub dotfiles: bool,
    /// `\` is an ordinary character.
    pub noescape: bool,
}

/// Git's wildmatch as Watchman uses it: `*` and `?` stop at `/`; `**`
/// as a whole path component matches any number of components; `[...]`
/// classes with `!`/`^` negation and ranges. Without `dotfiles`, a name
/// starting with `.` is matched only by a literal `.`.
pub fn wildmatch(pattern: &[u8], text: &[u8], o: Wild) -> bool {
    let (p, t) = if o.icase {
        (lower(pattern), lower(text))
    } else {
        (pattern.to_vec(), text.to_vec())
    };
    // Bounded work: memoised on (pattern position, text position).
    let mut memo = vec![None; (p.len() + 1) * (t.len() + 1)];
    wm(&p, &t, 0, 0, o, &mut memo)
}

fn name_start(t: &[u8], ti: usize) -> bool {
    ti == 0 || t[ti - 1] == b'/'
}

fn wm(p: &[u8], t: &[u8], pi: usize, ti: usize, o: Wild, memo: &mut [Option<bool>]) -> bool {
    let key = pi * (t.len() + 1) + ti;
    if let Some(r) = memo[key] {
        return r;
    }
    let r = wm_step(p, t, pi, ti, o, memo);
    memo[key] = Some(r);
    r
}

fn wm_step(p: &[u8], t: &[u8], pi: usize, ti: usize, o: Wild, memo: &mut [Option<bool>]) -> bool {
    if pi == p.len() {
        return ti == t.len();
    }
    let hidden = |ti: usize| !o.dotfiles && ti < t.len() && t[ti] == b'.' && name_start(t, ti);
    match p[pi] {
        b'*' if p.get(pi + 1) == Some(&b'*') => {
            let mut end = pi;
            while end < p.len() && p[end] == b'*' {
                end += 1;
            }
            let component = (pi == 0 || p[pi - 1] == b'/') && (end == p.len() || p[end] == b'/');
            if component {
                // `**/` matches zero or more whole components; a final
                // `**` matches everything left.
                if end == p.len() {
                    return !segments_hidden(t, ti, t.len(), o);
                }
                let after = end + 1;
                if wm(p, t, after, ti, o, memo) {
                    return true;
                }
                let mut k = ti;
                while k < t.len() {
                    if t[k] == b'/' {
                        if segments_hidden(t, ti, k, o) {
                            return false;
                        }
                        if wm(p, t, after, k + 1, o, memo) {
                            return true;
                        }
                    }
                    k += 1;
                }
                false
            } else {
                // Not a whole component: like `*`.
                star(p, t, end, ti, o, memo)
            }
        }
        b'*' => star(p, t, pi + 1, ti, o, memo),
        b'?' => ti < t.len() && t[ti] != b'/' && !hidden(ti) && wm(p, t, pi + 1, ti + 1, o, memo),
        b'[' => match class(p, pi, t.get(ti).copied(), o) {
            Some((matched, next)) => {
                matched && t[ti] != b'/' && !hidden(ti) && wm(p, t, next, ti + 1, o, memo)
            }
            // An unclosed `[` is literal.
            None => ti < t.len() && t[ti] == b'[' && wm(p, t, pi + 1, ti + 1, o, memo),
        },
        b'\\' if !o.noescape && pi + 1 < p.len() => {
            ti < t.len() && t[ti] == p[pi + 1] && wm(p, t, pi + 2, ti + 1, o, memo)
        }
        c => ti < t.len() && t[ti] == c && wm(p, t, pi + 1, ti + 1, o, memo),
    }
}

/// True if a name in `t[from..to]` starts with a hidden `.`.
fn segments_hidden(t: &[u8], from: usize, to: usize, o: Wild) -> bool {
    !o.dotfiles && (from..to).any(|i| t[i] == b'.' && name_start(t, i))
}

/// `*`: any run of non-`/` bytes, then the rest of the pattern.
fn star(p: &[u8], t: &[u8], next: usize, ti: usize, o: Wild, memo: &mut [Option<bool>]) -> bool {
    if !o.dotfiles && ti < t.len() && t[ti] == b'.' && name_start(t, ti) {
        // A hidden name: `*` may match only the empty string here.
        return wm(p, t, next, ti, o, memo);
    }
    let mut k = ti;
    loop {
        if wm(p, t, next, k, o, memo) {
            return true;
        }
        if k >= t.len() || t[k] == b'/' {
            return false;
        }
        k += 1;
    }
}

/// A `[...]` class at `p[pi]`: whether `c` matches, and where the pattern
/// goes on; `None` if it is not closed.
fn class(p: &[u8], pi: usize, c: Option<u8>, o: Wild) -> Option<(bool, usize)> {
    let mut i = pi + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let b = *p.get(i)?;
        if b == b']' && !first {
            break;
        }
        first = false;
        let (lo, len) = if b == b'\\' && !o.noescape {
            (*p.get(i + 1)?, 2)
        } else {
            (b, 1)
        };
        i += len;
        let hi = if p.get(i) == Some(&b'-') && p.get(i + 1).is_some_and(|&x| x != b']') {
            let h = p[i + 1];
            i += 2;
            h
        } else {
            lo
        };
        if let Some(c) = c {
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    Some((c.is_some() && matched != negate, i + 1))
}

#[cfg(test)]
mod tests;
