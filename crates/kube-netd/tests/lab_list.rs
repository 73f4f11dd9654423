//! `kube-netd lab list` shows the labs on this machine, and errors about what a lab lacks
//! name the lab. Needs root: it builds a lab.

mod common;

use common::TestLab;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: node-3, containers: [{name: c, image: echo, ports: [{containerPort: 80}]}]}
"#;

#[test]
fn lab_list_shows_a_running_lab_until_it_is_down_and_errors_name_the_lab() {
    let lab = TestLab::new("list");
    let pod = lab.file("pod.yaml", POD);
    lab.ok(&["up", "--nodes", "3", "-f", &pod]);

    let table = lab.ok(&["list"]);
    let header = table.lines().next().expect("a header");
    assert!(
        header.starts_with("CURRENT") && header.contains("NAME") && header.ends_with("AGE"),
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(lab.name.as_str()))
        .unwrap_or_else(|| panic!("no row for {}: {table}", lab.name))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..5],
        ["*", lab.name.as_str(), "3", "iptables", "Running"]
    );

    let json: serde_json::Value =
        serde_json::from_str(&lab.ok(&["list", "-o", "json"])).expect("a JSON array");
    let entry = json
        .as_array()
        .expect("an array")
        .iter()
        .find(|l| l["name"] == lab.name.as_str())
        .expect("the lab is listed");
    assert_eq!(entry["nodes"], 3, "{entry}");
    assert_eq!(entry["mode"], "iptables", "{entry}");
    assert_eq!(entry["status"], "Running", "{entry}");
    assert_eq!(entry["current"], true, "{entry}");
    assert!(entry["ageSeconds"].is_u64(), "{entry}");

    let missing = format!("pod \"x/nope\" is not in lab \"{}\"", lab.name);
    let (_, err) = lab.fails(&["probe", "x/nope", "node/node-1", "--port", "80"]);
    assert!(err.contains(&missing), "{err}");
    let (_, err) = lab.fails(&["exec", "x/nope", "--", "true"]);
    assert!(err.contains(&missing), "{err}");
    let (_, err) = lab.fails(&["probe", "x/a", "x/nope", "--port", "80"]);
    assert!(
        err.contains(&format!("\"x/nope\" is not in lab \"{}\"", lab.name)),
        "{err}"
    );

    lab.ok(&["down"]);
    let after = lab.ok(&["list", "-o", "json"]);
    assert!(!after.contains(&format!("\"{}\"", lab.name)), "{after}");
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
