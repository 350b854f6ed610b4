//! Table tests against Watchman's documented semantics
//! (facebook.github.io/watchman/docs/expr/*).

use super::*;

fn w(p: &str, t: &str) -> bool {
    wildmatch(p.as_bytes(), t.as_bytes(), Wild::default())
}

#[test]
fn wildmatch_follows_watchmans_rules() {
    let table: &[(&str, &str, bool)] = &[
        ("*.js", "a.js", true),
        ("*.js", "dir/a.js", false),
        ("**/*.js", "dir/sub/a.js", true),
        ("**/*.js", "a.js", true),
        ("dir/**", "dir/a/b", true),
        ("dir/**/b", "dir/b", true),
        ("dir/**/b", "dir/x/y/b", true),
        ("a**b", "axxb", true),
        ("a**b", "ax/xb", false),
        ("a?c", "abc", true),
        ("a?c", "a/c", false),
        ("[a-c]x", "bx", true),
        ("[!a-c]x", "dx", true),
        ("[!a-c]x", "ax", false),
        ("[^a]x", "bx", true),
        ("[]]", "]", true),
        ("[abc", "[abc", true),
        ("\\*", "*", true),
        ("\\*", "x", false),
        // Hidden names are matched only by a literal dot by default.
        ("*", ".hidden", false),
        (".*", ".hidden", true),
        ("**/*.js", ".git/a.js", false),
        ("**/*.js", "a/.b/c.js", false),
        ("?hidden", ".hidden", false),
        ("", "", true),
        ("x", "", false),
    ];
    for (p, t, want) in table {
        assert_eq!(w(p, t), *want, "{p:?} on {t:?}");
    }
    let dot = Wild {
        dotfiles: true,
        ..Wild::default()
    };
    assert!(wildmatch(b"*", b".hidden", dot));
    assert!(wildmatch(b"**/*.js", b".git/a.js", dot));
    let icase = Wild {
        icase: true,
        ..Wild::default()
    };
    assert!(wildmatch(b"*.JS", b"a.js", icase));
    let noescape = Wild {
        noescape: true,
        ..Wild::default()
    };
    assert!(wildmatch(b"a\\b", b"a\\b", noescape));
    // Pathological patterns stay cheap (memoised).
    let long = "a".repeat(200);
    assert!(!w(&"*a".repeat(40), &(long + "b")));
}

fn expr(json: &str) -> Expr {
    let v: Val = serde_json::from_str(json).unwrap();
    parse(&v, &mut Clocks::default()).unwrap()
}

fn file(name: &str) -> FileView<'_> {
    FileView {
        name: name.as_bytes(),
        exists: true,
        kind: b'f',
        size: 10,
        mtime_s: 100,
        ctime_s: 200,
        since_clocks: &[],
        empty_dir: false,
    }
}

#[test]
fn every_term_matches_as_documented() {
    let f = file("src/lib/Main.JS");
    let table: &[(&str, bool)] = &[
        ("\"true\"", true),
        ("\"false\"", false),
        ("[\"true\"]", true),
        ("[\"allof\", \"true\", \"exists\"]", true),
        ("[\"allof\", \"true\", \"false\"]", false),
        ("[\"allof\"]", true),
        ("[\"anyof\", \"false\", \"true\"]", true),
        ("[\"anyof\"]", false),
        ("[\"not\", \"false\"]", true),
        ("[\"suffix\", \"js\"]", true),
        ("[\"suffix\", [\"ts\", \"JS\"]]", true),
        ("[\"suffix\", \"s\"]", false),
        ("[\"match\", \"*.JS\"]", true),
        ("[\"match\", \"*.js\"]", false),
        ("[\"imatch\", \"*.js\"]", true),
        ("[\"match\", \"src/**/*.JS\", \"wholename\"]", true),
        ("[\"match\", \"*.JS\", \"wholename\"]", false),
        ("[\"name\", \"Main.JS\"]", true),
        ("[\"name\", [\"x\", \"Main.JS\"]]", true),
        ("[\"name\", \"src/lib/Main.JS\", \"wholename\"]", true),
        ("[\"name\", \"main.js\"]", false),
        ("[\"iname\", \"main.js\"]", true),
        ("[\"dirname\", \"src\"]", true),
        ("[\"dirname\", \"src/\"]", true),
        ("[\"dirname\", \"sr\"]", false),
        ("[\"dirname\", \"src/lib/Main.JS\"]", false),
        ("[\"dirname\", \"src\", [\"depth\", \"eq\", 1]]", true),
        ("[\"dirname\", \"src\", [\"depth\", \"eq\", 0]]", false),
        ("[\"dirname\", \"\", [\"depth\", \"ge\", 2]]", true),
        ("[\"idirname\", \"SRC\"]", true),
        ("[\"type\", \"f\"]", true),
        ("[\"type\", \"d\"]", false),
        ("\"exists\"", true),
        ("\"empty\"", false),
        ("[\"size\", \"eq\", 10]", true),
        ("[\"size\", \"gt\", 10]", false),
        ("[\"size\", \"le\", 10]", true),
        ("[\"since\", 99]", true),
        ("[\"since\", 100]", false),
        ("[\"since\", 150, \"ctime\"]", true),
    ];
    for (e, want) in table {
        assert_eq!(expr(e).eval(&f), *want, "{e}");
    }
    let gone = FileView {
        exists: false,
        ..file("a")
    };
    for e in ["\"exists\"", "[\"size\", \"ge\", 0]", "\"empty\""] {
        assert!(!expr(e).eval(&gone), "{e}");
    }
    // A deleted file keeps its type; an unknown one matches any.
    assert!(expr("[\"type\", \"f\"]").eval(&gone));
    assert!(!expr("[\"type\", \"d\"]").eval(&gone));
    let unknown = FileView { kind: b'?', ..gone };
    assert!(expr("[\"type\", \"d\"]").eval(&unknown));
    let empty = FileView {
        size: 0,
        ..file("e")
    };
    assert!(expr("\"empty\"").eval(&empty));
    let dir = FileView {
        kind: b'd',
        empty_dir: true,
        ..file("d")
    };
    assert!(expr("\"empty\"").eval(&dir));
}

#[test]
fn since_clock_terms_name_their_clocks() {
    let v: Val =
        serde_json::from_str(r#"["anyof", ["since", "c:x"], ["since", "c:y", "cclock"]]"#).unwrap();
    let mut clocks = Clocks::default();
    let e = parse(&v, &mut clocks).unwrap();
    assert_eq!(clocks.0, vec!["c:x".to_string(), "c:y".to_string()]);
    let f = FileView {
        since_clocks: &[false, true],
        ..file("a")
    };
    assert!(e.eval(&f));
}

#[test]
fn bad_expressions_are_errors() {
    for bad in [
        "[]",
        "5",
        "[\"nope\"]",
        "[\"not\"]",
        "[\"type\", \"q\"]",
        "[\"size\", \"about\", 3]",
        "[\"match\", \"*\", \"everywhere\"]",
        "[\"dirname\", \"a\", [\"depth\"]]",
        "[\"since\", \"c:x\", \"mtime\"]",
    ] {
        let v: Val = serde_json::from_str(bad).unwrap();
        assert!(parse(&v, &mut Clocks::default()).is_err(), "{bad}");
    }
    let deep = "[\"not\", ".repeat(40) + "\"true\"" + &"]".repeat(40);
    let v: Val = serde_json::from_str(&deep).unwrap();
    assert!(parse(&v, &mut Clocks::default()).is_err());
}
