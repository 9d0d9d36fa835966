//! Kubernetes manifests for the test clusters, as users would write them.

/// `k: v` pairs as a YAML flow map.
fn map(pairs: &[(&str, &str)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    format!("{{{}}}", items.join(", "))
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {}}}\n---\n",
        map(labels)
    )
}

pub fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n---\n")
}

/// A pod placed on `node` with `ip`, ready, exposing `port`.
pub struct Pod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub node: &'a str,
    pub ip: String,
    pub service_account: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
}

pub fn pod(p: &Pod<'_>) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {}}}\n\
         spec: {{nodeName: {}, serviceAccountName: {}, containers: [{{name: app, image: ambit/echo}}]}}\n\
         status: {{phase: Running, podIP: {}, podIPs: [{{ip: {}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n",
        p.name,
        p.namespace,
        map(&p.labels),
        p.node,
        p.service_account,
        p.ip,
        p.ip
    )
}

pub fn service(
    name: &str,
    namespace: &str,
    cluster_ip: &str,
    selector: &[(&str, &str)],
    port: u16,
    target_port: u16,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{clusterIP: {cluster_ip}, selector: {}, ports: [{{name: tcp, port: {port}, targetPort: {target_port}}}]}}\n---\n",
        map(selector)
    )
}

/// An AuthorizationPolicy; `spec` is the YAML of its spec, indented by two spaces.
pub fn authorization_policy(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )
}

pub fn peer_authentication(name: &str, namespace: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{mtls: {{mode: {mode}}}}}\n---\n"
    )
}
