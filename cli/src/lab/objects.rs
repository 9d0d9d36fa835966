//! The user's Kubernetes objects, as `ambit apply -f` received them: parsed only as far as the
//! lab needs (kind, namespace, name, a few fields), otherwise kept as written, so every kind the
//! controller understands (policies, gateways, routes) passes through untouched.
//!
//! The store is a directory with one YAML file per object, named `<kind>_<namespace>_<name>.yaml`
//! (`_` appears in no Kubernetes name, so the name maps back to the key).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::state::{StateError, write_atomically};

/// Kinds without a namespace.
const CLUSTER_SCOPED: &[&str] = &["Namespace", "Node"];

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{file}, document {document}: not YAML: {reason}")]
    Yaml {
        file: String,
        document: usize,
        reason: String,
    },
    #[error("{file}, document {document}: {reason}")]
    Invalid {
        file: String,
        document: usize,
        reason: String,
    },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] StateError),
}

/// Identifies an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    fn file_name(&self) -> String {
        format!(
            "{}_{}_{}.yaml",
            self.kind.to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object: its key and its whole document.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: Key,
    pub value: Value,
}

impl Object {
    pub fn labels(&self) -> BTreeMap<String, String> {
        string_map(self.value.get("metadata").and_then(|m| m.get("labels")))
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        string_map(
            self.value
                .get("metadata")
                .and_then(|m| m.get("annotations")),
        )
    }

    /// Replaces `metadata.labels`.
    pub fn set_labels(&mut self, labels: &BTreeMap<String, String>) {
        let metadata = mapping_at(&mut self.value, "metadata");
        let map: Mapping = labels
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect();
        metadata.insert("labels".into(), Value::Mapping(map));
    }

    /// `spec`, or null.
    pub fn spec(&self) -> &Value {
        self.value.get("spec").unwrap_or(&Value::Null)
    }
}

/// The mapping at `key` in `value` (a mapping), created if missing or not a mapping.
pub fn mapping_at<'a>(value: &'a mut Value, key: &str) -> &'a mut Mapping {
    if !value.is_mapping() {
        *value = Value::Mapping(Mapping::new());
    }
    let map = value.as_mapping_mut().expect("made a mapping");
    let entry = map
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("made a mapping")
}

/// A YAML map of strings; values that are not strings (numbers, booleans) are printed.
pub fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Mapping(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
        .collect()
}

/// A scalar as a string.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses every document of `text` (empty documents and `List`s are handled as kubectl does).
/// `file` names the source in errors. Objects without a namespace get `default`.
pub fn parse(file: &str, text: &str) -> Result<Vec<Object>, ObjectError> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let value = Value::deserialize(document).map_err(|e| ObjectError::Yaml {
            file: file.to_owned(),
            document: document_number,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let invalid = |reason: String| ObjectError::Invalid {
            file: file.to_owned(),
            document: document_number,
            reason,
        };
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            let items = value.get("items").and_then(Value::as_sequence);
            for item in items.into_iter().flatten() {
                objects.push(object(item.clone()).map_err(invalid)?);
            }
            continue;
        }
        objects.push(object(value).map_err(invalid)?);
    }
    Ok(objects)
}

fn object(mut value: Value) -> Result<Object, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("no `kind`")?
        .to_owned();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{kind} without `metadata.name`"))?
        .to_owned();
    if name.is_empty() || name.contains(['_', '/']) {
        return Err(format!("{kind} {name:?}: not a Kubernetes name"));
    }
    let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
        String::new()
    } else {
        let metadata = mapping_at(&mut value, "metadata");
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() => ns.to_owned(),
            _ => {
                // Written down, so the controller reads the same namespace the lab assumed.
                metadata.insert("namespace".into(), "default".into());
                "default".to_owned()
            }
        }
    };
    if namespace.contains(['_', '/']) {
        return Err(format!("namespace {namespace:?}: not a Kubernetes name"));
    }
    Ok(Object {
        key: Key {
            kind,
            namespace,
            name,
        },
        value,
    })
}

/// Reads `-f` arguments: a file, or every `*.yaml`/`*.yml`/`*.json` of a directory (sorted).
pub fn read_paths(path: &Path) -> Result<Vec<Object>, ObjectError> {
    let read_err = |path: &Path, source| ObjectError::Read {
        path: path.to_owned(),
        source,
    };
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| read_err(path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| read_err(path, e))?;
            let p = entry.path();
            let manifest = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_owned());
    }
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| read_err(&file, e))?;
        objects.extend(parse(&file.display().to_string(), &text)?);
    }
    Ok(objects)
}

/// The object store (see the module docs).
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// Every stored object, by key.
    pub fn load(&self) -> Result<BTreeMap<Key, Object>, ObjectError> {
        let mut all = BTreeMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(source) => {
                return Err(ObjectError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| ObjectError::Read {
                path: path.clone(),
                source,
            })?;
            for object in parse(&path.display().to_string(), &text)? {
                all.insert(object.key.clone(), object);
            }
        }
        Ok(all)
    }

    pub fn put(&self, object: &Object) -> Result<(), ObjectError> {
        let text = serde_yaml::to_string(&object.value).expect("a YAML value serialises");
        write_atomically(&self.dir.join(object.key.file_name()), text.as_bytes())?;
        Ok(())
    }

    /// Removes the object; returns whether it existed.
    pub fn remove(&self, key: &Key) -> Result<bool, ObjectError> {
        let path = self.dir.join(key.file_name());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ObjectError::Read { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_get_keys_and_default_namespaces() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n\
                    ---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\n";
        let objects = parse("x.yaml", text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].key.to_string(), "Namespace demo");
        assert_eq!(objects[1].key.to_string(), "Pod default/web");
        assert_eq!(
            objects[1].value["metadata"]["namespace"].as_str(),
            Some("default")
        );
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let err = parse("x.yaml", "kind: Pod\nmetadata: {name: a}\n---\nkind: Pod\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml, document 2: Pod without `metadata.name`"
        );
        let err = parse("y.yaml", "kind: [\n").unwrap_err();
        assert!(err.to_string().starts_with("y.yaml, document 1: not YAML"));
    }

    #[test]
    fn labels_round_trip() {
        let mut objects = parse("x", "kind: Namespace\nmetadata: {name: demo}\n").unwrap();
        let ns = &mut objects[0];
        assert!(ns.labels().is_empty());
        let labels = BTreeMap::from([("a".to_string(), "b".to_string())]);
        ns.set_labels(&labels);
        assert_eq!(ns.labels(), labels);
    }
}
