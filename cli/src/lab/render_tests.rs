use std::collections::BTreeMap;

use super::*;
use crate::lab::netns::PodInfo;
use crate::lab::objects::parse;
use crate::lab::state::PodRecord;

fn objects(text: &str) -> BTreeMap<Key, Object> {
    parse("test.yaml", text)
        .unwrap()
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect()
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: ambit/echo, ports: [{containerPort: 9090}]}]
";

#[test]
fn deployments_become_numbered_pods_with_the_template() {
    let pods = desired_pods(&objects(DEPLOYMENT)).unwrap();
    let names: Vec<&String> = pods.keys().collect();
    assert_eq!(names, ["shop/web-0", "shop/web-1"]);
    let pod = &pods["shop/web-1"];
    assert_eq!(pod.value["metadata"]["labels"]["app"].as_str(), Some("web"));
    assert_eq!(pod.value["metadata"]["namespace"].as_str(), Some("shop"));
    assert_eq!(pod.value["kind"].as_str(), Some("Pod"));
}

#[test]
fn a_pod_made_twice_is_an_error() {
    let text = format!(
        "{DEPLOYMENT}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop}}\n"
    );
    let err = desired_pods(&objects(&text)).unwrap_err();
    assert!(err.contains("shop/web-0"), "{err}");
}

#[test]
fn placed_pods_carry_node_ip_and_readiness() {
    let pods = desired_pods(&objects(DEPLOYMENT)).unwrap();
    let value = placed_pod(&pods["shop/web-0"], "node2", "10.244.2.7".parse().unwrap());
    let text = serde_yaml::to_string(&value).unwrap();
    assert!(text.contains("nodeName: node2"), "{text}");
    assert!(text.contains("podIP: 10.244.2.7"), "{text}");
    assert!(text.contains("type: Ready"), "{text}");
    assert!(text.contains("phase: Running"), "{text}");
}

#[test]
fn the_controller_gets_nodes_namespaces_vips_and_no_deployments() {
    let objs = objects(&format!(
        "{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
         spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 9090}}]}}\n"
    ));
    let pods = desired_pods(&objs).unwrap();
    let mut state = LabState {
        prefix: "t".into(),
        nodes: 2,
        ..LabState::default()
    };
    state
        .vips
        .insert("shop/web".into(), "10.96.0.10".parse().unwrap());
    state.pods.insert(
        "shop/web-0".into(),
        PodRecord::placed(
            "shop",
            "web-0",
            &PodInfo {
                name: "shop-web-0".into(),
                netns: "t-shop-web-0".into(),
                ip: "10.244.1.2".parse().unwrap(),
                node: 1,
                node_veth: "veth0".into(),
            },
        ),
    );
    let files = manifests(&objs, &pods, &state);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    // web-1 is not placed yet, so it is not rendered; the Deployment never is.
    assert_eq!(
        names,
        [
            "namespace__shop.yaml",
            "node__node1.yaml",
            "node__node2.yaml",
            "pod_shop_web-0.yaml",
            "service_shop_web.yaml"
        ]
    );
    assert!(files["service_shop_web.yaml"].contains("clusterIP: 10.96.0.10"));
}

/// This binary at /usr/bin/ambit, no waypoint built.
fn launch() -> Launch {
    Launch {
        ambit: "/usr/bin/ambit".into(),
        waypoint: WaypointLaunch {
            program: None,
            data: "/lab/data".into(),
        },
    }
}

#[test]
fn echo_images_run_an_echo_server_per_port_and_commands_run_as_given() {
    let ambit = &launch();
    let pods = desired_pods(&objects(DEPLOYMENT)).unwrap();
    let specs = run_specs(
        &pods["shop/web-0"],
        "node1",
        "10.244.1.2".parse().unwrap(),
        ambit,
    );
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].program, "/usr/bin/ambit");
    assert_eq!(
        specs[0].args,
        ["app", "echo", "--listen", "0.0.0.0:9090", "--name", "web-0"]
    );
    assert!(
        specs[0]
            .env
            .contains(&("POD_IP".into(), "10.244.1.2".into()))
    );

    let custom = objects(
        "kind: Pod\nmetadata: {name: c}\nspec: {containers: [\
         {name: a, image: busybox, command: [ambit, app, connect], args: [\"10.0.0.1:80\"]},\
         {name: b, image: busybox}]}\n",
    );
    let pods = desired_pods(&custom).unwrap();
    let specs = run_specs(
        &pods["default/c"],
        "node1",
        "10.244.1.3".parse().unwrap(),
        ambit,
    );
    assert_eq!(
        specs.len(),
        1,
        "an image the lab does not know runs nothing"
    );
    assert_eq!(specs[0].program, "/usr/bin/ambit");
    assert_eq!(specs[0].args, ["app", "connect", "10.0.0.1:80"]);
}

#[test]
fn sample_apps_take_the_containers_args_after_their_own_flags() {
    let ambit = &launch();
    let pods = desired_pods(&objects(
        "kind: Pod\nmetadata: {name: flaky, annotations: {lab.ambit.dev/app: echo}}\n\
         spec: {containers: [{name: e, image: busybox, args: [--fail-every, 2]}]}\n\
         ---\nkind: Pod\nmetadata: {name: grpc}\n\
         spec: {containers: [{name: g, image: ambit/grpc-echo}]}\n\
         ---\nkind: Pod\nmetadata: {name: traces}\n\
         spec: {containers: [{name: t, image: ambit/otlp-collector}]}\n",
    ))
    .unwrap();
    let args = |pod: &str| {
        let specs = run_specs(&pods[pod], "node1", "10.244.1.2".parse().unwrap(), ambit);
        assert_eq!(specs.len(), 1, "{pod}");
        specs[0].args.clone()
    };
    assert_eq!(
        args("default/flaky"),
        [
            "app",
            "echo",
            "--listen",
            "0.0.0.0:8080",
            "--name",
            "flaky",
            "--fail-every",
            "2"
        ]
    );
    assert_eq!(
        args("default/grpc"),
        [
            "app",
            "grpc-echo",
            "--listen",
            "0.0.0.0:9090",
            "--name",
            "grpc"
        ]
    );
    assert_eq!(
        args("default/traces"),
        ["app", "otlp-collector", "--listen", "0.0.0.0:4318"]
    );
}

#[test]
fn sample_images_are_recognised_by_repository() {
    assert_eq!(sample_image("ambit/echo"), Some("echo"));
    assert_eq!(sample_image("ambit/echo:v2"), Some("echo"));
    assert_eq!(sample_image("ghcr.io/x/ambit/echo@sha256:00"), Some("echo"));
    assert_eq!(sample_image("nginx"), None);
    assert_eq!(sample_image("other/echo"), None);
}

#[test]
fn vips_skip_the_taken_ones() {
    let taken = ["10.96.0.10".parse().unwrap(), "10.96.0.11".parse().unwrap()].into();
    assert_eq!(next_vip(&taken), Some("10.96.0.12".parse().unwrap()));
}
