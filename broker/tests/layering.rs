//! The layering of `broker/src`, kept by a test: every `crate::` path between top-level
//! modules points to the same layer or a lower one, and there is no import cycle.
//!
//! The layers, lowest first (DESIGN.md "Ownership"): what a module may use is everything
//! in its own layer and below. A new top-level module must be given a layer here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "error",
            "metrics",
            "message",
            "config",
            "http_client",
            "features",
            "auth",
            "ip_limits",
            "wal",
            "journal",
            "retained",
        ],
    ),
    (
        "output buffer",
        &["delivery", "keep_alive", "idle_sweep", "park_poll"],
    ),
    ("session", &["session"]),
    ("routing", &["backpressure", "router"]),
    ("broker", &["broker"]),
    ("connection", &["connection"]),
    (
        "transport and HTTP",
        &[
            "listener",
            "http",
            "sys",
            "reload",
            "mqtt_bridge",
            "cluster",
        ],
    ),
    ("server", &["server", "checkpointer", "ctl", "ctl_render"]),
    ("tools", &["convert"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without what follows its first
/// `#[cfg(test)]` (test modules may reach anywhere).
fn code_of(text: &str) -> String {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    code.split("#[cfg(test)]").next().unwrap_or("").to_string()
}

/// Top-level module -> the top-level modules its code names with `crate::`.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" || module == "test_support" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("read"));
        let targets = edges.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module && name != "test_support" {
                targets.insert(name);
            }
        }
    }
    edges
}

#[test]
fn every_module_has_a_layer_and_depends_only_downwards() {
    let mut wrong = Vec::new();
    for (module, targets) in edges() {
        let Some(own) = layer_of(&module) else {
            wrong.push(format!("{module}: not in LAYERS"));
            continue;
        };
        for target in targets {
            match layer_of(&target) {
                Some(layer) if layer <= own => {}
                Some(layer) => wrong.push(format!(
                    "{module} ({}) uses {target} ({}), a higher layer",
                    LAYERS[own].0, LAYERS[layer].0
                )),
                None => wrong.push(format!("{module} uses {target}, which has no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let edges = edges();
    // Depth-first search for a back edge; reports the cycle found.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
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
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn lib_lists_every_top_level_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for (_, modules) in LAYERS {
        for module in *modules {
            assert!(
                lib.contains(&format!("mod {module};")),
                "lib.rs does not declare {module}"
            );
            assert!(
                lib.contains(&format!("[`{module}`]")),
                "lib.rs's module docs do not describe {module}"
            );
        }
    }
}
