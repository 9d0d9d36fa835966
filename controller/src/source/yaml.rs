//! Parsing Kubernetes YAML: multi-document files, `List` objects, and errors that say where.
//!
//! Every problem is reported with the file, the document's index in it, the field path and the
//! reason, and only that document is skipped.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{Kind, Object, ObjectRef};
use crate::translate;

/// A document that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    pub file: PathBuf,
    /// 0-based index of the document in the file (items of a `List` count as their own).
    pub document: usize,
    /// The object, when the document got far enough to name one.
    pub object: Option<ObjectRef>,
    /// Dotted path of the offending field ("spec.rules[0].when[1].key"), or "" for the document.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file.display(), self.document)?;
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if !self.field.is_empty() {
            write!(f, " field {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What one file yielded.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    pub errors: Vec<DocumentError>,
    /// Documents of kinds the controller does not read (Deployments, ConfigMaps, ...): not errors.
    pub ignored: usize,
}

/// Parses every document of `text` (the content of `file`).
pub fn parse_file(file: &Path, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = match <Value as serde::Deserialize>::deserialize(document) {
            Ok(Value::Null) => {
                index += 1;
                continue;
            }
            Ok(v) => v,
            Err(e) => {
                parsed.errors.push(DocumentError {
                    file: file.to_path_buf(),
                    document: index,
                    object: None,
                    field: String::new(),
                    reason: format!("not valid YAML: {e}"),
                });
                // After a syntax error the YAML stream cannot be resynchronised.
                break;
            }
        };
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in items {
                parse_value(file, index, item, &mut parsed);
                index += 1;
            }
        } else {
            parse_value(file, index, value, &mut parsed);
            index += 1;
        }
    }
    parsed
}

fn parse_value(file: &Path, document: usize, value: Value, parsed: &mut Parsed) {
    let error = |object: Option<ObjectRef>, field: &str, reason: String| DocumentError {
        file: file.to_path_buf(),
        document,
        object,
        field: field.to_string(),
        reason,
    };
    let (Some(api_version), Some(kind)) = (
        value.get("apiVersion").and_then(Value::as_str),
        value.get("kind").and_then(Value::as_str),
    ) else {
        parsed.errors.push(error(
            None,
            "",
            "a Kubernetes object needs apiVersion and kind".into(),
        ));
        return;
    };
    let Some(kind) = Kind::from_type(api_version, kind) else {
        parsed.ignored += 1;
        return;
    };
    match object_from_value(kind, value) {
        Ok(object) => {
            let object = object.with_defaults();
            let key = object.object_ref();
            if key.name.is_empty() {
                parsed
                    .errors
                    .push(error(Some(key), "metadata.name", "required".into()));
                return;
            }
            // Semantic checks (unsupported policy keys, bad CIDRs, ...) reject the document here,
            // so a bad policy never replaces a good one.
            if let Err(e) = translate::validate(&object) {
                parsed.errors.push(error(Some(key), &e.field, e.reason));
                return;
            }
            parsed.objects.push(object);
        }
        Err((field, reason)) => parsed.errors.push(error(None, &field, reason)),
    }
}

/// Decodes a JSON value as `kind`, reporting the path of the first field that does not fit.
pub fn object_from_value(kind: Kind, value: Value) -> Result<Object, (String, String)> {
    fn typed<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            (field, e.into_inner().to_string())
        })
    }
    Ok(match kind {
        Kind::Namespace => Object::Namespace(Box::new(typed(value)?)),
        Kind::Node => Object::Node(Box::new(typed(value)?)),
        Kind::Pod => Object::Pod(Box::new(typed(value)?)),
        Kind::Service => Object::Service(Box::new(typed(value)?)),
        Kind::ServiceAccount => Object::ServiceAccount(typed(value)?),
        Kind::Gateway => Object::Gateway(typed(value)?),
        Kind::HttpRoute => Object::HttpRoute(typed(value)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(typed(value)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(typed(value)?),
        Kind::DestinationRule => Object::DestinationRule(typed(value)?),
        Kind::HttpFault => Object::HttpFault(typed(value)?),
    })
}
