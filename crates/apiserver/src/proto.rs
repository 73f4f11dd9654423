//! The little of Kubernetes' protobuf encoding the server reads: kubectl's typed clients
//! (`kubectl create namespace NAME`, `kubectl create deployment NAME --image ...`,
//! `kubectl create service ...`) send protobuf bodies and do not fall back to JSON.
//!
//! Each kind read has a schema of the fields those commands set ([`NAMESPACE`],
//! [`DEPLOYMENT`], [`SERVICE`]), by field number as in Kubernetes' `generated.proto`. Go encodes every
//! field that is not a pointer, so a field at its zero value (an empty string or message, a
//! `0`, `false`) means "unset" and is skipped whatever its number. Any other field the schema
//! does not know refuses the whole body (415, as a server that does not read it would): a
//! field dropped would be a write half done. The client's `status` is ignored, as the API
//! server ignores it on create.

use serde_json::{Map, Value, json};

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// How one field is read, and the JSON name it gets.
#[derive(Clone, Copy)]
enum Read {
    /// A string; empty is unset.
    Text(&'static str),
    /// A non-pointer integer; 0 is unset.
    Int(&'static str),
    /// A pointer integer: present means set, 0 included.
    OptionalInt(&'static str),
    /// A non-pointer bool; false is unset.
    Bool(&'static str),
    /// Repeated strings.
    Texts(&'static str),
    /// A `map<string, string>`.
    Labels(&'static str),
    /// An `IntOrString`.
    IntOrString(&'static str),
    /// A message.
    Message(&'static str, &'static Schema),
    /// Repeated messages.
    Messages(&'static str, &'static Schema),
    /// Skipped whatever it holds (the client's `status`).
    Ignored,
}

/// A message's known fields, by number.
type Schema = [(u64, Read)];

const OBJECT_META: &Schema = &[
    (1, Read::Text("name")),
    (2, Read::Text("generateName")),
    (3, Read::Text("namespace")),
    (11, Read::Labels("labels")),
    (12, Read::Labels("annotations")),
];

/// A message every field of which must be unset (`resources: {}`, `spec: {}`).
const EMPTY: &Schema = &[];

const LABEL_SELECTOR: &Schema = &[(1, Read::Labels("matchLabels"))];

const CONTAINER_PORT: &Schema = &[
    (1, Read::Text("name")),
    (2, Read::Int("hostPort")),
    (3, Read::Int("containerPort")),
    (4, Read::Text("protocol")),
    (5, Read::Text("hostIP")),
];

const CONTAINER: &Schema = &[
    (1, Read::Text("name")),
    (2, Read::Text("image")),
    (3, Read::Texts("command")),
    (4, Read::Texts("args")),
    (5, Read::Text("workingDir")),
    (6, Read::Messages("ports", CONTAINER_PORT)),
    (8, Read::Message("resources", EMPTY)),
    (13, Read::Text("terminationMessagePath")),
    (14, Read::Text("imagePullPolicy")),
    (16, Read::Bool("stdin")),
    (17, Read::Bool("stdinOnce")),
    (18, Read::Bool("tty")),
    (20, Read::Text("terminationMessagePolicy")),
];

const POD_SPEC: &Schema = &[
    (2, Read::Messages("containers", CONTAINER)),
    (3, Read::Text("restartPolicy")),
    (6, Read::Text("dnsPolicy")),
    (8, Read::Text("serviceAccountName")),
    (10, Read::Text("nodeName")),
    (11, Read::Bool("hostNetwork")),
];

const POD_TEMPLATE_SPEC: &Schema = &[
    (1, Read::Message("metadata", OBJECT_META)),
    (2, Read::Message("spec", POD_SPEC)),
];

const ROLLING_UPDATE: &Schema = &[
    (1, Read::IntOrString("maxUnavailable")),
    (2, Read::IntOrString("maxSurge")),
];

const STRATEGY: &Schema = &[
    (1, Read::Text("type")),
    (2, Read::Message("rollingUpdate", ROLLING_UPDATE)),
];

const DEPLOYMENT_SPEC: &Schema = &[
    (1, Read::OptionalInt("replicas")),
    (2, Read::Message("selector", LABEL_SELECTOR)),
    (3, Read::Message("template", POD_TEMPLATE_SPEC)),
    (4, Read::Message("strategy", STRATEGY)),
    (5, Read::Int("minReadySeconds")),
    (6, Read::OptionalInt("revisionHistoryLimit")),
    (7, Read::Bool("paused")),
    (9, Read::OptionalInt("progressDeadlineSeconds")),
];

const SERVICE_PORT: &Schema = &[
    (1, Read::Text("name")),
    (2, Read::Text("protocol")),
    (3, Read::Int("port")),
    (4, Read::IntOrString("targetPort")),
    (5, Read::Int("nodePort")),
    (6, Read::Text("appProtocol")),
];

const SERVICE_SPEC: &Schema = &[
    (1, Read::Messages("ports", SERVICE_PORT)),
    (2, Read::Labels("selector")),
    (3, Read::Text("clusterIP")),
    (4, Read::Text("type")),
    (5, Read::Texts("externalIPs")),
    (7, Read::Text("sessionAffinity")),
    (8, Read::Text("loadBalancerIP")),
    (10, Read::Text("externalName")),
    (11, Read::Text("externalTrafficPolicy")),
    (12, Read::Int("healthCheckNodePort")),
    (13, Read::Bool("publishNotReadyAddresses")),
];

/// `v1` Namespace, as `kubectl create namespace` sends it.
const NAMESPACE: &Schema = &[
    (1, Read::Message("metadata", OBJECT_META)),
    (2, Read::Message("spec", EMPTY)),
    (3, Read::Ignored),
];

/// `v1` Service, as `kubectl create service clusterip|nodeport|loadbalancer|externalname`
/// sends it.
const SERVICE: &Schema = &[
    (1, Read::Message("metadata", OBJECT_META)),
    (2, Read::Message("spec", SERVICE_SPEC)),
    (3, Read::Ignored),
];

/// `apps/v1` Deployment, as `kubectl create deployment` sends it.
const DEPLOYMENT: &Schema = &[
    (1, Read::Message("metadata", OBJECT_META)),
    (2, Read::Message("spec", DEPLOYMENT_SPEC)),
    (3, Read::Ignored),
];

/// A protobuf body as the JSON object it encodes, if it is of a kind and holds only fields
/// this module reads.
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = fields(bytes_of(&unknown, 1)?)?;
    let api_version = text_of(&type_meta, 1)?;
    let kind = text_of(&type_meta, 2)?;
    let schema = match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        _ => return None,
    };
    let Value::Object(mut object) = message(bytes_of(&unknown, 2)?, schema)? else {
        return None;
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Some(Value::Object(object))
}

/// One message read by `schema`; `None` if malformed or holding a field it does not know.
fn message(buf: &[u8], schema: &Schema) -> Option<Value> {
    let mut out = Map::new();
    for (number, field) in fields(buf)? {
        let Some((_, read)) = schema.iter().find(|(n, _)| *n == number) else {
            if field.is_unset() {
                continue;
            }
            return None;
        };
        match (*read, field) {
            (Read::Ignored, _) => {}
            (Read::Text(name), Field::Bytes(b)) => {
                if !b.is_empty() {
                    out.insert(name.into(), json!(std::str::from_utf8(b).ok()?));
                }
            }
            (Read::Int(name), Field::Varint(v)) => {
                if v != 0 {
                    out.insert(name.into(), json!(int32(v)?));
                }
            }
            (Read::OptionalInt(name), Field::Varint(v)) => {
                out.insert(name.into(), json!(int32(v)?));
            }
            (Read::Bool(name), Field::Varint(v)) => {
                if v != 0 {
                    out.insert(name.into(), json!(true));
                }
            }
            (Read::Texts(name), Field::Bytes(b)) => {
                push(&mut out, name, json!(std::str::from_utf8(b).ok()?));
            }
            (Read::Labels(name), Field::Bytes(b)) => {
                let entry = fields(b)?;
                let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                map.as_object_mut()?.insert(
                    text_of(&entry, 1)?.to_owned(),
                    json!(text_of(&entry, 2).unwrap_or("")),
                );
            }
            (Read::IntOrString(name), Field::Bytes(b)) => {
                let parts = fields(b)?;
                let value = match varint_of(&parts, 1).unwrap_or(0) {
                    0 => json!(int32(varint_of(&parts, 2).unwrap_or(0))?),
                    1 => json!(text_of(&parts, 3).unwrap_or("")),
                    _ => return None,
                };
                out.insert(name.into(), value);
            }
            (Read::Message(name, inner), Field::Bytes(b)) => {
                let value = message(b, inner)?;
                if value.as_object().is_some_and(|m| !m.is_empty()) {
                    out.insert(name.into(), value);
                }
            }
            (Read::Messages(name, inner), Field::Bytes(b)) => {
                push(&mut out, name, message(b, inner)?);
            }
            // A field of the wrong wire type: not the message the schema describes.
            _ => return None,
        }
    }
    Some(Value::Object(out))
}

/// Appends `value` to the array `name` of `out`.
fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    if let Value::Array(items) = out.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
        items.push(value);
    }
}

/// A varint as the `int32` it encodes (negative ones take ten bytes, sign-extended).
fn int32(v: u64) -> Option<i32> {
    i32::try_from(i64::from_ne_bytes(v.to_ne_bytes())).ok()
}

/// One decoded field value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl Field<'_> {
    /// Whether it holds its zero value, which Go writes for every field that is not a pointer.
    fn is_unset(&self) -> bool {
        match self {
            Field::Varint(v) => *v == 0,
            Field::Bytes(b) => b.is_empty(),
        }
    }
}

/// The fields of a message, in order, by field number; `None` if it is malformed.
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (value, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Field::Bytes(value)
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn bytes_of<'a>(fields: &[(u64, Field<'a>)], number: u64) -> Option<&'a [u8]> {
    fields.iter().find_map(|(n, f)| match f {
        Field::Bytes(b) if *n == number => Some(*b),
        _ => None,
    })
}

fn varint_of(fields: &[(u64, Field<'_>)], number: u64) -> Option<u64> {
    fields.iter().find_map(|(n, f)| match f {
        Field::Varint(v) if *n == number => Some(*v),
        _ => None,
    })
}

fn text_of<'a>(fields: &[(u64, Field<'a>)], number: u64) -> Option<&'a str> {
    std::str::from_utf8(bytes_of(fields, number)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value` as a varint.
    fn encode(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = u8::try_from(value & 0x7f).expect("seven bits");
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let len = u64::try_from(bytes.len()).expect("length");
        [encode((number << 3) | 2), encode(len), bytes.to_vec()].concat()
    }

    fn int(number: u64, value: u64) -> Vec<u8> {
        [encode(number << 3), encode(value)].concat()
    }

    fn body(api_version: &[u8], kind: &[u8], object: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, api_version), field(2, kind)].concat();
        [MAGIC.to_vec(), field(1, &type_meta), field(2, object)].concat()
    }

    #[test]
    fn a_namespace_decodes_and_other_kinds_do_not() {
        let entry = [field(1, b"team"), field(2, b"a")].concat();
        // As Go writes it: the unset strings and timestamp as empty fields.
        let meta = [
            field(1, b"web"),
            field(4, b""),
            field(8, b""),
            field(11, &entry),
        ]
        .concat();
        let object = [field(1, &meta), field(2, b""), field(3, b"")].concat();
        assert_eq!(
            decode(&body(b"v1", b"Namespace", &object)),
            Some(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "web", "labels": {"team": "a"}}}))
        );
        assert_eq!(decode(&body(b"v1", b"Pod", &object)), None);
        assert_eq!(decode(b"{}"), None);
    }

    #[test]
    fn a_deployment_decodes_as_kubectl_create_sends_it() {
        let label = [field(1, b"app"), field(2, b"api")].concat();
        let meta = [
            field(1, b"api"),
            field(2, b""),
            int(7, 0),
            field(11, &label),
        ]
        .concat();
        let port = [
            field(1, b""),
            int(2, 0),
            vec![3 << 3, 0x90, 0x3f],
            field(4, b""),
        ]
        .concat();
        let container = [
            field(1, b"nginx"),
            field(2, b"nginx"),
            field(3, b"sleep"),
            field(3, b"1"),
            field(6, &port),
            field(8, b""),
            int(16, 0),
        ]
        .concat();
        let template = [field(1, &meta), field(2, &field(2, &container))].concat();
        let spec = [
            int(1, 2),
            field(2, &field(1, &label)),
            field(3, &template),
            field(4, &field(1, b"")),
            int(5, 0),
            int(7, 0),
        ]
        .concat();
        let status = [int(1, 0), int(2, 0)].concat();
        let object = [field(1, &meta), field(2, &spec), field(3, &status)].concat();
        assert_eq!(
            decode(&body(b"apps/v1", b"Deployment", &object)),
            Some(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "labels": {"app": "api"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"name": "api", "labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx",
                        "command": ["sleep", "1"], "ports": [{"containerPort": 8080}]}]},
                },
            }}))
        );
        // `replicas: 0` is a choice, not an unset field.
        let zero = [int(1, 0), field(3, &template)].concat();
        let object = [field(1, &meta), field(2, &zero)].concat();
        let decoded = decode(&body(b"apps/v1", b"Deployment", &object)).expect("decodes");
        assert_eq!(decoded["spec"]["replicas"], json!(0));
        // A field the schema does not read, set, refuses the body rather than losing it:
        // here a container's env (7).
        let env = [container.clone(), field(7, &field(1, b"MODE"))].concat();
        let template = [field(1, &meta), field(2, &field(2, &env))].concat();
        let object = [field(1, &meta), field(2, &field(3, &template))].concat();
        assert_eq!(decode(&body(b"apps/v1", b"Deployment", &object)), None);
    }
}
