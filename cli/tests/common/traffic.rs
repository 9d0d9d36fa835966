//! Traffic from lab pods and what it left behind, as the lab tests read it: one HTTP response
//! (`ambit app connect --http`), a tally of many (`--repeat`), the sample servers' `answered`
//! lines, and Prometheus metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use super::eventually;
use super::lab::TestLab;

/// A waypoint serves its metrics on this port, in its own pod.
pub const WAYPOINT_METRICS: u16 = 15020;

/// One HTTP response as `ambit app connect --http` printed it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The echo server's `server=` line; empty when a proxy answered itself.
    pub server: String,
    /// `x-ambit-reason`, the waypoint's reason for answering itself; empty if none.
    pub reason: String,
    /// Everything, for failure messages.
    pub text: String,
}

impl Response {
    pub fn parse(text: String) -> Response {
        let status = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response:\n{text}"));
        let line = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        Response {
            status,
            server: line("server="),
            reason: line("x-ambit-reason:"),
            text,
        }
    }
}

impl Response {
    /// Asserts that `server` answered, with `status` (a server of `""`: the proxy itself).
    #[track_caller]
    pub fn assert_answered(&self, status: u16, server: &str) {
        assert_eq!(
            (self.status, self.server.as_str()),
            (status, server),
            "{}",
            self.text
        );
    }
}

/// What `ambit app connect --repeat` counted: answers by (status, server), and failures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `(status, server)` -> count; the server is `-` when a proxy answered itself.
    pub answers: BTreeMap<(u16, String), u64>,
    pub errors: u64,
}

impl Tally {
    pub fn parse(text: &str) -> Tally {
        let mut tally = Tally::default();
        for line in text.lines() {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or_else(|| panic!("no {name} in tally line {line:?}"))
            };
            let count: u64 = field("count").parse().expect("a count");
            if line.contains(" error=") {
                tally.errors += count;
                continue;
            }
            let status = field("status").parse().expect("a status");
            *tally
                .answers
                .entry((status, field("server").to_owned()))
                .or_default() += count;
        }
        tally
    }

    /// How many got `status` from `server`.
    pub fn count(&self, status: u16, server: &str) -> u64 {
        self.answers
            .get(&(status, server.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// A tally in which `n` answers came, all `status` from `server`.
    pub fn only(status: u16, server: &str, n: u64) -> Tally {
        Tally {
            answers: [((status, server.to_owned()), n)].into(),
            errors: 0,
        }
    }
}

impl TestLab {
    /// `ambit app connect <dst> --http <path> <args...>` in pod `src`; the response it got.
    pub fn http(&self, src: &str, dst: &str, path: &str, args: &[&str]) -> Response {
        let mut command = vec!["exec", src, "--", "ambit", "app", "connect", dst];
        command.extend(["--http", path]);
        command.extend(args);
        Response::parse(self.ok(&command))
    }

    /// [`TestLab::http`] `n` times, `concurrency` at once: the tally of what came back.
    pub fn tally(
        &self,
        src: &str,
        dst: &str,
        path: &str,
        (n, concurrency): (u64, u64),
        args: &[&str],
    ) -> Tally {
        let (n, concurrency) = (n.to_string(), concurrency.to_string());
        let mut command = vec!["exec", src, "--", "ambit", "app", "connect", dst];
        command.extend([
            "--http",
            path,
            "--repeat",
            &n,
            "--concurrency",
            &concurrency,
        ]);
        command.extend(args);
        Tally::parse(&self.ok(&command))
    }

    /// The log of a lab process, `<namespace>-<pod>-<container>[-<port>]` (empty if none yet).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The Prometheus metrics a pod's process serves on `127.0.0.1:<port>`, read from inside
    /// the pod (a waypoint's are on 15020).
    pub fn metrics(&self, pod: &str, port: u16) -> String {
        let addr = format!("127.0.0.1:{port}");
        let response = self.http(pod, &addr, "/metrics", &[]);
        assert_eq!(response.status, 200, "{}", response.text);
        response.text
    }
}

/// A metric's expected sum over the samples with these labels (see [`metric`]).
pub type Expected<'a> = (&'a str, Vec<(&'a str, &'a str)>, u64);

impl TestLab {
    /// Waits until `pod`'s metrics on `port` hold every expected sum: a proxy counts a request
    /// as its last byte leaves, which may be a moment after the client has read it.
    pub fn expect_metrics(&self, pod: &str, port: u16, expected: &[Expected]) {
        eventually("the metrics hold", Duration::from_secs(10), || {
            let metrics = self.metrics(pod, port);
            for (name, labels, n) in expected {
                let got = metric(&metrics, name, labels);
                if got != *n {
                    return Err(format!("{name} {labels:?} is {got}, not {n}"));
                }
            }
            Ok(())
        });
    }
}

/// How many `answered <status> <method> <target>` lines an echo server's log has.
pub fn answered(log: &str, status: u16, method: &str, target: &str) -> usize {
    let line = format!("answered {status} {method} {target}");
    log.lines().filter(|l| *l == line).count()
}

/// The sum of the samples of metric `name` (a counter's `_total`, a histogram's `_count`) whose
/// labels include every `label="value"` of `labels`.
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels: Vec<&str> = labels.split(',').collect();
            wanted
                .iter()
                .all(|w| labels.contains(&w.as_str()))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .sum()
}
