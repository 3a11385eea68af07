//! The daemon's modules import each other one way only: no import cycle in
//! `tools/vigil/src` (test modules aside). A cycle found is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the crate modules it refers to (`crate::NAME`), outside
/// its `#[cfg(test)] mod tests`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        if p.extension().and_then(|x| x.to_str()) != Some("rs")
            || name == "main"
            || name == "lib"
            || name == "testutil"
        {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let code: String = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| format!("{l}\n"))
            .collect();
        let body = code.as_str();
        let mut deps = BTreeSet::new();
        for (i, _) in body.match_indices("crate::") {
            let rest = &body[i + 7..];
            let m: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `use crate::{a, b}`
            if m.is_empty() && rest.starts_with('{') {
                let inner = &rest[1..rest.find('}').unwrap()];
                for part in inner.split(',') {
                    let m: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !m.is_empty() && m != name {
                        deps.insert(m);
                    }
                }
            } else if !m.is_empty() && m != name {
                deps.insert(m);
            }
        }
        g.insert(name, deps);
    }
    g
}

fn cycle_from(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|x| x == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    visit(g, start, &mut Vec::new(), &mut BTreeSet::new())
}

#[test]
fn no_import_cycles_between_modules() {
    let g = graph();
    assert!(g.len() > 15, "read the modules: {g:?}");
    let mut cycles = Vec::new();
    for m in g.keys() {
        if let Some(c) = cycle_from(&g, m) {
            cycles.push(c.join(" -> "));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycle_from(&g, "a").unwrap(), ["a", "b", "a"]);
}
