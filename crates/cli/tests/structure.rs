//! The code's shape, checked like behaviour (issue 10): no module imports
//! a module that imports it back, in any crate; and no function in the
//! service crate is longer than `FN_LINES_MAX` lines unless a `// long:`
//! comment right above it says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FN_LINES_MAX: usize = 80;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `a/b.rs` -> "a" (the top module a file belongs to); `lib.rs` -> root.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    if name == "lib" || name == "main" {
        "(root)".into()
    } else {
        name
    }
}

/// The code before `#[cfg(test)] mod tests`, without `//` comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top modules `code` refers to through `crate::`, and (for the root)
/// through `use module::`.
fn deps(code: &str, modules: &BTreeSet<String>, is_root: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |name: &str| {
        if modules.contains(name) {
            out.insert(name.to_string());
        } else if !name.is_empty() {
            out.insert("(root)".to_string());
        }
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                add(ident(item.trim()));
            }
        } else {
            add(ident(rest));
        }
    }
    if is_root {
        for line in code.lines() {
            let l = line.trim_start().trim_start_matches("pub ");
            if let Some(rest) = l.strip_prefix("use ") {
                let name = ident(rest);
                if modules.contains(name) && rest[name.len()..].starts_with("::") {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut cycles = Vec::new();
    for krate in std::fs::read_dir(workspace().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files.iter().map(|f| top_module(&src, f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            if f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let m = top_module(&src, f);
            let text = std::fs::read_to_string(f).unwrap();
            let mut d = deps(&code(&text), &modules, m == "(root)");
            d.remove(&m);
            graph.entry(m).or_default().extend(d);
        }
        for (a, ds) in &graph {
            for b in ds {
                if a < b && graph.get(b).is_some_and(|x| x.contains(a)) {
                    cycles.push(format!("{}: {a} <-> {b}", src.display()));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn service_functions_are_short_or_say_why() {
    let src = workspace().join("crates/4-service/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "async fn "]
                .iter()
                .any(|p| t.starts_with(p));
            if !is_fn || t.ends_with(';') {
                continue;
            }
            let indent = &l[..l.len() - t.len()];
            let close = format!("{indent}}}");
            let Some(end) = lines[i + 1..].iter().position(|x| *x == close) else {
                continue;
            };
            let n = end + 2;
            let excused = i > 0 && lines[i - 1].trim_start().starts_with("// long:");
            if n > FN_LINES_MAX && !excused {
                long.push(format!("{}:{} {n} lines: {t}", f.display(), i + 1));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {FN_LINES_MAX} lines:\n{}",
        long.join("\n")
    );
}
