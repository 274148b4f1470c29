//! The shape of the source tree, as its next maintainer reads it: no file of
//! a crate's `src` over 800 lines, and no import cycle between the files of
//! one crate (a file refers to another through `crate::…`, `super::…`, or a
//! child module's name; a `mod` declaration alone is no reference).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("readable src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src`: `lib.rs` is the root, `a.rs` and
/// `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The code of a file without comments (line comments and doc comments),
/// without its unit tests (`#[cfg(test)] mod …`) and with `super::` inside
/// inline modules (`mod helpers { use super::*; }`, whose `super` is the file
/// itself) left out; string literals are left as they are: a path in a
/// string is rare enough.
fn code_of(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut inline_depth: Option<i32> = None;
    while let Some(l) = lines.next() {
        if l.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            break;
        }
        let code = l.split("//").next().unwrap_or("");
        let t = code.trim_start();
        let opens_inline = (t.starts_with("mod ") || t.starts_with("pub mod ") || t.starts_with("pub(crate) mod "))
            && t.trim_end().ends_with('{');
        if inline_depth.is_none() && opens_inline {
            inline_depth = Some(0);
        }
        match inline_depth.as_mut() {
            Some(depth) => {
                *depth += code.matches('{').count() as i32 - code.matches('}').count() as i32;
                out.push(code.replace("super::", "__inline_super::"));
                if *depth <= 0 {
                    inline_depth = None;
                }
            }
            None => out.push(code.to_string()),
        }
    }
    out.join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names after `prefix` (`crate::`, `super::`), with
/// brace groups expanded one level: `crate::{a::X, b}` names `a::X` and `b`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before_ok = rest[..i].chars().last().is_none_or(|c| !is_ident(c) && c != ':');
        let after = &rest[i + prefix.len()..];
        rest = after;
        if !before_ok {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => return true,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    false
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(split_path(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            out.push(split_path(after));
        }
    }
    out
}

fn split_path(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = s;
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        parts.push(rest[..len].to_string());
        match rest[len..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    parts
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Vec<String> {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)).unwrap_or_default()
}

/// Splits a file's code into its re-exports (`pub use …;`, the module's
/// facade, which is no reference of the module's own code) and the rest.
fn split_reexports(code: &str) -> (Vec<String>, String) {
    let mut exports = Vec::new();
    let mut rest = String::new();
    let mut tail = code;
    while let Some(i) = ["pub use ", "pub(crate) use "].iter().filter_map(|k| tail.find(k).map(|i| (i, k.len()))).min() {
        let (start, len) = i;
        rest.push_str(&tail[..start]);
        let end = tail[start..].find(';').map_or(tail.len(), |e| start + e + 1);
        exports.push(tail[start + len..end].trim_end_matches(';').to_string());
        tail = &tail[end..];
    }
    rest.push_str(tail);
    (exports, rest)
}

/// The file-level reference graph of one crate's `src`. A path through a
/// module's re-export (`crate::Thing` where `lib.rs` says `pub use a::Thing`)
/// refers to the module that defines it.
fn graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut codes = BTreeMap::new();
    // (module, re-exported name) -> the module that defines it.
    let mut aliases: BTreeMap<(Vec<String>, String), Vec<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let (exports, code) = split_reexports(&code_of(&std::fs::read_to_string(f).expect("readable")));
        for e in exports {
            for p in paths_after(&format!("::{{{}}}", e.trim()), "::") {
                let full: Vec<String> = match p.first().map(String::as_str) {
                    Some("crate") => p[1..].to_vec(),
                    Some("self") => me.iter().cloned().chain(p[1..].iter().cloned()).collect(),
                    _ => me.iter().cloned().chain(p.iter().cloned()).collect(),
                };
                let target = resolve(&modules, &full);
                if let Some(name) = p.last() {
                    if target != me && modules.contains(&target) {
                        aliases.insert((me.clone(), name.clone()), target);
                    }
                }
            }
        }
        codes.insert(me, code);
    }
    let resolve_alias = |path: &[String]| {
        let m = resolve(&modules, path);
        match path.get(m.len()) {
            Some(next) => aliases.get(&(m.clone(), next.clone())).cloned().unwrap_or(m),
            None => m,
        }
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (me, code) in &codes {
        let mut targets = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            targets.insert(resolve_alias(&p));
        }
        // `super::` is relative to the file's parent module.
        if let Some((_, parent)) = me.split_last() {
            for mut p in paths_after(code, "super::") {
                let mut base = parent.to_vec();
                while p.first().is_some_and(|s| s == "super") {
                    base.pop();
                    p.remove(0);
                }
                base.extend(p);
                targets.insert(resolve_alias(&base));
            }
        }
        // A child module named by its bare name (`child::f()`, `use child::X`).
        for child in modules.iter().filter(|m| m.len() == me.len() + 1 && m.starts_with(me)) {
            let name = child.last().expect("a child has a name");
            let named = code
                .match_indices(&format!("{name}::"))
                .any(|(i, _)| code[..i].chars().last().is_none_or(|c| !is_ident(c) && c != ':'));
            if named {
                targets.insert(child.clone());
            }
        }
        targets.remove(me);
        edges.entry(me.clone()).or_default().extend(targets);
    }
    edges
}

/// A cycle of the graph, if it has one.
fn find_cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    fn visit(
        n: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn crate_srcs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(crates_dir())
        .expect("crates/ is readable")
        .map(|e| e.expect("entry").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() > 5, "the workspace's crates are found under {}", crates_dir().display());
    dirs
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut long = Vec::new();
    for src in crate_srcs() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).expect("readable").lines().count();
            if lines > MAX_LINES {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these by concern:\n{}", long.join("\n"));
}

#[test]
fn no_crate_has_an_import_cycle_between_its_files() {
    let name = |m: &Vec<String>| if m.is_empty() { "(root)".to_string() } else { m.join("::") };
    let mut cycles = Vec::new();
    for src in crate_srcs() {
        if let Some(c) = find_cycle(&graph(&src)) {
            cycles.push(format!("{}: {}", src.display(), c.iter().map(name).collect::<Vec<_>>().join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "files that refer to each other, in a circle:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_sees_a_cycle_through_a_brace_group_and_super() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod c;\nuse crate::{b::Thing, x};\n").unwrap();
    std::fs::write(src.join("a/c.rs"), "// crate::b is only a comment\n").unwrap();
    std::fs::write(src.join("b.rs"), "fn f() { crate::a::c::g(); }\n").unwrap();
    assert_eq!(find_cycle(&graph(src)), None, "a -> b -> a::c is no cycle");
    std::fs::write(src.join("a/c.rs"), "use super::super::b::Thing;\n").unwrap();
    std::fs::write(src.join("b.rs"), "fn f() { crate::a::f(); }\n").unwrap();
    let cycle = find_cycle(&graph(src)).expect("a -> b -> a");
    assert_eq!(cycle.first(), cycle.last());
}
