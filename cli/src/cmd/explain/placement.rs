//! Where pods are, as `explain` needs it: a pod's namespace, name, address and node. The lab's
//! state provides it (it placed the pods itself), and so do a cluster's Pod objects (the
//! scheduler and kubelet filled in `spec.nodeName` and `status.podIP`). Whether a pod is
//! captured is not here: that is the mesh's answer (the controller's translation), in both.

use std::net::IpAddr;

use ambit_controller::model::{self, ClusterState};

use crate::lab::state::LabState;

/// One placed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlace {
    pub namespace: String,
    pub name: String,
    pub ip: IpAddr,
    pub node: String,
}

/// Every placed pod of a lab or a cluster.
#[derive(Debug, Clone)]
pub struct Placement {
    pods: Vec<PodPlace>,
    /// Where they are, for messages: "the lab", "the cluster".
    place: &'static str,
}

impl Placement {
    pub fn from_lab(lab: &LabState) -> Placement {
        Placement {
            pods: lab
                .pods
                .values()
                .map(|p| PodPlace {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    ip: p.ip.into(),
                    node: LabState::node_name(p.node),
                })
                .collect(),
            place: "the lab",
        }
    }

    /// The pods of a cluster that have an address and a node (pending pods have neither, and no
    /// connection starts from or reaches them).
    pub fn from_cluster(objects: &ClusterState) -> Placement {
        let pods = objects
            .pods()
            .filter_map(|pod| {
                let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                let node = pod.spec.as_ref()?.node_name.clone()?;
                Some(PodPlace {
                    namespace: model::namespace(&pod.metadata).to_owned(),
                    name: model::name(&pod.metadata).to_owned(),
                    ip,
                    node,
                })
            })
            .collect();
        Placement {
            pods,
            place: "the cluster",
        }
    }

    /// "the lab" or "the cluster".
    pub fn place(&self) -> &'static str {
        self.place
    }

    /// A pod by `<namespace>/<name>`, or by bare name when exactly one namespace has it.
    pub fn find(&self, name: &str) -> Result<&PodPlace, String> {
        let matches: Vec<&PodPlace> = match name.split_once('/') {
            Some((ns, n)) => self
                .pods
                .iter()
                .filter(|p| p.namespace == ns && p.name == n)
                .collect(),
            None => self.pods.iter().filter(|p| p.name == name).collect(),
        };
        match matches.as_slice() {
            [pod] => Ok(pod),
            [] => Err(format!(
                "no pod {name:?} in {} (`ambit get pods` lists the lab's; `kubectl get pods -A` a \
                 cluster's)",
                self.place
            )),
            _ => Err(format!(
                "several namespaces have a pod {name:?}: name it as <namespace>/{name}"
            )),
        }
    }
}
