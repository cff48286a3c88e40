//! `GET /openapi.json`: the OpenAPI 3.0 document of every HTTP route vbin serves, authored by
//! hand in `docs/openapi.json` and embedded at build time (the one copy).
//!
//! The tests below keep it complete: every route the routers' sources register is in the
//! document with its method, and the document has no operation the routers lack.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// The document, as served.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

/// The handler.
pub async fn spec() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], SPEC)
}

#[cfg(test)]
mod tests {
    use super::SPEC;
    use serde_json::Value;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The text from `open` (an opening parenthesis) to its matching closing one.
    fn balanced(s: &str, open: usize) -> &str {
        let mut depth = 0;
        for (i, c) in s[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &s[open..open + i + 1];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses in a .route(...) call");
    }

    /// Every `.route("path", get(..).post(..))` in the workspace's library sources (the
    /// benchmark tool's own throwaway servers excluded): (METHOD, path) and the file.
    fn routed() -> BTreeSet<(String, String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let src = entry.unwrap().path().join("src");
            if src.is_dir() {
                rust_files(&src, &mut files);
            }
        }
        let mut out = BTreeSet::new();
        for file in files {
            let rel = file.strip_prefix(&root).unwrap().display().to_string();
            // This file only talks about routes; the bench's, media's and llm's routers are
            // test doubles of other servers (fake speech and model servers), not vbin's API;
            // the console's serve its files (the app that calls the API).
            if rel.starts_with("bench/src")
                || rel.starts_with("console/src")
                || rel.starts_with("media/src")
                || rel.starts_with("llm/src")
                || rel == "http/src/openapi.rs"
            {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let mut at = 0;
            while let Some(found) = text[at..].find(".route(") {
                let open = at + found + ".route".len();
                let call = balanced(&text, open);
                at = open + call.len();
                let inner = call[1..].trim_start();
                let Some(rest) = inner.strip_prefix('"') else {
                    panic!("{rel}: a .route( whose path is not a string literal: {call}");
                };
                let path = &rest[..rest.find('"').unwrap()];
                let handlers = &rest[path.len() + 1..];
                let mut methods = 0;
                for m in METHODS {
                    // `get(`, `.post(`, `routing::delete(`: the method router constructors.
                    for (i, _) in handlers.match_indices(&format!("{m}(")) {
                        let before = handlers[..i].chars().next_back().unwrap_or(' ');
                        if !(before.is_alphanumeric() || before == '_') {
                            out.insert((m.to_uppercase(), path.to_string(), rel.clone()));
                            methods += 1;
                        }
                    }
                }
                assert!(methods > 0, "{rel}: no method found in {call}");
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let spec: Value = serde_json::from_str(SPEC).expect("docs/openapi.json is JSON");
        let mut out = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (m, _) in item.as_object().unwrap() {
                if METHODS.contains(&m.as_str()) {
                    out.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_operation_is_routed() {
        let routed = routed();
        let files: BTreeSet<&str> = routed.iter().map(|r| r.2.as_str()).collect();
        for expected in [
            "commands/src/api/mod.rs",
            "http/src/health.rs",
            "read-api/src/lib.rs",
            "webhooks/src/api.rs",
            "gateway/src/lib.rs",
        ] {
            assert!(files.contains(expected), "no routes found in {expected}");
        }
        let routes: BTreeSet<(String, String)> =
            routed.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
        let spec = documented();
        let undocumented: Vec<_> = routed
            .iter()
            .filter(|r| !spec.contains(&(r.0.clone(), r.1.clone())))
            .collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from docs/openapi.json: {undocumented:?}"
        );
        let unrouted: Vec<_> = spec.difference(&routes).collect();
        assert!(
            unrouted.is_empty(),
            "docs/openapi.json documents operations no router has: {unrouted:?}"
        );
        assert!(routes.len() > 50, "only {} routes found", routes.len());
    }

    /// Every `$ref` resolves, every operation has a unique id, a 2xx (or 101) response and a
    /// declared parameter for each `{param}` of its path.
    #[test]
    fn the_document_is_consistent() {
        let spec: Value = serde_json::from_str(SPEC).unwrap();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3.0."));
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&spec, &mut all);
        for r in &all {
            let pointer = r.strip_prefix('#').expect("local $ref");
            assert!(spec.pointer(pointer).is_some(), "unresolved $ref {r}");
        }
        let resolve = |v: &Value| -> Value {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => spec.pointer(&r[1..]).unwrap().clone(),
                None => v.clone(),
            }
        };
        let mut ids = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{m} {path}"));
                assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses
                        .keys()
                        .any(|k| k.starts_with('2') || k.as_str() == "101"),
                    "{m} {path}: no success response"
                );
                let params: Vec<Value> = op["parameters"]
                    .as_array()
                    .map(|p| p.iter().map(resolve).collect())
                    .unwrap_or_default();
                for seg in path.split('/').filter(|s| s.starts_with('{')) {
                    let name = &seg[1..seg.len() - 1];
                    assert!(
                        params
                            .iter()
                            .any(|p| p["in"] == "path" && p["name"] == name),
                        "{m} {path}: path parameter {name} not declared"
                    );
                }
            }
        }
    }
}
