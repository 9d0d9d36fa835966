//! Which mesh a command looks at: the local lab, or a Kubernetes cluster. Commands that exist
//! for both (`check`, `ztunnel-config`, `explain`) take `--lab` or `--kubernetes`; without
//! either, a cluster is the target when there is a cluster configuration to reach it
//! (KUBECONFIG, `~/.kube/config`, or running in a pod), the lab otherwise, so a laptop with no
//! cluster keeps working as before. Commands that read a running mesh prefer a running lab.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Lab,
    Cluster,
}

impl Target {
    /// `lab` and `kubernetes` are the flags (clap makes them exclusive).
    pub fn choose(lab: bool, kubernetes: bool) -> Target {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let home_config =
            env("HOME").is_some_and(|home| Path::new(&home).join(".kube").join("config").is_file());
        Target::decide(
            lab,
            kubernetes,
            env("KUBECONFIG").is_some() || home_config || env("KUBERNETES_SERVICE_HOST").is_some(),
        )
    }

    /// For commands that read a running mesh (`ztunnel-config`, `explain`): as
    /// [`Target::choose`], except that without a flag a running lab wins over a configured
    /// cluster, since whoever started a lab on this machine is looking at it.
    pub fn choose_running(lab: bool, kubernetes: bool, lab_running: bool) -> Target {
        if lab_running && !kubernetes {
            return Target::Lab;
        }
        Target::choose(lab, kubernetes)
    }

    fn decide(lab: bool, kubernetes: bool, cluster_configured: bool) -> Target {
        match (lab, kubernetes) {
            (true, _) => Target::Lab,
            (_, true) => Target::Cluster,
            _ if cluster_configured => Target::Cluster,
            _ => Target::Lab,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_then_configuration_decides() {
        assert_eq!(Target::decide(true, false, true), Target::Lab);
        assert_eq!(Target::decide(false, true, false), Target::Cluster);
        assert_eq!(Target::decide(false, false, true), Target::Cluster);
        assert_eq!(Target::decide(false, false, false), Target::Lab);
    }

    #[test]
    fn a_running_lab_wins_unless_the_cluster_is_asked_for() {
        assert_eq!(Target::choose_running(false, false, true), Target::Lab);
        assert_eq!(Target::choose_running(true, false, true), Target::Lab);
        assert_eq!(Target::choose_running(false, true, true), Target::Cluster);
    }
}
