//! deploy/: every manifest is what Kubernetes would accept. Typed objects round-trip through
//! k8s-openapi unchanged (so no field is misspelt or misplaced), CRD schemas are structural, the
//! examples validate against the CRDs and the bad examples do not, and the renderer `ambit
//! install` uses agrees with the kustomize base. Offline: no API server, no kubectl.

#[path = "deploy/schema.rs"]
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ambit_cli::cluster::render::{self, Values};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    render::parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Where `read` differs from `written`: nulls are absent, and numbers compare by value (the
/// schema's `maximum: 599` reads back as 599.0).
fn differences(written: &Value, read: &Value, path: &str, out: &mut Vec<String>) {
    match (written, read) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a
                .iter()
                .chain(b.iter())
                .filter(|(_, v)| !v.is_null())
                .map(|(k, _)| k)
                .collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                differences(x, y, &format!("{path}.{key}"), out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: written {a}, read back {b}")),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).unwrap();
    let mut diff = Vec::new();
    differences(object, &back, "", &mut diff);
    if !diff.is_empty() {
        return Err(format!(
            "changed in a round trip through k8s-openapi (a misspelt or misplaced field?): {diff:#?}"
        ));
    }
    Ok(())
}

/// A GatewayClass by Gateway API v1.2's schema (its CRD is upstream's, not in deploy/): only
/// its fields, a controllerName of the form `domain/path`, a description of at most 64 characters.
fn gateway_class(object: &Value) -> Result<(), String> {
    let mut errors = Vec::new();
    if object["apiVersion"] != "gateway.networking.k8s.io/v1" {
        errors.push(format!("apiVersion {}", object["apiVersion"]));
    }
    let spec = object["spec"].as_object().cloned().unwrap_or_default();
    for key in spec.keys() {
        if !["controllerName", "description", "parametersRef"].contains(&key.as_str()) {
            errors.push(format!("unknown field spec.{key}"));
        }
    }
    let controller = object["spec"]["controllerName"]
        .as_str()
        .unwrap_or_default();
    let domain_ok = |d: &str| {
        !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    };
    match controller.split_once('/') {
        Some((domain, path)) if domain_ok(domain) && !path.is_empty() => {}
        _ => errors.push(format!(
            "spec.controllerName {controller:?} is not domain/path"
        )),
    }
    if object["spec"]["description"]
        .as_str()
        .is_some_and(|d| d.len() > 64)
    {
        errors.push("spec.description is longer than 64 characters".into());
    }
    let meta = object["metadata"].as_object().cloned().unwrap_or_default();
    if meta.contains_key("namespace") {
        errors.push("a GatewayClass is cluster-scoped: no metadata.namespace".into());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Parses an object into its k8s-openapi type; every kind deploy/ ships must be listed here.
fn check_typed(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => round_trip::<Namespace>(object),
        "ConfigMap" => round_trip::<ConfigMap>(object),
        "GatewayClass" => gateway_class(object),
        "ServiceAccount" => round_trip::<ServiceAccount>(object),
        "Service" => round_trip::<Service>(object),
        "ClusterRole" => round_trip::<ClusterRole>(object),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(object),
        "Role" => round_trip::<Role>(object),
        "RoleBinding" => round_trip::<RoleBinding>(object),
        "Deployment" => round_trip::<Deployment>(object),
        "DaemonSet" => round_trip::<DaemonSet>(object),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(object),
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
        other => Err(format!("kind {other:?} has no typed check")),
    }
}

#[test]
fn the_base_and_the_rendered_install_are_typed_kubernetes_objects() {
    let mut failures = Vec::new();
    for file in yaml_files(&deploy().join("base"))
        .into_iter()
        .chain(yaml_files(&deploy().join("base/crds")))
    {
        if file.ends_with("kustomization.yaml") {
            continue;
        }
        for object in read_documents(&file) {
            if let Err(e) = check_typed(&object) {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    let sets = [
        "trustDomain=mesh.example.com",
        "hub=registry.example.com/ambit",
        "tag=v9",
        "caSecret=cacerts",
        "logLevel=debug",
        "controller.replicas=3",
        "ztunnel.resources.limits.memory=1Gi",
    ]
    .map(String::from);
    for values in [Values::default(), Values::from_sets(&sets).unwrap()] {
        for object in render::render(&values).unwrap() {
            if let Err(e) = check_typed(&object) {
                failures.push(format!("rendered {}: {e}", object["metadata"]["name"]));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_renderer_embeds_exactly_the_kustomize_base() {
    let kustomization = &read_documents(&deploy().join("base/kustomization.yaml"))[0];
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let embedded: Vec<&str> = render::FILES.iter().map(|(name, _)| *name).collect();
    assert_eq!(listed, embedded);
    for (name, text) in render::FILES {
        let on_disk = std::fs::read_to_string(deploy().join("base").join(name)).unwrap();
        assert_eq!(&on_disk, text, "{name}");
    }
    // The overlay's patches name objects the base has.
    let overlay = deploy().join("overlays/example");
    let base = render::base().unwrap();
    for patch in yaml_files(&overlay) {
        if patch.ends_with("kustomization.yaml") {
            continue;
        }
        let patch = &read_documents(&patch)[0];
        assert!(
            base.iter().any(|o| o["kind"] == patch["kind"]
                && o["metadata"]["name"] == patch["metadata"]["name"]),
            "{patch}"
        );
    }
}

#[test]
fn values_reach_the_objects_they_name() {
    let sets = ["trustDomain=mesh.example.com", "tag=v9", "caSecret=cacerts"].map(String::from);
    let objects = render::render(&Values::from_sets(&sets).unwrap()).unwrap();
    let find = |kind: &str| objects.iter().find(|o| o["kind"] == kind).unwrap();
    let env = |workload: &Value, name: &str| {
        workload["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    let (controller, agents) = (find("Deployment"), find("DaemonSet"));
    let containers = |w: &Value| w["spec"]["template"]["spec"]["containers"][0].clone();
    assert_eq!(
        containers(controller)["image"],
        "ghcr.io/ambit-mesh/ambit-controller:v9"
    );
    assert_eq!(
        containers(agents)["image"],
        "ghcr.io/ambit-mesh/ambit-ztunnel:v9"
    );
    assert_eq!(
        env(controller, "AMBIT_WAYPOINT_IMAGE").unwrap(),
        "ghcr.io/ambit-mesh/ambit-waypoint:v9"
    );
    for workload in [controller, agents] {
        assert_eq!(
            env(workload, "AMBIT_TRUST_DOMAIN").unwrap(),
            "mesh.example.com"
        );
    }
    assert_eq!(env(controller, "AMBIT_CA_DIR").unwrap(), "/etc/ambit/ca");
    let volumes = |w: &Value| w["spec"]["template"]["spec"]["volumes"].clone();
    assert!(
        volumes(controller)
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "cacerts")
    );
    let root = volumes(agents)
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "root")
        .cloned();
    assert_eq!(root.unwrap()["secret"]["secretName"], "cacerts");
    // Defaults: the generated root's Secret, and the tag of this build.
    let objects = render::render(&Values::default()).unwrap();
    let agents = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    assert!(
        agents["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with(concat!(":", env!("CARGO_PKG_VERSION")))
    );
    assert!(render::to_yaml(&objects).matches("\n---\n").count() >= objects.len() - 1);
}

/// CRD name -> its versions' schemas.
fn crd_schemas() -> BTreeMap<(String, String), (Value, bool)> {
    let mut schemas = BTreeMap::new();
    for object in render::base().unwrap() {
        if object["kind"] != "CustomResourceDefinition" {
            continue;
        }
        let group = object["spec"]["group"].as_str().unwrap().to_string();
        let kind = object["spec"]["names"]["kind"].as_str().unwrap();
        for version in object["spec"]["versions"].as_array().unwrap() {
            let api_version = format!("{group}/{}", version["name"].as_str().unwrap());
            schemas.insert(
                (api_version, kind.to_string()),
                (
                    version["schema"]["openAPIV3Schema"].clone(),
                    version["served"] == true,
                ),
            );
        }
    }
    schemas
}

#[test]
fn crd_schemas_are_structural_with_one_stored_version() {
    for crd in render::base().unwrap() {
        if crd["kind"] != "CustomResourceDefinition" {
            continue;
        }
        let name = crd["metadata"]["name"].as_str().unwrap();
        let spec = &crd["spec"];
        assert_eq!(
            name,
            format!(
                "{}.{}",
                spec["names"]["plural"].as_str().unwrap(),
                spec["group"].as_str().unwrap()
            )
        );
        let versions = spec["versions"].as_array().unwrap();
        let stored = versions.iter().filter(|v| v["storage"] == true).count();
        assert_eq!(stored, 1, "{name}: one storage version");
        for version in versions {
            let mut bad = Vec::new();
            schema::unstructural(&version["schema"]["openAPIV3Schema"], "", &mut bad);
            assert!(
                bad.is_empty(),
                "{name} {}: untyped nodes {bad:?}",
                version["name"]
            );
        }
    }
    // Istio's versions, served as Istio serves them.
    let schemas = crd_schemas();
    for (api_version, kind) in [
        ("security.istio.io/v1", "AuthorizationPolicy"),
        ("security.istio.io/v1beta1", "AuthorizationPolicy"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1beta1", "PeerAuthentication"),
        ("networking.istio.io/v1", "DestinationRule"),
        ("networking.istio.io/v1beta1", "DestinationRule"),
        ("networking.istio.io/v1alpha3", "DestinationRule"),
        ("ambit.dev/v1alpha1", "HTTPFault"),
    ] {
        let (_, served) = &schemas[&(api_version.to_string(), kind.to_string())];
        assert!(served, "{api_version} {kind}");
    }
}

#[test]
fn examples_validate_against_the_crds() {
    let schemas = crd_schemas();
    let mut checked = 0;
    for file in yaml_files(&deploy().join("examples")) {
        for object in read_documents(&file) {
            let key = (
                object["apiVersion"].as_str().unwrap().to_string(),
                object["kind"].as_str().unwrap().to_string(),
            );
            // Gateway API kinds: upstream CRDs, not ours to check.
            let Some((schema, served)) = schemas.get(&key) else {
                continue;
            };
            assert!(served, "{}: {key:?} is not served", file.display());
            let errors = schema::validate_object(schema, &object);
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} examples checked");
}

#[test]
fn bad_examples_are_rejected_where_they_are_wrong() {
    let schemas = crd_schemas();
    let files = yaml_files(&deploy().join("examples/invalid"));
    assert!(files.len() >= 8);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        let object = &read_documents(&file)[0];
        let key = (
            object["apiVersion"].as_str().unwrap().to_string(),
            object["kind"].as_str().unwrap().to_string(),
        );
        let errors = schema::validate_object(&schemas[&key].0, object);
        assert!(
            errors.iter().any(|e| e.starts_with(expect)),
            "{}: expected an error at {expect}, got {errors:?}",
            file.display()
        );
    }
}

#[test]
fn every_image_target_builds_a_binary_of_the_workspace() {
    let root = deploy().join("..");
    let mut binaries = Vec::new();
    for member in ["controller", "ztunnel", "waypoint", "cli"] {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
        let mut lines = manifest.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "[[bin]]" {
                let name = lines.next().unwrap();
                binaries.push(name.split('"').nth(1).unwrap().to_string());
            }
        }
    }
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    for target in ["controller", "ztunnel", "waypoint", "cli"] {
        let stage = dockerfile
            .split("\nFROM ")
            .find(|s| s.starts_with(&format!("debian:bookworm-slim AS {target}\n")))
            .unwrap_or_else(|| panic!("no runtime stage {target}"));
        let entrypoint = stage
            .lines()
            .find_map(|l| l.strip_prefix("ENTRYPOINT [\"/usr/local/bin/"))
            .unwrap_or_else(|| panic!("{target}: no ENTRYPOINT"));
        let binary = entrypoint.trim_end_matches("\"]");
        assert!(
            binaries.contains(&binary.to_string()),
            "{target}: {binary} not in {binaries:?}"
        );
        assert!(
            dockerfile.contains(&format!("--bin {binary}")),
            "{binary} is not built"
        );
    }
    // The images the manifests name are the ones built.
    for object in render::base().unwrap() {
        let spec = &object["spec"]["template"]["spec"];
        for container in spec["containers"].as_array().into_iter().flatten() {
            let image = container["image"].as_str().unwrap();
            let name = image.rsplit('/').next().unwrap().split(':').next().unwrap();
            assert!(binaries.contains(&name.to_string()), "{image}");
        }
    }
}

/// The CRDs and the controller agree: what the schemas accept in the examples, the controller
/// reads without error, and the policies the schemas reject, it rejects too.
#[test]
fn the_controller_reads_the_examples_as_the_crds_do() {
    use ambit_controller::source::yaml::parse_file;
    for file in yaml_files(&deploy().join("examples")) {
        let parsed = parse_file(&file, &std::fs::read_to_string(&file).unwrap());
        // (Kinds this controller build does not read yet are skipped by it, not errors.)
        assert!(parsed.errors.is_empty(), "{:#?}", parsed.errors);
    }
    for file in yaml_files(&deploy().join("examples/invalid")) {
        let name = file.file_name().unwrap().to_string_lossy();
        if !(name.starts_with("authorization-policy") || name.starts_with("peer-authentication")) {
            continue;
        }
        let parsed = parse_file(&file, &std::fs::read_to_string(&file).unwrap());
        assert_eq!(parsed.errors.len(), 1, "{name}: {parsed:?}");
    }
}
