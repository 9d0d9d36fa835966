//! The lab's kube-proxy and DNS: pods outside the mesh reach a Service's VIP through DNAT, and
//! every pod resolves service names through its own `/etc/hosts`.
//!
//! **Why the DNAT is in the pod, not the node.** On a node, kube-proxy's DNAT (nat PREROUTING)
//! runs *after* the agent's capture (mangle PREROUTING). A pod outside the mesh connecting to a
//! VIP whose endpoint is a captured pod of the same node would then be rewritten only after
//! capture had looked for that pod's address, and would reach it without passing the agent:
//! its policies skipped. Rewritten in the client pod (nat OUTPUT), the packet leaves the pod
//! already addressed to the endpoint, and every node sees what a cluster's would. Captured pods
//! get no DNAT: their agent resolves VIPs itself (it needs the VIP to pick a service's
//! waypoint), as Istio's ztunnel does.
//!
//! Names: `/etc/netns/<pod netns>/hosts`, which `ip netns exec` bind-mounts over `/etc/hosts`
//! for every process started in the pod. It is rewritten in place, never replaced: a bind mount
//! holds the inode, so a renamed-over file would go unseen by running processes.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;

use ambit_ztunnel::state::MeshState;

use super::netns::command_in;

/// The chain the lab owns in each pod's nat table.
pub const CHAIN: &str = "AMBIT-LAB-SERVICES";
/// Where `ip netns exec` looks for per-namespace files.
pub const ETC_NETNS: &str = "/etc/netns";

#[derive(Debug, thiserror::Error)]
pub enum KubeProxyError {
    #[error("`{command}` in {netns} failed: {stderr} (is iptables installed? `ambit check`)")]
    Iptables {
        command: String,
        netns: String,
        stderr: String,
    },
    #[error("writing {}", path.display())]
    Hosts {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A service port and where it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub vip: IpAddr,
    pub port: u16,
    pub endpoints: Vec<SocketAddr>,
}

/// Every VIP port with its healthy endpoints, from the translated mesh.
pub fn service_ports(state: &MeshState) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for service in state.services.values() {
        for port in &service.spec.ports {
            let Ok(port) = u16::try_from(port.service_port) else {
                continue;
            };
            let endpoints: Vec<SocketAddr> = state
                .endpoints(service, port)
                .into_iter()
                .filter(|(w, _)| w.is_healthy())
                .filter_map(|(w, target)| Some(SocketAddr::new(*w.addresses.first()?, target)))
                .collect();
            for vip in service.vips.iter().filter(|ip| ip.is_ipv4()) {
                out.push(ServicePort {
                    vip: *vip,
                    port,
                    endpoints: endpoints.clone(),
                });
            }
        }
    }
    out
}

/// The `iptables-restore --noflush` input for a pod: `CHAIN` spreading each VIP port over its
/// endpoints at random (each rule takes 1/(remaining) of what reaches it, as kube-proxy does).
pub fn ruleset(ports: &[ServicePort]) -> String {
    let mut out = format!("*nat\n:{CHAIN} - [0:0]\n");
    for sp in ports {
        let n = sp.endpoints.len();
        for (i, endpoint) in sp.endpoints.iter().enumerate() {
            let statistic = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.5}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            out += &format!(
                "-A {CHAIN} -d {}/32 -p tcp --dport {}{statistic} -j DNAT --to-destination {endpoint}\n",
                sp.vip, sp.port
            );
        }
    }
    out += "COMMIT\n";
    out
}

/// Installs `ruleset` in `netns` (a pod), with the jump from nat OUTPUT added once.
pub fn apply(netns: &str, ruleset: &str) -> Result<(), KubeProxyError> {
    restore(netns, ruleset)?;
    if run(
        netns,
        "iptables",
        &["-t", "nat", "-C", "OUTPUT", "-j", CHAIN],
        None,
    )
    .is_err()
    {
        run(
            netns,
            "iptables",
            &["-t", "nat", "-I", "OUTPUT", "1", "-j", CHAIN],
            None,
        )?;
    }
    Ok(())
}

/// `iptables-restore --noflush` in `netns`: replaces only the chains `rules` declares, at once.
pub fn restore(netns: &str, rules: &str) -> Result<(), KubeProxyError> {
    run(netns, "iptables-restore", &["--noflush"], Some(rules))
}

fn run(
    netns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(), KubeProxyError> {
    let command = format!("{program} {}", args.join(" "));
    let fail = |stderr: String| KubeProxyError::Iptables {
        command: command.clone(),
        netns: netns.to_owned(),
        stderr,
    };
    let mut child = command_in(netns, program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// `/etc/hosts` for a pod of `namespace`: localhost, and each service under its cluster names
/// (`name.ns.svc.cluster.local`, `name.ns.svc`, `name.ns`, and `name` in its own namespace).
pub fn hosts(namespace: &str, state: &MeshState) -> String {
    let mut names: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for service in state.services.values() {
        let Some(vip) = service.vips.iter().find(|ip| ip.is_ipv4()) else {
            continue;
        };
        let (name, ns) = (&service.spec.name, &service.spec.namespace);
        let entry = names.entry(*vip).or_default();
        entry.push(service.spec.hostname.clone());
        entry.push(format!("{name}.{ns}.svc"));
        entry.push(format!("{name}.{ns}"));
        if ns == namespace {
            entry.push(name.clone());
        }
    }
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    for (ip, list) in names {
        out += &format!("{ip}\t{}\n", list.join(" "));
    }
    out
}

/// The hosts file of pod netns `netns`.
pub fn hosts_path(netns: &str) -> PathBuf {
    PathBuf::from(ETC_NETNS).join(netns).join("hosts")
}

/// Writes the hosts file in place (see the module docs).
pub fn write_hosts(netns: &str, text: &str) -> Result<(), KubeProxyError> {
    let path = hosts_path(netns);
    let err = |source| KubeProxyError::Hosts {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let mut file = std::fs::File::options()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)
}

/// Removes `/etc/netns/<prefix>-*` (lab down).
pub fn remove_hosts(prefix: &str) -> Result<(), KubeProxyError> {
    let Ok(entries) = std::fs::read_dir(ETC_NETNS) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .split_once('-')
            .is_some_and(|(owner, _)| owner == prefix)
        {
            std::fs::remove_dir_all(entry.path()).map_err(|source| KubeProxyError::Hosts {
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_share_a_vip_evenly() {
        let sp = ServicePort {
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            endpoints: vec![
                "10.244.1.2:8080".parse().unwrap(),
                "10.244.2.2:8080".parse().unwrap(),
                "10.244.2.3:8080".parse().unwrap(),
            ],
        };
        let rules = ruleset(&[sp]);
        assert_eq!(
            rules,
            "*nat\n:AMBIT-LAB-SERVICES - [0:0]\n\
             -A AMBIT-LAB-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.33333 -j DNAT --to-destination 10.244.1.2:8080\n\
             -A AMBIT-LAB-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.244.2.2:8080\n\
             -A AMBIT-LAB-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.2.3:8080\n\
             COMMIT\n"
        );
    }

    #[test]
    fn an_empty_ruleset_still_owns_the_chain() {
        assert_eq!(ruleset(&[]), "*nat\n:AMBIT-LAB-SERVICES - [0:0]\nCOMMIT\n");
    }
}
