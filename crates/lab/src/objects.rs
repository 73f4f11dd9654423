//! Objects as the lab stores them: JSON with `apiVersion` and `kind`, as the API serves them.

use netd_model::Object;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::LabError;

/// Encodes an object as JSON with its `apiVersion` and `kind`.
pub fn encode(object: &Object) -> Result<Value, LabError> {
    let mut value =
        serde_json::to_value(object).map_err(|source| LabError::ObjectEncode { source })?;
    if let Some(map) = value.as_object_mut() {
        let kind = object.kind();
        map.insert("apiVersion".into(), Value::from(kind.api_version()));
        map.insert("kind".into(), Value::from(kind.as_str()));
    }
    Ok(value)
}

/// Decodes one object from JSON with a `kind` the model knows. Returns `Ok(None)` for other
/// kinds (the caller decides whether to warn).
pub fn decode(index: usize, value: Value) -> Result<Option<Object>, LabError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let object = match kind.as_str() {
        "Namespace" => Object::Namespace(parse(index, &kind, value)?),
        "Node" => Object::Node(Box::new(parse(index, &kind, value)?)),
        "Deployment" => Object::Deployment(Box::new(parse(index, &kind, value)?)),
        "Pod" => Object::Pod(Box::new(parse(index, &kind, value)?)),
        "Service" => Object::Service(Box::new(parse(index, &kind, value)?)),
        "EndpointSlice" => Object::EndpointSlice(parse(index, &kind, value)?),
        "NetworkPolicy" => Object::NetworkPolicy(Box::new(parse(index, &kind, value)?)),
        _ => return Ok(None),
    };
    Ok(Some(object))
}

/// Encodes a list of objects.
pub fn encode_all(objects: &[Object]) -> Result<Vec<Value>, LabError> {
    objects.iter().map(encode).collect()
}

/// Decodes a stored list; every entry must be of a known kind.
pub fn decode_all(values: Vec<Value>) -> Result<Vec<Object>, LabError> {
    let mut out = Vec::with_capacity(values.len());
    for (index, value) in values.into_iter().enumerate() {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match decode(index, value)? {
            Some(object) => out.push(object),
            None => {
                return Err(LabError::ObjectDecode {
                    index,
                    kind,
                    source: serde::de::Error::custom("unknown kind"),
                });
            }
        }
    }
    Ok(out)
}

fn parse<T: DeserializeOwned>(index: usize, kind: &str, mut value: Value) -> Result<T, LabError> {
    // The k8s-openapi structs' serde form has no apiVersion/kind fields.
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    serde_json::from_value(value).map_err(|source| LabError::ObjectDecode {
        index,
        kind: kind.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_through_storage() {
        let objects = netd_testkit::objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n",
        );
        let stored = encode_all(&objects).expect("encode");
        assert_eq!(stored[0]["kind"], "Pod");
        assert_eq!(decode_all(stored).expect("decode"), objects);
        let unknown = serde_json::json!({"kind": "ConfigMap"});
        assert!(decode(0, unknown.clone()).expect("no error").is_none());
        assert!(decode_all(vec![unknown]).is_err());
    }
}
