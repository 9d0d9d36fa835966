//! `ambit check`: the lab's prerequisites, each with how to fix it. Against a cluster, the
//! checks come from `crate::cluster::check` and are reported the same way.

use std::path::Path;

use crate::lab::state::LabDir;
use crate::lab::{binary, has_tool, is_root};

/// One prerequisite.
pub struct Check {
    pub what: String,
    pub ok: bool,
    /// What to do when it fails.
    pub fix: String,
}

/// Every check, in the order a newcomer would fix them.
pub fn run() -> Vec<Check> {
    let mut checks = vec![Check {
        what: "running as root (namespaces, iptables, transparent sockets)".into(),
        ok: is_root(),
        fix: "run as root (e.g. `sudo ambit ...`)".into(),
    }];
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("tcpdump", "tcpdump"),
    ] {
        checks.push(Check {
            what: format!("`{tool}` installed"),
            ok: has_tool(tool),
            fix: format!("apt-get install -y {package}"),
        });
    }
    for name in ["ambit-controller", "ambit-ztunnel", "ambit-waypoint"] {
        let found = binary(name);
        checks.push(Check {
            what: format!("{name} next to ambit"),
            ok: found.is_ok(),
            fix: "cargo build --release --workspace --bins".into(),
        });
    }
    checks.push(kernel_check(
        "network namespaces",
        Path::new("/proc/self/ns/net"),
        "a kernel with CONFIG_NET_NS",
    ));
    if is_root() && has_tool("ip") {
        checks.push(probe_kernel(&LabDir::from_env()));
    }
    checks
}

fn kernel_check(what: &str, path: &Path, fix: &str) -> Check {
    Check {
        what: format!("kernel: {what}"),
        ok: path.exists(),
        fix: fix.into(),
    }
}

/// Why this kernel cannot run a lab, if it cannot: `ambit lab up` and the demo ask before they
/// build anything, so a missing feature is named up front rather than by an agent failing to
/// install its rules a minute into the start.
pub fn kernel_problem(dir: &LabDir) -> Option<String> {
    let probe = probe_kernel(dir);
    (!probe.ok).then(|| format!("{}: {}", probe.what, probe.fix))
}

/// Builds a throwaway namespace and loads the rules the lab and agents need (TPROXY, the
/// socket match, DNAT with the statistic match), to catch a kernel without them before a lab
/// half-starts. The namespace is named with the lab's prefix, so that `ambit lab down` removes it
/// if this process is killed while it exists.
fn probe_kernel(dir: &LabDir) -> Check {
    let netns = format!("{}-kernelcheck{}", dir.prefix, std::process::id());
    let rules = "*mangle\n:CHECK - [0:0]\n\
                 -A CHECK -p tcp -m socket --transparent -j MARK --set-xmark 0x1/0x1\n\
                 -A CHECK -p tcp --syn -j TPROXY --on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1\n\
                 COMMIT\n*nat\n:CHECK - [0:0]\n\
                 -A CHECK -d 10.96.0.1/32 -p tcp -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.0.0.1:80\n\
                 COMMIT\n";
    let result = (|| -> Result<(), String> {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            return Err("cannot create a network namespace".into());
        }
        crate::lab::kubeproxy::restore(&netns, rules).map_err(|e| crate::error_chain(&e))
    })();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &netns])
        .status();
    Check {
        what: "kernel: TPROXY, socket match, DNAT, statistic match (iptables)".into(),
        ok: result.is_ok(),
        fix: match result {
            Ok(()) => String::new(),
            Err(e) => format!("{e}; the kernel needs xt_TPROXY, xt_socket, nf_nat, xt_statistic"),
        },
    }
}

/// The lab's report; `true` when everything passed.
pub fn report(checks: &[Check]) -> (String, bool) {
    report_with(
        checks,
        "Everything the lab needs is here: `ambit lab up` or `ambit demo`.",
    )
}

/// The report, ending with `all_ok` when everything passed; `true` when everything passed.
pub fn report_with(checks: &[Check], all_ok: &str) -> (String, bool) {
    let mut out = String::new();
    for c in checks {
        if c.ok {
            out += &format!("ok     {}\n", c.what);
        } else {
            out += &format!("FAIL   {}\n       fix: {}\n", c.what, c.fix);
        }
    }
    let all = checks.iter().all(|c| c.ok);
    out += &if all {
        format!("\n{all_ok}\n")
    } else {
        "\nFix the failures above, then run `ambit check` again.\n".to_string()
    };
    (out, all)
}
