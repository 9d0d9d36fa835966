//! `ambit apply -f`, `ambit delete -f`, `ambit label`: change the lab's objects, then reconcile
//! the lab and wait until the data plane follows (so the next command observes the change).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use crate::lab::objects::{self, Key, Object, Store};
use crate::lab::state::LabDir;
use crate::lab::{converge, reconcile, view};

/// `ambit apply -f PATH`: one line per object (`created`, `configured`, `unchanged`).
pub fn apply(dir: &LabDir, path: &Path) -> Result<String> {
    let incoming = objects::read_paths(path)?;
    if incoming.is_empty() {
        bail!("{} holds no objects", path.display());
    }
    change(dir, |store, current| {
        let mut out = String::new();
        for object in &incoming {
            let verb = match current.get(&object.key) {
                None => "created",
                Some(old) if old.value == object.value => "unchanged",
                Some(_) => "configured",
            };
            store.put(object)?;
            out += &format!("{} {verb}\n", object.key);
        }
        Ok(out)
    })
}

/// `ambit delete -f PATH`.
pub fn delete(dir: &LabDir, path: &Path) -> Result<String> {
    let incoming = objects::read_paths(path)?;
    change(dir, |store, _| {
        let mut out = String::new();
        for object in &incoming {
            let verb = if store.remove(&object.key)? {
                "deleted"
            } else {
                "not found"
            };
            out += &format!("{} {verb}\n", object.key);
        }
        Ok(out)
    })
}

/// `ambit label <kind> <name> k=v k2-` (`namespace`, `pod` or `service`; `ns/name` for the
/// namespaced kinds, else the `default` namespace).
pub fn label(dir: &LabDir, kind: &str, name: &str, changes: &[String]) -> Result<String> {
    let kind = match kind {
        "namespace" | "namespaces" | "ns" => "Namespace",
        "pod" | "pods" | "po" => "Pod",
        "service" | "services" | "svc" => "Service",
        other => bail!("cannot label {other:?}: use namespace, pod or service"),
    };
    let (namespace, name) = match (kind, name.split_once('/')) {
        ("Namespace", _) => (String::new(), name.to_owned()),
        (_, Some((ns, n))) => (ns.to_owned(), n.to_owned()),
        (_, None) => ("default".to_owned(), name.to_owned()),
    };
    let edits = parse_label_changes(changes)?;
    let key = Key {
        kind: kind.to_owned(),
        namespace,
        name,
    };
    change(dir, |store, current| {
        let mut object = match current.get(&key) {
            Some(object) => object.clone(),
            // Namespaces exist implicitly once something uses them (the lab renders them).
            None if kind == "Namespace" && current.keys().any(|k| k.namespace == key.name) => {
                implicit_namespace(&key.name)
            }
            None => bail!("{key} not found (`ambit get pods` lists what the lab has)"),
        };
        let mut labels = object.labels();
        for (k, v) in &edits {
            match v {
                Some(v) => labels.insert(k.clone(), v.clone()),
                None => labels.remove(k),
            };
        }
        object.set_labels(&labels);
        store.put(&object)?;
        Ok(format!("{key} labeled\n"))
    })
}

fn implicit_namespace(name: &str) -> Object {
    let text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n");
    objects::parse("namespace", &text)
        .expect("valid YAML")
        .remove(0)
}

/// `k=v` sets, `k-` removes.
fn parse_label_changes(changes: &[String]) -> Result<Vec<(String, Option<String>)>> {
    if changes.is_empty() {
        bail!("give at least one label: key=value, or key- to remove it");
    }
    changes
        .iter()
        .map(|c| match c.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), Some(v.to_owned()))),
            None if c.len() > 1 && c.ends_with('-') => Ok((c[..c.len() - 1].to_owned(), None)),
            _ => bail!("{c:?} is not key=value or key-"),
        })
        .collect()
}

/// Runs `edit` on the object store under the lab's lock, then reconciles and waits for the
/// mesh to follow.
fn change(
    dir: &LabDir,
    edit: impl FnOnce(&Store, &BTreeMap<Key, Object>) -> Result<String>,
) -> Result<String> {
    let _lock = dir.lock()?;
    let mut state = dir.load()?;
    let store = Store::new(dir.objects());
    let current = store.load()?;
    let mut out = edit(&store, &current)?;
    let changes = reconcile::settle(dir, &mut state, &crate::lab::launch(dir)?)?;
    for rejected in &changes.rejected {
        out += &format!("warning: the controller skips {rejected}\n");
    }
    let mesh = view::load(&dir.manifests())?;
    converge::wait(&state, &mesh.state)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_set_and_remove() {
        let parsed = parse_label_changes(&["a=b".into(), "c-".into(), "d=".into()]).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("a".into(), Some("b".into())),
                ("c".into(), None),
                ("d".into(), Some(String::new())),
            ]
        );
        assert!(parse_label_changes(&["-".into()]).is_err());
        assert!(parse_label_changes(&[]).is_err());
    }
}
