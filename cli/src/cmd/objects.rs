//! `ambit apply -f`, `ambit delete -f`, `ambit label`: change the lab's objects, then reconcile
//! the lab and wait until the data plane follows (so the next command observes the change).
//!
//! An object the controller would skip (a misspelt field, a value of the wrong type, an
//! unsupported policy) is refused before anything is stored, as a cluster's API server refuses
//! what its schemas reject: nothing changes, the lab keeps running, and the command fails
//! naming the object, the field and the reason.

use std::collections::BTreeMap;
use std::path::Path;

use ambit_controller::source::yaml;
use anyhow::{Result, bail};

use crate::lab::objects::{self, Key, Object, Store};
use crate::lab::state::LabDir;
use crate::lab::{converge, reconcile, render, view};

/// `ambit apply -f PATH`: one line per object (`created`, `configured`, `unchanged`).
pub fn apply(dir: &LabDir, path: &Path) -> Result<String> {
    let incoming = objects::read_paths(path)?;
    if incoming.is_empty() {
        bail!("{} holds no objects", path.display());
    }
    validate(&incoming)?;
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
        validate(std::slice::from_ref(&object))?;
        store.put(&object)?;
        Ok(format!("{key} labeled\n"))
    })
}

/// Fails, listing every problem, if the controller would skip any of `objects` (for a
/// Deployment: the pods its template makes).
pub(crate) fn validate(objects: &[Object]) -> Result<()> {
    let mut problems = Vec::new();
    for object in objects {
        let (what, document) = match object.key.kind.as_str() {
            "Deployment" => {
                let one = BTreeMap::from([(object.key.clone(), object.clone())]);
                match render::desired_pods(&one) {
                    Ok(pods) => match pods.into_values().next() {
                        Some(pod) => (format!("{}, its pod template", object.key), pod.value),
                        None => continue,
                    },
                    Err(reason) => {
                        problems.push(reason);
                        continue;
                    }
                }
            }
            _ => (object.key.to_string(), object.value.clone()),
        };
        let text = serde_yaml::to_string(&document)?;
        for error in yaml::parse_file(Path::new(&what), &text).errors {
            problems.push(match error.field.as_str() {
                "" => format!("{what}: {}", error.reason),
                field => format!("{what}: field {field}: {}", error.reason),
            });
        }
    }
    match problems.as_slice() {
        [] => Ok(()),
        [one] => bail!("{one}; nothing was changed"),
        many => bail!(
            "{} objects would be skipped by the controller; nothing was changed:\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    }
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

    fn objects(text: &str) -> Vec<Object> {
        objects::parse("test.yaml", text).unwrap()
    }

    #[test]
    fn objects_the_controller_reads_pass_and_other_kinds_are_kept_as_they_are() {
        let demo = objects(include_str!("../demo/manifests.yaml"));
        validate(&demo).unwrap();
        validate(&objects(include_str!("../demo/waypoint.yaml"))).unwrap();
        validate(&objects(include_str!("../demo/canary.yaml"))).unwrap();
        let config = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: demo}\n\
                      data: {anything: goes}\n";
        validate(&objects(config)).unwrap();
    }

    #[test]
    fn what_the_controller_would_skip_is_refused_naming_object_field_and_reason() {
        let typo = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                    metadata: {name: typo, namespace: demo}\nspec: {action: ALLOW, rulez: []}\n";
        let err = validate(&objects(typo)).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "AuthorizationPolicy demo/typo: field spec.rulez: unknown field `rulez`"
            ),
            "{err}"
        );
        assert!(err.ends_with("; nothing was changed"), "{err}");

        let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                      metadata: {name: ext, namespace: demo}\n\
                      spec: {action: CUSTOM, provider: {name: opa}}\n";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: demo}\n\
                   spec: {containers: notalist}\n";
        let web = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
                   spec: {replicas: 3, template: {spec: {containers: 7}}}\n";
        let many = objects(&format!("{custom}---\n{pod}---\n{web}"));
        let err = validate(&many).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 4, "{err}");
        assert_eq!(
            lines[0],
            "3 objects would be skipped by the controller; nothing was changed:"
        );
        assert!(
            lines[1].starts_with("  AuthorizationPolicy demo/ext: field spec.action: CUSTOM"),
            "{err}"
        );
        assert!(
            lines[2].starts_with("  Pod demo/p: field spec.containers: invalid type"),
            "{err}"
        );
        assert!(
            lines[3].starts_with(
                "  Deployment shop/web, its pod template: field spec.containers: invalid type"
            ),
            "{err}"
        );
    }
}
