//! Waypoints in the lab: what a Gateway API implementation does on a cluster for a Gateway of a
//! waypoint class. For each one the lab adds a pod `<gateway>-waypoint` (labelled with the
//! gateway's name, service account `<gateway>`, never captured: it speaks HBONE itself) running
//! `ambit-waypoint`, and a Service `<gateway>` on port 15008 selecting it, through which the
//! agents find it (`<gateway>.<ns>.svc.cluster.local`, as the controller's translation names it).
//! The Service carries the gateway-name label too, as Istio's does: the controller reads it to
//! never send the waypoint's own traffic through a waypoint (itself, in a namespace using it).
//!
//! Tracing is off unless the Gateway asks: the annotation [`OTLP_ANNOTATION`] (an OTLP/HTTP
//! endpoint, `http://host:port`, e.g. a pod running `ambit/otlp-collector`) is handed to the
//! waypoint as `--otlp-endpoint`, with spans sent every second so they show while one watches.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Value;

use super::admin::CONTROLLER_GRPC;
use super::objects::{Key, Object, mapping_at, parse, string_map};
use super::render::DesiredPod;
use super::state::RunSpec;

/// Gateway classes the controller treats as waypoints.
pub const CLASSES: &[&str] = &["ambit-waypoint", "istio-waypoint"];
/// The label Gateway API implementations put on a gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// `lab.ambit.dev/app` value that runs the waypoint.
pub const APP: &str = "waypoint";
/// On a waypoint Gateway (and copied to its pod): where its waypoint sends traces.
pub const OTLP_ANNOTATION: &str = "lab.ambit.dev/otlp-endpoint";
/// How often a traced lab waypoint sends its spans (the waypoint's own default is 5 s).
const OTLP_FLUSH_INTERVAL: &str = "1s";

/// What the lab needs to start a waypoint.
#[derive(Debug, Clone)]
pub struct WaypointLaunch {
    /// `ambit-waypoint`, when built.
    pub program: Option<PathBuf>,
    /// The controller's data directory (CA root, tokens).
    pub data: PathBuf,
}

/// The objects the lab adds for the waypoint Gateways among `objects` (a Service the user wrote
/// under the gateway's name is kept as written).
pub fn objects(objects: &BTreeMap<Key, Object>) -> Vec<Object> {
    let mut added = Vec::new();
    for (key, gateway) in objects.iter().filter(|(k, _)| k.kind == "Gateway") {
        let class = gateway
            .spec()
            .get("gatewayClassName")
            .and_then(Value::as_str);
        if !class.is_some_and(|c| CLASSES.contains(&c)) {
            continue;
        }
        let (ns, gw) = (&key.namespace, &key.name);
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {gw}-waypoint\n  namespace: {ns}\n  \
             labels: {{{GATEWAY_NAME_LABEL}: {gw}, istio.io/dataplane-mode: none}}\n  \
             annotations: {{lab.ambit.dev/app: {APP}}}\n\
             spec: {{serviceAccountName: {gw}, containers: [{{name: waypoint, image: ambit/waypoint}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {gw}, namespace: {ns}, \
             labels: {{{GATEWAY_NAME_LABEL}: {gw}}}}}\n\
             spec: {{selector: {{{GATEWAY_NAME_LABEL}: {gw}}}, ports: [{{name: mesh, port: 15008, targetPort: 15008}}]}}\n"
        );
        let mut made = parse("waypoint", &text).expect("the lab's own YAML parses");
        if let Some(endpoint) = gateway.annotations().get(OTLP_ANNOTATION) {
            let metadata = made[0].value.get_mut("metadata").expect("written above");
            let annotations = mapping_at(metadata, "annotations");
            annotations.insert(OTLP_ANNOTATION.into(), endpoint.as_str().into());
        }
        added.extend(made.into_iter().filter(|o| !objects.contains_key(&o.key)));
    }
    added
}

/// The waypoint process of a pod the lab made for a Gateway; `None` without the binary.
pub fn run_spec(
    pod: &DesiredPod,
    launch: &WaypointLaunch,
    env: Vec<(String, String)>,
) -> Option<RunSpec> {
    let program = launch.program.as_ref()?;
    let labels = pod.value.get("metadata")?.get("labels")?;
    let gateway = labels.get(GATEWAY_NAME_LABEL)?.as_str()?;
    let token = launch
        .data
        .join("tokens")
        .join(format!("waypoint-{}.{gateway}.token", pod.namespace));
    let root = launch.data.join("ca/root-cert.pem");
    let mut args = vec![
        "--waypoint".into(),
        format!("{}/{gateway}", pod.namespace),
        "--controller-addr".into(),
        CONTROLLER_GRPC.into(),
        "--root-cert".into(),
        root.display().to_string(),
        "--token-file".into(),
        token.display().to_string(),
    ];
    let annotations = string_map(pod.value.get("metadata")?.get("annotations"));
    if let Some(endpoint) = annotations.get(OTLP_ANNOTATION) {
        args.extend([
            "--otlp-endpoint".into(),
            endpoint.clone(),
            "--otlp-flush-interval".into(),
            OTLP_FLUSH_INTERVAL.into(),
        ]);
    }
    Some(RunSpec {
        name: format!("{}-{}-waypoint", pod.namespace, pod.name),
        program: program.display().to_string(),
        args,
        env,
        // The controller writes both once it runs and has seen the Gateway.
        needs: vec![root, token],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::view::gateway_name;

    /// What the lab adds for the Gateways in `yaml`.
    fn added_for(yaml: &str) -> Vec<Object> {
        let objects: BTreeMap<Key, Object> = parse("x", yaml)
            .unwrap()
            .into_iter()
            .map(|o| (o.key.clone(), o))
            .collect();
        super::objects(&objects)
    }

    /// The waypoint process of the pod the lab made, `ambit-waypoint` built in /bin.
    fn launched(pod: &Object) -> Option<RunSpec> {
        let desired = DesiredPod {
            namespace: pod.key.namespace.clone(),
            name: pod.key.name.clone(),
            value: pod.value.clone(),
        };
        let launch = WaypointLaunch {
            program: Some("/bin/ambit-waypoint".into()),
            data: "/lab/data".into(),
        };
        run_spec(&desired, &launch, Vec::new())
    }

    #[test]
    fn a_waypoint_gateway_gets_a_pod_and_a_service() {
        let added = added_for(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: waypoint, namespace: demo}\n\
             spec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: ingress, namespace: demo}\nspec: {gatewayClassName: nginx}\n",
        );
        let keys: Vec<String> = added.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            ["Pod demo/waypoint-waypoint", "Service demo/waypoint"]
        );
        let pod = &added[0];
        assert_eq!(pod.labels()[GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(pod.labels()["istio.io/dataplane-mode"], "none");

        let spec = launched(pod).unwrap();
        assert_eq!(spec.args[1], "demo/waypoint");
        assert_eq!(
            spec.args[7],
            "/lab/data/tokens/waypoint-demo.waypoint.token"
        );
        assert_eq!(
            spec.args.len(),
            8,
            "no tracing unless asked: {:?}",
            spec.args
        );
        let desired = DesiredPod {
            namespace: "demo".into(),
            name: "waypoint-waypoint".into(),
            value: pod.value.clone(),
        };
        let unbuilt = WaypointLaunch {
            program: None,
            data: "/lab/data".into(),
        };
        assert!(run_spec(&desired, &unbuilt, Vec::new()).is_none());

        // The Service carries the label Istio puts on a waypoint's Service: the controller
        // reads it to keep the waypoint's own traffic out of waypoints.
        let service = &added[1];
        assert_eq!(service.labels()[GATEWAY_NAME_LABEL], "waypoint");
    }

    #[test]
    fn a_waypoint_never_goes_through_a_waypoint() {
        // `demo` uses waypoint `demo/waypoint`: everything in it goes through the waypoint
        // but the waypoint itself, whose Service and pod the lab made.
        let dir = tempfile::tempdir().unwrap();
        let (_, mesh) = crate::cmd::testing::waypoint_fixture(dir.path());
        let waypoint_of = |key: &str| {
            let service = mesh
                .state
                .services
                .values()
                .find(|s| format!("{}/{}", s.spec.namespace, s.spec.name) == key);
            let service = service.unwrap_or_else(|| panic!("no service {key}"));
            gateway_name(service.spec.waypoint.as_ref())
        };
        let waypoint = Some("demo/waypoint.demo.svc.cluster.local");
        assert_eq!(waypoint_of("demo/echo").as_deref(), waypoint);
        assert_eq!(waypoint_of("demo/waypoint"), None);
        let pod = mesh
            .state
            .workload_by_ip("10.244.2.3".parse().unwrap())
            .expect("the waypoint's pod");
        assert_eq!(gateway_name(pod.spec.waypoint.as_ref()), None);
        assert!(!pod.spec.node_captured, "a waypoint speaks HBONE itself");
    }

    #[test]
    fn a_gateways_otlp_annotation_turns_its_waypoints_tracing_on() {
        let added = added_for(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: traced, namespace: demo, annotations: \
             {lab.ambit.dev/otlp-endpoint: \"http://collector.observability:4318\"}}\n\
             spec: {gatewayClassName: istio-waypoint}\n",
        );
        let spec = launched(&added[0]).unwrap();
        assert_eq!(
            spec.args[8..],
            [
                "--otlp-endpoint",
                "http://collector.observability:4318",
                "--otlp-flush-interval",
                "1s"
            ]
        );
    }
}
