//! Patches: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch as
//! kubectl sends it, and the
//! merge behind server-side apply with the field sets it records in `managedFields`.
//!
//! Strategic merge differs from a merge patch in lists: a list whose field has
//! `patchStrategy: merge` in the Kubernetes API (containers by `name`, a container's ports by
//! `containerPort`, a Service's ports by `port`, `env` by `name`, finalizers as a set...) is
//! merged element by element instead of replaced. [`list_strategy`] holds that table for the
//! kinds served here. The directives kubectl writes are honoured: `$patch: replace|delete|merge`,
//! `$setElementOrder/<field>`, `$deleteFromPrimitiveList/<field>` and `$retainKeys`.

use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// How a list field merges under a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's (the default, and every atomic list).
    Replace,
    /// Elements are objects matched by this key; a patch element merges into its match.
    MergeByKey(&'static str),
    /// A list of scalars merged as a set (finalizers, a Node's podCIDRs).
    MergeScalars,
}

/// The strategy of the list `field` found in the map at `path` (the names of the fields
/// leading there from the object's root, list indices left out), in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[&str], field: &str) -> ListStrategy {
    let parent = path.last().copied().unwrap_or("");
    let in_container = matches!(
        parent,
        "containers" | "initContainers" | "ephemeralContainers"
    );
    match field {
        "containers" | "initContainers" | "ephemeralContainers" => ListStrategy::MergeByKey("name"),
        "ports" if in_container => ListStrategy::MergeByKey("containerPort"),
        "ports" if kind == "Service" && path == ["spec"] => ListStrategy::MergeByKey("port"),
        "env" if in_container => ListStrategy::MergeByKey("name"),
        "volumeMounts" if in_container => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" if in_container => ListStrategy::MergeByKey("devicePath"),
        "volumes" | "imagePullSecrets" | "readinessGates" if parent == "spec" => {
            ListStrategy::MergeByKey(if field == "readinessGates" {
                "conditionType"
            } else {
                "name"
            })
        }
        "hostAliases" if parent == "spec" => ListStrategy::MergeByKey("ip"),
        "ownerReferences" if path == ["metadata"] => ListStrategy::MergeByKey("uid"),
        "finalizers" if path == ["metadata"] => ListStrategy::MergeScalars,
        "conditions" if parent == "status" => ListStrategy::MergeByKey("type"),
        "addresses" if kind == "Node" && path == ["status"] => ListStrategy::MergeByKey("type"),
        "podIPs" | "hostIPs" if kind == "Pod" && path == ["status"] => {
            ListStrategy::MergeByKey("ip")
        }
        "taints" if kind == "Node" && path == ["spec"] => ListStrategy::MergeByKey("key"),
        "podCIDRs" if kind == "Node" && path == ["spec"] => ListStrategy::MergeScalars,
        _ => ListStrategy::Replace,
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies a JSON patch (RFC 6902: `add`, `remove`, `replace`, `move`, `copy`, `test`) to
/// `target`; all or nothing.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Value::Array(operations) = patch else {
        return Err(ApiError::BadRequest(
            "a JSON patch must be a list of operations".into(),
        ));
    };
    let mut result = target.clone();
    for (i, op) in operations.iter().enumerate() {
        let bad = |what: &str| ApiError::BadRequest(format!("JSON patch operation {i}: {what}"));
        let path = op["path"].as_str().ok_or_else(|| bad("no path"))?;
        let from = || op["from"].as_str().ok_or_else(|| bad("no from"));
        let value = || op.get("value").cloned().ok_or_else(|| bad("no value"));
        match op["op"].as_str().unwrap_or("") {
            "add" => pointer_add(&mut result, path, value()?).map_err(bad)?,
            "remove" => {
                pointer_remove(&mut result, path).map_err(bad)?;
            }
            "replace" => {
                pointer_remove(&mut result, path).map_err(bad)?;
                pointer_add(&mut result, path, value()?).map_err(bad)?;
            }
            "move" => {
                let moved = pointer_remove(&mut result, from()?).map_err(bad)?;
                pointer_add(&mut result, path, moved).map_err(bad)?;
            }
            "copy" => {
                let copied = result
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| bad("from does not exist"))?;
                pointer_add(&mut result, path, copied).map_err(bad)?;
            }
            "test" => {
                if result.pointer(path) != Some(&value()?) {
                    return Err(bad("test failed"));
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    *target = result;
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and its last token, unescaped.
fn split_pointer(path: &str) -> Result<(&str, String), &'static str> {
    let (parent, last) = path.rsplit_once('/').ok_or("path is not a JSON pointer")?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(target: &mut Value, path: &str, value: Value) -> Result<(), &'static str> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(last, value);
            Ok(())
        }
        Some(Value::Array(list)) => {
            let index = if last == "-" {
                list.len()
            } else {
                last.parse().map_err(|_| "not a list index")?
            };
            if index > list.len() {
                return Err("list index out of range");
            }
            list.insert(index, value);
            Ok(())
        }
        _ => Err("parent does not exist"),
    }
}

fn pointer_remove(target: &mut Value, path: &str) -> Result<Value, &'static str> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).ok_or("path does not exist"),
        Some(Value::Array(list)) => {
            let index: usize = last.parse().map_err(|_| "not a list index")?;
            if index >= list.len() {
                return Err("list index out of range");
            }
            Ok(list.remove(index))
        }
        _ => Err("path does not exist"),
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge(target: &mut Value, patch: &Value, kind: &str) -> Result<(), ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::BadRequest(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    if !target.is_object() {
        *target = json!({});
    }
    let mut path = Vec::new();
    if let Value::Object(map) = target {
        merge_map(map, patch, kind, &mut path)?;
    }
    Ok(())
}

/// Merges `patch` into `target` as server-side apply does: maps recursively, lists by the
/// strategic merge strategy, scalars replaced. Directives are not honoured (an applied
/// configuration is an object, not a patch).
pub fn apply_merge(target: &mut Value, applied: &Value, kind: &str) -> Result<(), ApiError> {
    strategic_merge(target, applied, kind)
}

fn merge_map<'p>(
    target: &mut Map<String, Value>,
    patch: &'p Map<String, Value>,
    kind: &str,
    path: &mut Vec<&'p str>,
) -> Result<(), ApiError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = replaced;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown patch directive $patch: {other:?}"
            )));
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match value {
            Value::Object(sub) => {
                if sub.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(key);
                    continue;
                }
                let slot = target
                    .entry(key.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(slot) = slot {
                    path.push(key);
                    merge_map(slot, sub, kind, path)?;
                    path.pop();
                }
            }
            Value::Array(items) => {
                let strategy = list_strategy(kind, path, key);
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                path.push(key);
                merge_list(slot, items, strategy, kind, path)?;
                path.pop();
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            let strategy = list_strategy(kind, path, field);
            if let (Some(Value::Array(list)), Some(order)) =
                (target.get_mut(field), value.as_array())
            {
                reorder(list, order, strategy);
            }
        }
    }
    if let Some(keep) = patch.get("$retainKeys").and_then(Value::as_array) {
        target.retain(|k, _| keep.iter().any(|v| v.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list<'p>(
    slot: &mut Value,
    items: &'p [Value],
    strategy: ListStrategy,
    kind: &str,
    path: &mut Vec<&'p str>,
) -> Result<(), ApiError> {
    // `[{"$patch": "replace"}, ...]`: the rest of the list replaces the object's.
    let replace_all = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if strategy == ListStrategy::Replace || replace_all || !slot.is_array() {
        let kept: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        if strategy == ListStrategy::Replace || replace_all {
            *slot = Value::Array(kept);
            return Ok(());
        }
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(list) = slot else {
        return Ok(());
    };
    match strategy {
        ListStrategy::Replace => {}
        ListStrategy::MergeScalars => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
        ListStrategy::MergeByKey(key) => {
            for item in items {
                let Value::Object(patch_item) = item else {
                    return Err(ApiError::BadRequest(format!(
                        "list items merged by {key:?} must be objects"
                    )));
                };
                let Some(wanted) = patch_item.get(key) else {
                    return Err(ApiError::BadRequest(format!(
                        "a list item has no merge key {key:?}"
                    )));
                };
                let found = list.iter().position(|e| e.get(key) == Some(wanted));
                let delete = patch_item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (found, delete) {
                    (Some(i), true) => {
                        list.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Value::Object(existing) = &mut list[i] {
                            merge_map(existing, patch_item, kind, path)?;
                        }
                    }
                    (None, false) => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, patch_item, kind, path)?;
                        list.push(Value::Object(fresh));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts the elements named in `order` first, in that order; the others keep their order
/// after them.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let rank = |e: &Value| {
        order.iter().position(|o| match strategy {
            ListStrategy::MergeByKey(key) => o.get(key).is_some() && o.get(key) == e.get(key),
            _ => o == e,
        })
    };
    let mut ranked: Vec<(usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, e)| (rank(&e).unwrap_or(order.len() + i), e))
        .collect();
    ranked.sort_by_key(|(r, _)| *r);
    list.extend(ranked.into_iter().map(|(_, e)| e));
}

/// The set of fields an applied configuration sets, in the `FieldsV1` shape `managedFields`
/// records (`{"f:spec": {"f:replicas": {}}}`; list elements merged by key as
/// `k:{"name":"web"}`).
pub fn field_set(applied: &Value, kind: &str) -> Value {
    let mut path = Vec::new();
    match applied {
        Value::Object(map) => fields_of_map(map, kind, &mut path),
        _ => json!({}),
    }
}

fn fields_of_map<'a>(map: &'a Map<String, Value>, kind: &str, path: &mut Vec<&'a str>) -> Value {
    let mut set = Map::new();
    for (key, value) in map {
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind") {
            continue;
        }
        if *path == ["metadata"] && matches!(key.as_str(), "name" | "namespace") {
            continue;
        }
        let entry = match value {
            Value::Object(sub) if !sub.is_empty() => {
                path.push(key);
                let s = fields_of_map(sub, kind, path);
                path.pop();
                s
            }
            Value::Array(items) => match list_strategy(kind, path, key) {
                ListStrategy::MergeByKey(k) => {
                    path.push(key);
                    let mut elements = Map::new();
                    for item in items {
                        if let (Value::Object(m), Some(v)) = (item, item.get(k)) {
                            let mut e = fields_of_map(m, kind, path);
                            if let Value::Object(e) = &mut e {
                                e.insert(".".into(), json!({}));
                            }
                            elements.insert(format!("k:{}", json!({ k: v })), e);
                        }
                    }
                    path.pop();
                    Value::Object(elements)
                }
                ListStrategy::MergeScalars => {
                    let elements: Map<String, Value> = items
                        .iter()
                        .map(|v| (format!("v:{v}"), json!({})))
                        .collect();
                    Value::Object(elements)
                }
                ListStrategy::Replace => json!({}),
            },
            _ => json!({}),
        };
        set.insert(format!("f:{key}"), entry);
    }
    Value::Object(set)
}

/// Removes from `live` what the `old` field set holds and the `new` one does not: the fields
/// a manager applied before and no longer applies.
pub fn remove_dropped(live: &mut Value, old: &Value, new: &Value) {
    let (Value::Object(live), Value::Object(old)) = (live, old) else {
        return;
    };
    let empty = Map::new();
    let new = new.as_object().unwrap_or(&empty);
    for (key, old_sub) in old {
        let kept = new.get(key);
        if let Some(field) = key.strip_prefix("f:") {
            match kept {
                None => {
                    live.remove(field);
                }
                Some(new_sub) => {
                    if let Some(child) = live.get_mut(field) {
                        remove_dropped_in(child, old_sub, new_sub);
                    }
                }
            }
        }
    }
}

fn remove_dropped_in(live: &mut Value, old: &Value, new: &Value) {
    match live {
        Value::Object(_) => remove_dropped(live, old, new),
        Value::Array(list) => {
            let (Value::Object(old), Some(new)) = (old, new.as_object()) else {
                return;
            };
            for (key, old_sub) in old {
                if let Some(k) = key.strip_prefix("k:") {
                    let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(k) else {
                        continue;
                    };
                    let matches = |e: &Value| wanted.iter().all(|(wk, wv)| e.get(wk) == Some(wv));
                    match new.get(key) {
                        None => list.retain(|e| !matches(e)),
                        Some(new_sub) => {
                            for e in list.iter_mut().filter(|e| matches(e)) {
                                remove_dropped(e, old_sub, new_sub);
                            }
                        }
                    }
                } else if let Some(v) = key.strip_prefix("v:")
                    && !new.contains_key(key)
                    && let Ok(v) = serde_json::from_str::<Value>(v)
                {
                    list.retain(|e| e != &v);
                }
            }
        }
        _ => {}
    }
}

/// The leaf fields of a field set, each as its path of set keys (`["f:spec", "f:replicas"]`).
pub fn leaves(set: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut path = Vec::new();
    collect_leaves(set, &mut path, &mut out);
    out
}

fn collect_leaves(set: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let Value::Object(map) = set else {
        return;
    };
    let children: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        if !path.is_empty() {
            out.push(path.clone());
        }
        return;
    }
    for (key, sub) in children {
        path.push(key.clone());
        collect_leaves(sub, path, out);
        path.pop();
    }
}

/// What `object` holds at a field-set path: the field's value, the list element a `k:` key
/// names, or for a `v:` key whether the scalar is in the list.
pub fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<Value> {
    let mut at: &'a Value = object;
    for key in path {
        if let Some(field) = key.strip_prefix("f:") {
            at = at.get(field)?;
        } else if let Some(k) = key.strip_prefix("k:") {
            let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(k) else {
                return None;
            };
            at = at
                .as_array()?
                .iter()
                .find(|e| wanted.iter().all(|(wk, wv)| e.get(wk) == Some(wv)))?;
        } else if let Some(v) = key.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).ok()?;
            return Some(Value::Bool(at.as_array()?.contains(&v)));
        }
    }
    Some(at.clone())
}

/// A field-set path as the API server writes it in conflicts (`.spec.containers[name="web"].image`).
pub fn path_text(path: &[String]) -> String {
    let mut out = String::new();
    for key in path {
        if let Some(field) = key.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(k) = key.strip_prefix("k:") {
            let pairs: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(a, b)| format!("{a}={b}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", pairs.join(",")));
        } else if let Some(v) = key.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        }
    }
    out
}

/// Removes one leaf (and the parents it leaves empty) from a field set.
pub fn remove_leaf(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(map) = set else {
        return;
    };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(sub) = map.get_mut(first) {
        remove_leaf(sub, rest);
        if sub.as_object().is_some_and(|m| m.keys().all(|k| k == ".")) {
            map.remove(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge_patch(
            &mut o,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [3]}}),
        );
        assert_eq!(
            o,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [3]}})
        );
    }

    #[test]
    fn json_patch_applies_all_operations_or_none() {
        let mut o = json!({"metadata": {"labels": {"a/b": "1"}}, "spec": {"l": [1, 3]}});
        let patch = json!([
            {"op": "add", "path": "/spec/l/1", "value": 2},
            {"op": "add", "path": "/spec/l/-", "value": 4},
            {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
            {"op": "copy", "from": "/spec/l", "path": "/spec/m"},
            {"op": "move", "from": "/spec/m", "path": "/spec/n"},
            {"op": "test", "path": "/spec/n/0", "value": 1},
        ]);
        json_patch(&mut o, &patch).expect("patch");
        assert_eq!(
            o,
            json!({"metadata": {"labels": {"a/b": "2"}}, "spec": {"l": [1, 2, 3, 4], "n": [1, 2, 3, 4]}})
        );
        let failing = json!([
            {"op": "remove", "path": "/spec/l"},
            {"op": "test", "path": "/spec/n/0", "value": 9},
        ]);
        assert!(json_patch(&mut o, &failing).is_err());
        assert_eq!(o["spec"]["l"], json!([1, 2, 3, 4]));
    }

    #[test]
    fn strategic_merge_merges_containers_and_ports_by_key() {
        let mut o = json!({"spec": {"containers": [
            {"name": "a", "image": "i1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b", "image": "i2"}
        ]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
            "containers": [
                {"name": "a", "ports": [{"containerPort": 81}]},
                {"name": "c", "image": "i3"},
            ]
        }});
        strategic_merge(&mut o, &patch, "Pod").expect("patch");
        assert_eq!(
            o,
            json!({"spec": {"containers": [
                {"name": "b", "image": "i2"},
                {"name": "a", "image": "i1", "ports": [
                    {"containerPort": 80, "name": "http"}, {"containerPort": 81}
                ]},
                {"name": "c", "image": "i3"},
            ]}})
        );
        let delete = json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}});
        strategic_merge(&mut o, &delete, "Pod").expect("patch");
        let names: Vec<&Value> = o["spec"]["containers"]
            .as_array()
            .map(|l| l.iter().map(|c| &c["name"]).collect())
            .unwrap_or_default();
        assert_eq!(names, [&json!("a"), &json!("c")]);
    }

    #[test]
    fn strategic_merge_replaces_atomic_lists_and_honours_directives() {
        let mut o = json!({
            "metadata": {"finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "name": "a"}], "selector": {"app": "w", "tier": "t"}}
        });
        let patch = json!({
            "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"$patch": "replace", "app": "v"}}
        });
        strategic_merge(&mut o, &patch, "Service").expect("patch");
        assert_eq!(
            o,
            json!({
                "metadata": {"finalizers": ["y"]},
                "spec": {"ports": [{"port": 80, "name": "a", "targetPort": 8080}], "selector": {"app": "v"}}
            })
        );
        // The same list in an EndpointSlice is atomic.
        let mut s = json!({"ports": [{"port": 80, "name": "a"}]});
        strategic_merge(&mut s, &json!({"ports": [{"port": 81}]}), "EndpointSlice").expect("patch");
        assert_eq!(s, json!({"ports": [{"port": 81}]}));
    }

    #[test]
    fn field_sets_let_apply_drop_what_it_no_longer_sets() {
        let first = json!({"metadata": {"name": "w", "labels": {"a": "1", "b": "2"}},
            "spec": {"containers": [{"name": "c", "image": "i"}, {"name": "d", "image": "j"}]}});
        let second = json!({"metadata": {"name": "w", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let old = field_set(&first, "Pod");
        assert_eq!(
            old["f:spec"]["f:containers"][r#"k:{"name":"c"}"#],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        let mut live = first.clone();
        live["metadata"]["labels"]["other"] = json!("kept");
        apply_merge(&mut live, &second, "Pod").expect("merge");
        remove_dropped(&mut live, &old, &field_set(&second, "Pod"));
        assert_eq!(
            live,
            json!({"metadata": {"name": "w", "labels": {"a": "1", "other": "kept"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}})
        );
    }
}
