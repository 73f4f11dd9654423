//! The OpenAPI v3 documents, as far as kubectl reads them.
//!
//! kubectl (`apply`, `create`, `replace` with the default `--validate=strict`) asks the
//! server's OpenAPI v3 whether each kind's PATCH operation takes the `fieldValidation` query
//! parameter; if it does, kubectl leaves validation to the server (which refuses unknown
//! fields under `fieldValidation=Strict`) instead of downloading the whole schema. So each
//! group version's document lists, per resource, the object path with a PATCH operation
//! naming its kind and that parameter — and no schemas: kubectl then computes its
//! strategic merge patches from its own compiled-in types, which is what it does for
//! built-in kinds anyway. `kubectl explain` needs the schemas and is not served.

use serde_json::{Map, Value, json};

use crate::resource::{GROUPS, RESOURCES, Resource};

/// `/openapi/v3`: where each group version's document is.
pub fn root() -> Value {
    let mut paths = Map::new();
    for prefix in group_versions() {
        let path = prefix.trim_start_matches('/').to_owned();
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/group/version>`: the document of one group version, or
/// `None` if it is not served.
pub fn group_version(path: &str) -> Option<Value> {
    let prefix = format!("/{path}");
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.group_path() == prefix) {
        paths.insert(object_path(r), json!({"patch": patch_operation(r)}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
    }))
}

fn group_versions() -> Vec<String> {
    let mut out = vec!["/api/v1".to_owned()];
    out.extend(GROUPS.iter().map(|g| format!("/apis/{g}/v1")));
    out
}

fn object_path(r: &Resource) -> String {
    if r.namespaced() {
        format!(
            "{}/namespaces/{{namespace}}/{}/{{name}}",
            r.group_path(),
            r.plural
        )
    } else {
        format!("{}/{}/{{name}}", r.group_path(), r.plural)
    }
}

fn patch_operation(r: &Resource) -> Value {
    json!({
        "operationId": format!("patch{}", r.kind.as_str()),
        "x-kubernetes-group-version-kind": {
            "group": r.group,
            "version": r.version,
            "kind": r.kind.as_str(),
        },
        "parameters": [
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ],
        "responses": {"200": {"description": "OK"}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_with_a_patch_per_kind() {
        let root = root();
        let paths = root["paths"].as_object().cloned().unwrap_or_default();
        assert_eq!(paths.len(), 1 + GROUPS.len());
        let mut kinds = 0;
        for path in paths.keys() {
            let doc = group_version(path).expect(path);
            for (_, p) in doc["paths"].as_object().cloned().unwrap_or_default() {
                assert_eq!(p["patch"]["parameters"][0]["name"], "fieldValidation");
                kinds += 1;
            }
        }
        assert_eq!(kinds, RESOURCES.len());
        assert!(group_version("apis/batch/v1").is_none());
    }
}
