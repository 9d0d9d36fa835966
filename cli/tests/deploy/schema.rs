//! The part of Kubernetes' CRD validation that matters for these schemas, enough to check that
//! example manifests are accepted and bad ones rejected without an API server: structural
//! schemas (types, properties, required, enums, items, additionalProperties, bounds, patterns,
//! minProperties) and strict field validation (an unknown field is an error unless the node
//! preserves unknown fields), which is what `kubectl apply` and `ambit install` ask for.

use serde_json::Value;

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";

/// Every node of a structural schema has a type, or preserves unknown fields (or is an
/// int-or-string); returns the paths of those that do not.
pub fn unstructural(schema: &Value, path: &str, out: &mut Vec<String>) {
    let preserve = schema[PRESERVE] == true || schema["x-kubernetes-int-or-string"] == true;
    if schema["type"].as_str().is_none() && !preserve {
        out.push(path.to_string());
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, child) in properties {
            unstructural(child, &format!("{path}.{name}"), out);
        }
    }
    if schema["items"].is_object() {
        unstructural(&schema["items"], &format!("{path}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        unstructural(&schema["additionalProperties"], &format!("{path}{{}}"), out);
    }
}

/// Validates a whole object against a CRD version's openAPIV3Schema; apiVersion, kind and
/// metadata are the API server's, not the schema's.
pub fn validate_object(schema: &Value, object: &Value) -> Vec<String> {
    let mut body = object.clone();
    if let Some(map) = body.as_object_mut() {
        for key in ["apiVersion", "kind", "metadata"] {
            map.remove(key);
        }
    }
    let mut errors = Vec::new();
    validate(schema, &body, "", &mut errors);
    errors
}

fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    let type_ok = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => {
            errors.push(format!("{at}: schema type {other:?} unknown"));
            return;
        }
    };
    if !type_ok {
        errors.push(format!("{at}: expected {}, got {value}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {}", schema["enum"]));
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            errors.push(format!("{at}: {n} is below {}", schema["minimum"]));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            errors.push(format!("{at}: {n} is above {}", schema["maximum"]));
        }
    }
    if let (Some(s), Some(pattern)) = (value.as_str(), schema["pattern"].as_str()) {
        let re = regex::Regex::new(pattern).expect("the schema's pattern compiles");
        if !re.is_match(s) {
            errors.push(format!("{at}: {s:?} does not match {pattern}"));
        }
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            if schema["items"].is_object() {
                validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    let Some(fields) = value.as_object() else {
        return;
    };
    if schema["minProperties"]
        .as_u64()
        .is_some_and(|min| (fields.len() as u64) < min)
    {
        errors.push(format!(
            "{at}: needs at least {} field(s)",
            schema["minProperties"]
        ));
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().unwrap_or_default();
        if !fields.contains_key(name) {
            errors.push(format!("{at}: missing required field {name}"));
        }
    }
    for (name, child) in fields {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if let Some(property) = schema["properties"].get(name) {
            validate(property, child, &child_path, errors);
        } else if schema["additionalProperties"].is_object() {
            validate(&schema["additionalProperties"], child, &child_path, errors);
        } else if schema[PRESERVE] != true {
            errors.push(format!("{child_path}: unknown field"));
        }
    }
}
