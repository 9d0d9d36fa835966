//! Shared pieces of Ambit's benchmarks: latency summaries and table output, running code in a
//! lab pod (`pod`), open-loop pacing on threads (`pace`), reading a process's CPU and memory
//! (`proc`), HTTP/1.1 load (`http1`), and nginx as a peer proxy (`nginx`).
//!
//! Every benchmark measures Ambit against a baseline in the same run and reports ratios, because
//! these machines are noisy: absolute numbers move from run to run, ratios much less.

pub mod http1;
pub mod nginx;
pub mod pace;
pub mod pod;
pub mod proc;

use std::time::Duration;

/// Latency percentiles of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

pub fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// A Markdown table, printed as it fills so a long run shows progress.
pub struct Table {
    columns: usize,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        println!("| {} |", headers.join(" | "));
        println!("|{}", "---|".repeat(headers.len()));
        Table {
            columns: headers.len(),
        }
    }

    pub fn row(&self, cells: &[String]) {
        assert_eq!(cells.len(), self.columns);
        println!("| {} |", cells.join(" | "));
    }
}
