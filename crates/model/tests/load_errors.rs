//! One case per class of bad input: each is refused, and the message names the file, the
//! document, the object and the field.

use std::error::Error;

use netd_model::{ClusterConfig, load_str};
use pretty_assertions::assert_eq;

/// The error with its causes, as `{:#}` prints it with anyhow.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn refused(name: &str, text: &str) -> String {
    match load_str(name, text, &ClusterConfig::default()) {
        Ok(m) => panic!(
            "{name}: loaded {} objects, expected an error",
            m.objects.len()
        ),
        Err(e) => chain(&e),
    }
}

const OK_POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: default}
spec:
  containers: [{name: c}]
";

fn pod(meta: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {meta}\nspec:\n{spec}\n")
}

fn service(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: default}}\nspec:\n{spec}\n"
    )
}

fn deployment(spec: &str) -> String {
    format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n{spec}\n")
}

const CONTAINER: &str = "  containers: [{name: c}]";
const PORT_80: &str = "  ports: [{port: 80}]";

fn cases() -> Vec<(&'static str, String, &'static str)> {
    let ingress_port = |port: &str| {
        policy(&format!(
            "  podSelector: {{}}\n  ingress:\n    - ports: [{port}]"
        ))
    };
    let peer = |peer: &str| {
        policy(&format!(
            "  podSelector: {{}}\n  ingress:\n    - from: [{peer}]"
        ))
    };
    vec![
        (
            "the issue's example: a bad named port, in the second document",
            format!("{OK_POD}---\n{}", ingress_port("{port: http-}")),
            r#"policy.yaml: document 2 (NetworkPolicy default/web): spec.ingress[0].ports[0].port: "http-" is not a valid port name"#,
        ),
        (
            "object name not a DNS-1123 subdomain",
            pod("{name: Web_1}", CONTAINER),
            r#"policy.yaml: document 1 (Pod default/Web_1): metadata.name: "Web_1" is not a valid DNS-1123 subdomain (lower-case alphanumerics, '-' and '.', at most 253 characters)"#,
        ),
        (
            "Namespace name not a DNS-1123 label",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team.a}\n".to_owned(),
            r#"policy.yaml: document 1 (Namespace team.a): metadata.name: "team.a" is not a valid DNS-1123 label (lower-case alphanumerics and '-', starting and ending with an alphanumeric, at most 63 characters)"#,
        ),
        (
            "Service name not a DNS-1035 label",
            service("1web", PORT_80),
            r#"policy.yaml: document 1 (Service default/1web): metadata.name: "1web" is not a valid DNS-1035 label (lower-case alphanumerics and '-', starting with a letter and ending with an alphanumeric, at most 63 characters)"#,
        ),
        (
            "name missing",
            pod("{namespace: prod}", CONTAINER),
            "policy.yaml: document 1 (Pod in prod without a name): metadata.name: required value",
        ),
        (
            "namespace not a DNS-1123 label",
            pod("{name: a, namespace: Prod}", CONTAINER),
            r#"policy.yaml: document 1 (Pod Prod/a): metadata.namespace: "Prod" is not a valid DNS-1123 label (lower-case alphanumerics and '-', starting and ending with an alphanumeric, at most 63 characters)"#,
        ),
        (
            "label key",
            pod("{name: a, labels: {-app: x}}", CONTAINER),
            r#"policy.yaml: document 1 (Pod default/a): metadata.labels: "-app" is not a valid label key (an optional DNS subdomain prefix and '/', then at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"#,
        ),
        (
            "label value",
            pod("{name: a, labels: {app: web-}}", CONTAINER),
            r#"policy.yaml: document 1 (Pod default/a): metadata.labels[app]: "web-" is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"#,
        ),
        (
            "Service selector label value",
            service("web", "  selector: {app: 'a b'}\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.selector[app]: "a b" is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"#,
        ),
        (
            "ipBlock cidr",
            peer("{ipBlock: {cidr: 10.0.0.0/33}}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].from[0].ipBlock.cidr: "10.0.0.0/33" must be a valid CIDR"#,
        ),
        (
            "ipBlock except outside its cidr",
            peer("{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].from[0].ipBlock.except[0]: "10.1.0.0/24" must be a strict subset of `cidr`"#,
        ),
        (
            "loadBalancerSourceRanges",
            service("web", "  type: LoadBalancer\n  ports: [{port: 80}]\n  loadBalancerSourceRanges: [1.2.3.4/40]"),
            r#"policy.yaml: document 1 (Service default/web): spec.loadBalancerSourceRanges[0]: "1.2.3.4/40" must be a valid CIDR"#,
        ),
        (
            "port number out of range",
            service("web", "  ports: [{port: 70000}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[0].port: "70000" must be between 1 and 65535, inclusive"#,
        ),
        (
            "containerPort zero",
            pod("{name: a}", "  containers: [{name: c, ports: [{containerPort: 0}]}]"),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[0].ports[0].containerPort: "0" must be between 1 and 65535, inclusive"#,
        ),
        (
            "targetPort not an IANA service name",
            service("web", "  ports: [{port: 80, targetPort: HTTP}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[0].targetPort: "HTTP" is not a valid port name"#,
        ),
        (
            "containerPort name not an IANA service name",
            pod("{name: a}", "  containers: [{name: c, ports: [{name: web--http, containerPort: 80}]}]"),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[0].ports[0].name: "web--http" is not a valid port name"#,
        ),
        (
            "containerPort names unique in the Pod",
            pod(
                "{name: a}",
                "  containers:\n    - {name: a, ports: [{name: http, containerPort: 80}]}\n    - {name: b, ports: [{name: http, containerPort: 81}]}",
            ),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[1].ports[0].name: duplicate value "http""#,
        ),
        (
            "protocol",
            ingress_port("{protocol: ICMP, port: 80}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP""#,
        ),
        (
            "protocol in lower case",
            service("web", "  ports: [{port: 53, protocol: udp}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[0].protocol: unsupported value "udp": supported values: "TCP", "UDP", "SCTP""#,
        ),
        (
            "endPort below port",
            ingress_port("{port: 8080, endPort: 8000}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].ports[0].endPort: "8000" must be greater than or equal to `port`"#,
        ),
        (
            "endPort with a named port",
            ingress_port("{port: http, endPort: 8000}"),
            "policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].ports[0].endPort: forbidden: may not be specified when `port` is unset or a named port",
        ),
        (
            "selector operator",
            policy("  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.podSelector.matchExpressions[0].operator: unsupported value "Equals": supported values: "In", "NotIn", "Exists", "DoesNotExist""#,
        ),
        (
            "selector In without values",
            peer("{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: []}]}}"),
            "policy.yaml: document 1 (NetworkPolicy default/web): spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: forbidden: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            "selector Exists with values",
            policy("  podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}"),
            "policy.yaml: document 1 (NetworkPolicy default/web): spec.podSelector.matchExpressions[0].values: forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            "selector value",
            policy("  podSelector: {matchLabels: {app: -x}}"),
            r#"policy.yaml: document 1 (NetworkPolicy default/web): spec.podSelector.matchLabels[app]: "-x" is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"#,
        ),
        (
            "duplicate object, the second without its namespace",
            format!("{OK_POD}---\n{}", pod("{name: ok}", CONTAINER)),
            "policy.yaml: document 2 (Pod default/ok): already defined in policy.yaml: document 1",
        ),
        (
            "ClusterIP outside the service CIDR",
            service("web", "  clusterIP: 10.0.0.1\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.clusterIP: "10.0.0.1" is not within the service CIDR (10.96.0.0/12)"#,
        ),
        (
            "ClusterIP set twice",
            format!(
                "{}---\n{}",
                service("a", "  clusterIP: 10.96.1.1\n  ports: [{port: 80}]"),
                service("b", "  clusterIPs: [10.96.1.1]\n  ports: [{port: 80}]")
            ),
            r#"policy.yaml: document 2 (Service default/b): spec.clusterIPs[0]: "10.96.1.1" is already allocated to Service default/a"#,
        ),
        (
            "ClusterIP of the cluster DNS Service",
            service("web", "  clusterIP: 10.96.0.10\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.clusterIP: "10.96.0.10" is already allocated to Service kube-system/kube-dns"#,
        ),
        (
            "clusterIP and clusterIPs disagree",
            service("web", "  clusterIP: 10.96.1.1\n  clusterIPs: [10.96.1.2]\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.clusterIPs[0]: "10.96.1.2" must match `clusterIP`"#,
        ),
        (
            "clusterIP None on a NodePort Service",
            service("web", "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.clusterIP: "None" may not be set to 'None' for NodePort services"#,
        ),
        (
            "nodePort outside its range",
            service("web", "  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[0].nodePort: "8080" is outside the nodePort range 30000-32767"#,
        ),
        (
            "nodePort used twice across Services",
            format!(
                "{}---\n{}",
                service("a", "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]"),
                service("b", "  type: LoadBalancer\n  ports: [{port: 53, protocol: UDP, nodePort: 30080}]")
            ),
            r#"policy.yaml: document 2 (Service default/b): spec.ports[0].nodePort: "30080" is already allocated to Service default/a"#,
        ),
        (
            "nodePort used twice in one Service for one protocol",
            service(
                "web",
                "  type: NodePort\n  ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]",
            ),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[1].nodePort: duplicate value "30080""#,
        ),
        (
            "nodePort on a ClusterIP Service",
            service("web", "  ports: [{port: 80, nodePort: 30080}]"),
            "policy.yaml: document 1 (Service default/web): spec.ports[0].nodePort: forbidden: may not be used when `type` is 'ClusterIP'",
        ),
        (
            "healthCheckNodePort without LoadBalancer and Local",
            service("web", "  type: LoadBalancer\n  healthCheckNodePort: 30100\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.healthCheckNodePort: "30100" may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"#,
        ),
        (
            "healthCheckNodePort taken by another Service's nodePort",
            format!(
                "{}---\n{}",
                service("a", "  type: NodePort\n  ports: [{port: 80, nodePort: 30100}]"),
                service(
                    "b",
                    "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 30100\n  ports: [{port: 80}]"
                )
            ),
            r#"policy.yaml: document 2 (Service default/b): spec.healthCheckNodePort: "30100" is already allocated to Service default/a"#,
        ),
        (
            "externalTrafficPolicy on a ClusterIP Service without externalIPs",
            service("web", "  externalTrafficPolicy: Local\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.externalTrafficPolicy: "Local" may only be set for externally-accessible services (NodePort, LoadBalancer or with externalIPs)"#,
        ),
        (
            "ExternalName without externalName",
            service("web", "  type: ExternalName"),
            "policy.yaml: document 1 (Service default/web): spec.externalName: required value",
        ),
        (
            "externalIPs",
            service("web", "  externalIPs: [203.0.113.300]\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.externalIPs[0]: "203.0.113.300" must be a valid IP address"#,
        ),
        (
            "Service without ports",
            service("web", "  selector: {app: web}"),
            "policy.yaml: document 1 (Service default/web): spec.ports: required value",
        ),
        (
            "Service port names required when there are several",
            service("web", "  ports: [{name: http, port: 80}, {port: 443}]"),
            "policy.yaml: document 1 (Service default/web): spec.ports[1].name: required value",
        ),
        (
            "Service port names unique",
            service("web", "  ports: [{name: http, port: 80}, {name: http, port: 443}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.ports[1].name: duplicate value "http""#,
        ),
        (
            "Deployment selector does not match the template",
            deployment(
                "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: api}}\n    spec: {containers: [{name: c}]}",
            ),
            r#"policy.yaml: document 1 (Deployment default/web): spec.template.metadata.labels: "app=api" `selector` does not match template `labels`"#,
        ),
        (
            "Deployment replicas negative",
            deployment(
                "  replicas: -1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c}]}",
            ),
            r#"policy.yaml: document 1 (Deployment default/web): spec.replicas: "-1" must be greater than or equal to 0"#,
        ),
        (
            "Deployment template checked as a Pod",
            deployment(
                "  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}",
            ),
            r#"policy.yaml: document 1 (Deployment default/web): spec.template.spec.containers[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP""#,
        ),
        (
            "Pod without containers",
            pod("{name: a}", "  nodeName: node-1"),
            "policy.yaml: document 1 (Pod default/a): spec.containers: required value",
        ),
        (
            "hostNetwork Pod with a hostPort other than its containerPort",
            pod("{name: a}", "  hostNetwork: true\n  containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}]}]"),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[0].ports[0].hostPort: "8080" must match `containerPort` when `hostNetwork` is true"#,
        ),
        (
            "EndpointSlice address of the wrong family",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n".to_owned(),
            r#"policy.yaml: document 1 (EndpointSlice default/web-1): endpoints[0].addresses[0]: "fd00::1" must be an IPv4 address, as `addressType` says"#,
        ),
        (
            "field of the wrong type",
            pod("{name: a}", "  containers: [{name: c, ports: [{containerPort: eighty}]}]"),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[0].ports[0].containerPort: invalid type: string "eighty", expected i32"#,
        ),
        (
            "known kind at an apiVersion kube-netd does not read",
            "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: web}\n".to_owned(),
            r#"policy.yaml: document 1: NetworkPolicy must have apiVersion networking.k8s.io/v1, not "extensions/v1beta1""#,
        ),
        (
            "kind missing",
            "apiVersion: v1\nmetadata: {name: web}\n".to_owned(),
            "policy.yaml: document 1: `kind` must be set to a string",
        ),
        (
            "document that is not a mapping",
            format!("{OK_POD}---\n- a\n- b\n"),
            "policy.yaml: document 2: not a Kubernetes object (a mapping with `apiVersion` and `kind`)",
        ),
        (
            "Namespace without a name",
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {team: a}}\n".to_owned(),
            "policy.yaml: document 1 (Namespace without a name): metadata.name: required value",
        ),
        (
            "container names unique in the Pod",
            pod("{name: a}", "  containers: [{name: c}, {name: c}]"),
            r#"policy.yaml: document 1 (Pod default/a): spec.containers[1].name: duplicate value "c""#,
        ),
        (
            "Deployment with an empty selector",
            deployment(
                "  selector: {}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c}]}",
            ),
            r#"policy.yaml: document 1 (Deployment default/web): spec.selector: "{}" empty selector is invalid for deployment"#,
        ),
        (
            "ExternalName with a clusterIP",
            service("web", "  type: ExternalName\n  externalName: db.example.com\n  clusterIP: 10.96.1.1"),
            "policy.yaml: document 1 (Service default/web): spec.clusterIP: forbidden: may not be set for ExternalName services",
        ),
        (
            "two clusterIPs of one family",
            service("web", "  clusterIPs: [10.96.1.1, 10.96.1.2]\n  ports: [{port: 80}]"),
            r#"policy.yaml: document 1 (Service default/web): spec.clusterIPs[1]: "10.96.1.2" must be of a different IP family than `clusterIPs[0]`"#,
        ),
        (
            "loadBalancerSourceRanges on a NodePort Service",
            service("web", "  type: NodePort\n  ports: [{port: 80}]\n  loadBalancerSourceRanges: [10.0.0.0/8]"),
            "policy.yaml: document 1 (Service default/web): spec.loadBalancerSourceRanges: forbidden: may only be used when `type` is 'LoadBalancer'",
        ),
        (
            "EndpointSlice endpoint without addresses",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nendpoints: [{addresses: []}]\n".to_owned(),
            "policy.yaml: document 1 (EndpointSlice default/web-1): endpoints[0].addresses: required value",
        ),
        (
            "apiVersion not a string",
            "apiVersion: 1\nkind: Pod\n".to_owned(),
            "policy.yaml: document 1: `apiVersion` must be set to a string",
        ),
        (
            "List whose items is not a list",
            "apiVersion: v1\nkind: List\nitems: {a: b}\n".to_owned(),
            "policy.yaml: document 1: `items` of a List must be a list of objects",
        ),
        (
            "List inside a List",
            "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: List, items: []}\n".to_owned(),
            "policy.yaml: document 1, items[0]: a List may not contain another List",
        ),
        (
            "a bad object inside a List",
            format!(
                "apiVersion: v1\nkind: List\nitems:\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: x}}}}\n  - {}\n",
                "{apiVersion: v1, kind: Service, metadata: {name: web, namespace: prod}, spec: {ports: [{port: 0}]}}"
            ),
            r#"policy.yaml: document 1, items[1] (Service prod/web): spec.ports[0].port: "0" must be between 1 and 65535, inclusive"#,
        ),
    ]
}

#[test]
fn each_class_of_bad_input_is_refused_with_file_document_object_and_field() {
    for (case, text, want) in cases() {
        assert_eq!(refused("policy.yaml", &text), want, "case: {case}");
    }
}

#[test]
fn yaml_syntax_errors_name_the_document_and_line() {
    let unclosed = format!("{OK_POD}---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [a\n");
    let cases = [
        (
            unclosed.as_str(),
            "bad.yaml: document 2: invalid YAML: did not find expected ',' or ']' at line 12 column 1, \
             while parsing a flow sequence at line 11 column 9",
        ),
        (
            "a: b\n  c: d\n",
            "bad.yaml: document 1: invalid YAML: mapping values are not allowed in this context at line 2 column 4",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, name: b}\n",
            r#"bad.yaml: document 1: invalid YAML: metadata: duplicate entry with key "name" at line 3 column 11"#,
        ),
    ];
    for (text, want) in cases {
        assert_eq!(refused("bad.yaml", text), want);
    }
}

#[test]
fn json_syntax_errors_name_the_document_and_line() {
    let text = "{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}\n{\n  \"kind\": \"Pod\",\n  \"apiVersion\" \"v1\"\n}\n";
    assert_eq!(
        refused("objs.json", text),
        "objs.json: document 2: invalid JSON: expected `:` at line 4 column 16"
    );
}
