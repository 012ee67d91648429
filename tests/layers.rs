//! The crate's layering, read from its source: which module may use which, and no cycles.
//!
//! Every `use` path and every inline `crate::`/`super::`/`self::` path in `src/` is resolved to
//! the module it names (a type re-exported by a facade counts as the facade's: the API may name
//! `infer::Flow`, which the core takes from its queue). Three things are checked:
//! - the rules below (e.g. the core knows nothing of gRPC; the transport knows nothing of the
//!   API; the API reaches the queue only through the core);
//! - among the modules of any one parent, the uses form no cycle (a module's own children and
//!   its parent are not counted: `mod.rs` re-exports and children using their parent's items
//!   are how a module is built).
//!
//! Both hold for the code that ships: a unit-test file (`tests.rs`) may use a tool to make its
//! inputs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The crates of the gRPC server, which the core and what lies below it must not use.
const GRPC_CRATES: [&str; 5] = ["tonic", "http", "hyper", "h2", "tower"];
/// The modules that must not use [`GRPC_CRATES`].
const NO_GRPC: [&str; 6] = ["model", "stream", "batch", "infer", "repository", "config"];

/// (module, modules it must not use): by path prefix, `a::b` covering `a::b::c`.
const RULES: [(&str, &[&str]); 10] = [
    (
        "model",
        &[
            "infer",
            "batch",
            "stream",
            "repository",
            "grpc",
            "server",
            "config",
            "tools",
        ],
    ),
    (
        "stream",
        &[
            "infer",
            "batch",
            "repository",
            "grpc",
            "server",
            "config",
            "tools",
        ],
    ),
    (
        "batch",
        &[
            "infer",
            "stream",
            "repository",
            "grpc",
            "server",
            "config",
            "tools",
        ],
    ),
    (
        "infer",
        &["repository", "grpc", "server", "config", "tools"],
    ),
    ("repository", &["grpc", "server", "config", "tools"]),
    ("grpc", &["server", "config", "tools"]),
    (
        "grpc::transport",
        &[
            "grpc::api",
            "grpc::oip",
            "grpc::calls",
            "infer",
            "batch",
            "model",
            "stream",
        ],
    ),
    // The siglip.v1 API does not know the Open Inference Protocol; the protocol reuses the API's
    // lifecycle, limits and stream outbox, not the other way round.
    ("grpc::api", &["grpc::transport", "grpc::oip", "batch"]),
    ("grpc::oip", &["grpc::transport", "batch"]),
    ("config", &["server", "tools"]),
];

type Module = Vec<String>;

fn join(m: &[String]) -> String {
    m.join("::")
}

/// Every module of the crate, from its files: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            // main.rs is the binary, a crate of its own.
            if parts == ["main"] {
                continue;
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The source without comments, string and char literals, so that paths in them are not counted.
fn code(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && !word_before(&chars, i) && raw_string_at(&chars, i) {
            // A raw string: r"…" or r#"…"# (as many #s to close as to open).
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body: String = chars[i + 1 + hashes + 1..].iter().collect();
            let len = body
                .find(&close)
                .map_or(body.chars().count(), |at| body[..at].chars().count());
            i += 1 + hashes + 1 + len + close.chars().count();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{…}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3; // 'x'
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether `r` at `i` opens a raw string (`r"`, `r#"`), not a raw identifier (`r#type`).
fn raw_string_at(chars: &[char], i: usize) -> bool {
    let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
    chars.get(i + 1 + hashes) == Some(&'"')
}

/// The source without its `mod tests { … }` blocks: unit tests may use what the code may not,
/// and `super::` inside them names another module than in the file around them.
fn without_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("mod tests") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn word_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_')
}

/// The paths of a `use` tree (`a::{b, c::{d as e}}`), each as its segments; an alias is not a
/// segment.
fn use_paths(tree: &str) -> Vec<Vec<String>> {
    let mut tree = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    for (spaced, tight) in [
        (" ::", "::"),
        (":: ", "::"),
        (" {", "{"),
        ("{ ", "{"),
        (" }", "}"),
    ] {
        tree = tree.replace(spaced, tight);
    }
    tree = tree.replace(" ,", ",").replace(", ", ",");
    let mut out = Vec::new();
    expand(&[], &tree, &mut out);
    out
}

fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    for item in split_top(tree) {
        let segments = |path: &str| -> Vec<String> {
            path.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        match item.find('{') {
            Some(open) => {
                let inner = &item[open + 1..item.rfind('}').expect("closing brace")];
                expand(&[prefix, &segments(&item[..open])].concat(), inner, out);
            }
            None => {
                let path = item.split(" as ").next().unwrap_or(item);
                out.push([prefix, &segments(path)].concat());
            }
        }
    }
}

/// `tree` split at its top-level commas.
fn split_top(tree: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Paths written inline in the code: `crate::…`, `super::…`, `self::…`.
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            // Inside a longer path (`super::super::x` is one path, found at its start).
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric() || matches!(bytes[at - 1], b'_' | b':'))
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(
                code[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out
}

/// The module a path written in module `me` names, if it is one of the crate's: the longest
/// prefix of the path that is a module.
fn resolve(me: &Module, path: &[String], known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut base: Module = me.clone();
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" | "super" => {
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => {}
                    "super" => {
                        base.pop();
                    }
                    _ => break,
                }
                rest = &rest[1..];
            }
        }
        // A child module named without `self::`; anything else is another crate's.
        first => {
            let child = [me.clone(), vec![first.to_string()]].concat();
            if !known.contains_key(&child) {
                return None;
            }
        }
    }
    let mut found = known.contains_key(&base).then(|| base.clone());
    for seg in rest {
        base.push(seg.clone());
        if !known.contains_key(&base) {
            break;
        }
        found = Some(base.clone());
    }
    found
}

fn starts_with(m: &Module, prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split("::").collect();
    m.len() >= prefix.len() && m.iter().zip(&prefix).all(|(a, b)| a == b)
}

/// The crate's `src/`, in the checkout being tested: cargo names it in the test's environment. The
/// path compiled in names the checkout that built this binary, which a target directory shared
/// by two clones (CI's cache) can make another one.
fn source_dir() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    root.join("src")
}

/// Each module's uses of the crate's other modules.
fn uses() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = source_dir();
    let known = modules(&src);
    let mut graph = BTreeMap::new();
    for (module, path) in &known {
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        let code = without_test_modules(&code(&std::fs::read_to_string(path).expect("read")));
        let mut paths = inline_paths(&code);
        let mut rest = code.as_str();
        while let Some(at) = rest.find("use ") {
            let before = rest[..at].chars().last();
            rest = &rest[at + 4..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let end = rest.find(';').unwrap_or(rest.len());
            paths.extend(use_paths(&rest[..end]));
            rest = &rest[end..];
        }
        let targets: BTreeSet<Module> = paths
            .iter()
            .filter_map(|p| resolve(module, p, &known))
            .filter(|t| t != module && !t.is_empty())
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

#[test]
fn no_module_uses_what_its_layer_must_not() {
    let mut broken = Vec::new();
    for (module, targets) in uses() {
        for (layer, denied) in RULES {
            if !starts_with(&module, layer) {
                continue;
            }
            for target in &targets {
                if let Some(rule) = denied.iter().find(|d| starts_with(target, d)) {
                    broken.push(format!(
                        "{} uses {} ({layer} must not use {rule})",
                        join(&module),
                        join(target)
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_core_uses_no_grpc_crate() {
    let src = source_dir();
    let mut broken = Vec::new();
    for (module, path) in modules(&src) {
        if !NO_GRPC.iter().any(|layer| starts_with(&module, layer))
            || module.last().is_some_and(|m| m == "tests")
        {
            continue;
        }
        let code = without_test_modules(&code(&std::fs::read_to_string(&path).expect("read")));
        for krate in GRPC_CRATES {
            let used = code.match_indices(&format!("{krate}::")).any(|(at, _)| {
                let before = code[..at].chars().last();
                !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            });
            if used {
                broken.push(format!("{} uses {krate}", join(&module)));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the core uses gRPC crates:\n{}",
        broken.join("\n")
    );
}

#[test]
fn sibling_modules_use_each_other_without_cycles() {
    // Per parent: an edge between two of its children when one's subtree uses the other's.
    let mut siblings: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, targets) in uses() {
        for to in targets {
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // one is the other's ancestor
            }
            siblings
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    for (parent, edges) in siblings {
        if let Some(cycle) = find_cycle(&edges) {
            panic!(
                "a cycle among the modules of `{}`: {}",
                join(&parent),
                cycle.join(" → ")
            );
        }
    }
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

/// The checks themselves: a use of a denied module and a cycle are both found.
#[test]
fn the_checks_see_a_broken_layer_and_a_cycle() {
    assert_eq!(
        use_paths("super::{a::X, b::{Y, Z as W}}, crate::c"),
        [
            vec!["super", "a", "X"],
            vec!["super", "b", "Y"],
            vec!["super", "b", "Z"],
            vec!["crate", "c"]
        ]
    );
    assert_eq!(
        use_paths("super::assembler::{Arrival,\n Assembler}, crate::stream::config as checks"),
        [
            vec!["super", "assembler", "Arrival"],
            vec!["super", "assembler", "Assembler"],
            vec!["crate", "stream", "config"]
        ]
    );
    let source = "pub r#type: u8; // crate::a\nlet s = \"crate::b\"; let x = crate::c::D;\n\
                  #[cfg(test)] mod tests { use crate::e; }";
    assert_eq!(
        inline_paths(&without_test_modules(&code(source))),
        [vec!["crate", "c", "D"]]
    );
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(find_cycle(&edges).expect("a cycle"), ["a", "b", "c", "a"]);
    let known: BTreeMap<Module, PathBuf> = [
        (vec![], PathBuf::new()),
        (vec!["grpc".to_string()], PathBuf::new()),
        (vec!["grpc".to_string(), "api".to_string()], PathBuf::new()),
        (vec!["batch".to_string()], PathBuf::new()),
    ]
    .into();
    let api = vec!["grpc".to_string(), "api".to_string()];
    let path: Vec<String> = ["crate", "batch", "Flow"].map(String::from).into();
    assert_eq!(
        resolve(&api, &path, &known),
        Some(vec!["batch".to_string()])
    );
    let path: Vec<String> = ["super", "super", "batch"].map(String::from).into();
    assert_eq!(
        resolve(&api, &path, &known),
        Some(vec!["batch".to_string()])
    );
}
