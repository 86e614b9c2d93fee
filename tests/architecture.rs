//! Keeps `docs/ARCHITECTURE.md` true and the layering one way down, by
//! reading the source itself:
//!
//! - every file under `src/` appears in the code map;
//! - no top-level module imports from a layer above it (`crate::…` and
//!   `super::…` paths that leave the module, in code, not in comments or
//!   strings), so no import circle between top-level modules can come back.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Top-level modules, lowest layer first. A module may use modules of
/// lower layers only; modules in one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    &["escape", "metrics", "shutdown", "systemd"],
    &["config"],
    &["store"],
    &["certs"],
    &["net"],
    &["push", "turn"],
    &["core"],
    &["http"],
    &["xmpp"],
    &["check"],
];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
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

/// The source with comments and the contents of string and char literals
/// blanked out, so that only code is scanned.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#")) && !ident_before(b, i) {
            // Raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            if j < b.len() && b[j] == b'"' {
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                j += 1;
                while j < b.len() && !b[j..].starts_with(&close) {
                    j += 1;
                }
                i = j + close.len();
                out.push_str("\"\"");
            } else {
                out.push('r');
                i += 1;
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || (b[i + 1] == b'\\' && b[i + 3] == b'\'')) {
            // A char literal ('x' or '\n'); lifetimes are left alone.
            i += if b[i + 1] == b'\\' { 4 } else { 3 };
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segments named after `prefix` (a `crate::` or
/// `super::super::` that reaches the crate root), including every first
/// segment of a `{…}` group.
fn first_segments(rest: &str, out: &mut BTreeSet<String>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => {
                    depth += 1;
                    item.push(c)
                }
                '}' if depth == 0 => {
                    push_item(&item, out);
                    return;
                }
                '}' => {
                    depth -= 1;
                    item.push(c)
                }
                ',' if depth == 0 => {
                    push_item(&item, out);
                    item.clear();
                }
                c => item.push(c),
            }
        }
    } else {
        let id = ident_at(rest);
        if !id.is_empty() {
            out.insert(id.to_string());
        }
    }
}

fn push_item(item: &str, out: &mut BTreeSet<String>) {
    let id = ident_at(item.trim());
    if !id.is_empty() && id != "self" {
        out.insert(id.to_string());
    }
}

/// The top-level modules a file names outside its own top-level module.
fn uses_of(file: &Path, src_root: &Path) -> (String, BTreeSet<String>) {
    let rel = file.strip_prefix(src_root).unwrap();
    let mut module: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    let last = module.pop().unwrap();
    if last != "mod.rs" {
        module.push(last.trim_end_matches(".rs").to_string());
    }
    let top = module.first().cloned().unwrap_or_default();
    let code = code_only(&std::fs::read_to_string(file).unwrap());
    let mut named = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = code[i..].find("crate::") {
        let start = i + at;
        i = start + "crate::".len();
        if ident_before(code.as_bytes(), start) {
            continue; // `pushbox::crate…` cannot happen; `foo_crate::` is another name
        }
        first_segments(&code[i..], &mut named);
    }
    // `super::` chains that climb out of the top-level module.
    let mut i = 0;
    while let Some(at) = code[i..].find("super::") {
        let start = i + at;
        if ident_before(code.as_bytes(), start) || code[..start].ends_with("super::") {
            i = start + 7;
            continue;
        }
        let mut j = start;
        let mut ups = 0;
        while code[j..].starts_with("super::") {
            ups += 1;
            j += "super::".len();
        }
        i = j;
        if ups >= module.len() {
            first_segments(&code[j..], &mut named);
        }
    }
    named.retain(|n| n != &top && n != "self");
    (top, named)
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut problems = vec![];
    let mut edges = 0;
    for f in &files {
        let (top, named) = uses_of(f, &src);
        if top == "lib" || top == "main" || top == "cli" {
            continue; // the crate root and the binary (main.rs, cli.rs) sit above everything
        }
        let Some(mine) = layer_of(&top) else {
            problems.push(format!(
                "{}: top-level module `{top}` is missing from LAYERS",
                f.display()
            ));
            continue;
        };
        for n in named {
            match layer_of(&n) {
                Some(theirs) if theirs < mine => edges += 1,
                Some(_) => problems.push(format!(
                    "{}: `{top}` uses `{n}`, which is not in a lower layer",
                    f.strip_prefix(&src).unwrap().display()
                )),
                // Not a top-level module of ours (a macro path, a re-export): ignore.
                None => {}
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
    // The scan found the edges that exist; a scanner that sees nothing proves nothing.
    assert!(edges > 50, "only {edges} downward uses found: the scanner is broken");
}

#[test]
fn the_scanner_sees_uses_and_ignores_comments_and_strings() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("http/sub")).unwrap();
    let f = src.join("http/sub/x.rs");
    std::fs::write(
        &f,
        "// crate::xmpp in a comment\n\
         use crate::{core::Core, store::{self, relay}};\n\
         fn f() { let s = \"crate::check\"; super::super::super::push::x(); super::y(); }\n\
         /* crate::lib */ use crate::config;\n",
    )
    .unwrap();
    let (top, named) = uses_of(&f, src);
    assert_eq!(top, "http");
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["config", "core", "push", "store"]
    );
}

/// Expand `a/{b,c}.rs` into `a/b.rs` and `a/c.rs` (one level of braces).
fn expand(path: &str) -> Vec<String> {
    match (path.find('{'), path.find('}')) {
        (Some(o), Some(c)) if o < c => path[o + 1..c]
            .split(',')
            .map(|alt| format!("{}{}{}", &path[..o], alt.trim(), &path[c + 1..]))
            .collect(),
        _ => vec![path.to_string()],
    }
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let map = doc
        .split("## Code map")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/ARCHITECTURE.md has a `## Code map` section");
    let mut named = BTreeSet::new();
    for piece in map.split('`').skip(1).step_by(2) {
        for p in expand(piece) {
            named.insert(p);
        }
    }
    let mut files = vec![];
    rust_files(&root.join("src"), &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .filter(|f| !named.contains(f))
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "files missing from the code map in docs/ARCHITECTURE.md:\n{}",
        missing.join("\n")
    );
    let mut stale: Vec<&String> = named
        .iter()
        .filter(|p| p.starts_with("src/") && p.ends_with(".rs") && !root.join(p).exists())
        .collect();
    stale.sort();
    assert!(
        stale.is_empty(),
        "the code map names files that do not exist: {stale:?}"
    );
}
