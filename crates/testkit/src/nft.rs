//! `nft` run inside a test's network namespace: for tests that load rendered nftables rules
//! into a kernel and read them back ([`listed`] compares what two loads left).

use std::io::Write as _;
use std::process::Stdio;

use netd_kernel::netns;
use serde_json::Value;

/// Runs `nft <args>` in the namespace `ns` with `stdin` as its input: its output, or the
/// error nft printed.
pub fn nft(ns: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = netns::command(ns, "nft")
        .map_err(|e| e.to_string())?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(stdin.as_bytes())
        .map_err(|e| format!("write to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads `payload` into `ns` in one `nft -f -` transaction; panics with nft's error and the
/// payload when the kernel refuses it.
pub fn load(ns: &str, payload: &str) {
    if let Err(e) = nft(ns, &["-f", "-"], payload) {
        panic!("nft -f failed: {e}\n--- payload:\n{payload}");
    }
}

/// The table `family name` as the kernel holds it, in a form that does not depend on how it
/// got there (`nft -f`, netlink, an incremental update): `nft -j list table` without
/// handles, set elements sorted (nft lists hashed sets in bucket order), objects sorted,
/// rules kept in order within their chain. Panics when nft cannot list it.
pub fn listed(ns: &str, family: &str, name: &str) -> Value {
    let json = nft(ns, &["-j", "list", "table", family, name], "")
        .unwrap_or_else(|e| panic!("nft list table {family} {name}: {e}"));
    normalised(&json)
}

/// `nft -j list table` output (read wherever it was run) in [`listed`]'s form.
pub fn normalised(json: &str) -> Value {
    let mut value: Value = serde_json::from_str(json).expect("nft -j output");
    normalise(&mut value);
    let Value::Object(mut top) = value else {
        panic!("nft -j output is not an object");
    };
    let Some(Value::Array(items)) = top.remove("nftables") else {
        panic!("nft -j output has no nftables array");
    };
    let (mut rules, mut others): (Vec<Value>, Vec<Value>) =
        items.into_iter().partition(|v| v.get("rule").is_some());
    rules.sort_by_key(|r| r["rule"]["chain"].as_str().unwrap_or_default().to_owned());
    others.sort_by_key(|v| v.to_string());
    others.extend(rules);
    Value::Array(others)
}

/// A [`listed`] table with the maps named in `maps` reduced to their element counts and the
/// rules of the chains in `chains` left out: for data maps whose declaration depends on how
/// they were loaded (`nft -f` declares a concatenated interval map, netlink one raw field),
/// which tests then compare by packets instead.
pub fn without(listed: Value, maps: &[String], chains: &[String]) -> Value {
    let Value::Array(items) = listed else {
        panic!("a listed table is an array");
    };
    let named =
        |v: &Value, names: &[String]| v.as_str().is_some_and(|n| names.iter().any(|m| m == n));
    items
        .into_iter()
        .filter(|item| !named(&item["rule"]["chain"], chains))
        .map(|item| {
            let map = &item["map"];
            if !named(&map["name"], maps) {
                return item;
            }
            let count = map["elem"].as_array().map_or(0, Vec::len);
            serde_json::json!({ "map": map["name"], "elements": count })
        })
        .collect()
}

fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            for (key, child) in map.iter_mut() {
                normalise(child);
                if let (true, Value::Array(elems)) = (key == "elem", child) {
                    elems.sort_by_key(|e| e.to_string());
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}
