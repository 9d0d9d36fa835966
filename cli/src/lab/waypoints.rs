//! Waypoints in the lab: what a Gateway API implementation does on a cluster for a Gateway of a
//! waypoint class. For each one the lab adds a pod `<gateway>-waypoint` (labelled with the
//! gateway's name, service account `<gateway>`, never captured: it speaks HBONE itself) running
//! `ambit-waypoint`, and a Service `<gateway>` on port 15008 selecting it, through which the
//! agents find it (`<gateway>.<ns>.svc.cluster.local`, as the controller's translation names it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Value;

use super::admin::CONTROLLER_GRPC;
use super::objects::{Key, Object, parse};
use super::render::DesiredPod;
use super::state::RunSpec;

/// Gateway classes the controller treats as waypoints.
pub const CLASSES: &[&str] = &["ambit-waypoint", "istio-waypoint"];
/// The label Gateway API implementations put on a gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// `lab.ambit.dev/app` value that runs the waypoint.
pub const APP: &str = "waypoint";

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
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {gw}, namespace: {ns}}}\n\
             spec: {{selector: {{{GATEWAY_NAME_LABEL}: {gw}}}, ports: [{{name: mesh, port: 15008, targetPort: 15008}}]}}\n"
        );
        let made = parse("waypoint", &text).expect("the lab's own YAML parses");
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
    Some(RunSpec {
        name: format!("{}-{}-waypoint", pod.namespace, pod.name),
        program: program.display().to_string(),
        args: vec![
            "--waypoint".into(),
            format!("{}/{gateway}", pod.namespace),
            "--controller-addr".into(),
            CONTROLLER_GRPC.into(),
            "--root-cert".into(),
            root.display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ],
        env,
        // The controller writes both once it runs and has seen the Gateway.
        needs: vec![root, token],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waypoint_gateway_gets_a_pod_and_a_service() {
        let gateway = parse(
            "x",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: waypoint, namespace: demo}\n\
             spec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: ingress, namespace: demo}\nspec: {gatewayClassName: nginx}\n",
        )
        .unwrap();
        let objects: BTreeMap<Key, Object> =
            gateway.into_iter().map(|o| (o.key.clone(), o)).collect();
        let added = super::objects(&objects);
        let keys: Vec<String> = added.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            ["Pod demo/waypoint-waypoint", "Service demo/waypoint"]
        );
        let pod = &added[0];
        assert_eq!(pod.labels()[GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(pod.labels()["istio.io/dataplane-mode"], "none");

        let desired = DesiredPod {
            namespace: "demo".into(),
            name: "waypoint-waypoint".into(),
            value: pod.value.clone(),
        };
        let launch = WaypointLaunch {
            program: Some("/bin/ambit-waypoint".into()),
            data: "/lab/data".into(),
        };
        let spec = run_spec(&desired, &launch, Vec::new()).unwrap();
        assert_eq!(spec.args[1], "demo/waypoint");
        assert_eq!(
            spec.args[7],
            "/lab/data/tokens/waypoint-demo.waypoint.token"
        );
        let unbuilt = WaypointLaunch {
            program: None,
            ..launch
        };
        assert!(run_spec(&desired, &unbuilt, Vec::new()).is_none());
    }
}
