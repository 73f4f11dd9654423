//! The little of Kubernetes' protobuf encoding the server reads: kubectl's typed clients
//! (`kubectl create namespace NAME`) send protobuf bodies and do not fall back to JSON. Only
//! a Namespace's metadata (name, generateName, labels, annotations) is decoded; any other
//! protobuf body is refused with 415, as a server that does not read it would.

use serde_json::{Map, Value, json};

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

/// A protobuf body as the JSON object it encodes, if it is a `v1` Namespace.
pub fn decode(body: &[u8]) -> Option<Value> {
    let unknown = fields(body.strip_prefix(MAGIC)?)?;
    let type_meta = fields(bytes_of(&unknown, 1)?)?;
    let api_version = text_of(&type_meta, 1)?;
    let kind = text_of(&type_meta, 2)?;
    if api_version != "v1" || kind != "Namespace" {
        return None;
    }
    let object = fields(bytes_of(&unknown, 2)?)?;
    let meta = fields(bytes_of(&object, 1).unwrap_or_default())?;
    let mut metadata = Map::new();
    for (number, name) in [(1, "name"), (2, "generateName")] {
        if let Some(v) = text_of(&meta, number) {
            metadata.insert(name.into(), json!(v));
        }
    }
    for (number, name) in [(11, "labels"), (12, "annotations")] {
        let mut map = Map::new();
        for (n, entry) in &meta {
            if *n != number {
                continue;
            }
            let Field::Bytes(entry) = entry else {
                return None;
            };
            let entry = fields(entry)?;
            map.insert(
                text_of(&entry, 1)?.to_owned(),
                json!(text_of(&entry, 2).unwrap_or("")),
            );
        }
        if !map.is_empty() {
            metadata.insert(name.into(), Value::Object(map));
        }
    }
    Some(json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}))
}

/// One decoded field value.
enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
}

/// The fields of a message, in order, by field number; `None` if it is malformed.
fn fields(mut buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let field = match key & 7 {
            0 => {
                varint(&mut buf)?;
                Field::Varint
            }
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

fn text_of<'a>(fields: &[(u64, Field<'a>)], number: u64) -> Option<&'a str> {
    std::str::from_utf8(bytes_of(fields, number)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, u8::try_from(bytes.len()).expect("short")];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_namespace_decodes_and_other_kinds_do_not() {
        let entry = [field(1, b"team"), field(2, b"a")].concat();
        let meta = [field(1, b"web"), field(11, &entry)].concat();
        let object = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &object)].concat();
        assert_eq!(
            decode(&body),
            Some(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "web", "labels": {"team": "a"}}}))
        );
        let pod = [field(1, b"v1"), field(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), field(1, &pod), field(2, &object)].concat();
        assert_eq!(decode(&body), None);
        assert_eq!(decode(b"{}"), None);
    }
}
