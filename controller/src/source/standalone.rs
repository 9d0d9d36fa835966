//! Standalone mode: a directory of Kubernetes YAML, watched live.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory is read (hidden files and
//! directories are skipped). A bad document is reported and skipped; the rest is served. A file
//! with any error never removes objects it held before (a missing document might be a deletion or
//! the casualty of a syntax error, and the safe reading is the latter), and an object whose new
//! version is invalid keeps its last good version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};

use super::yaml::{DocumentError, parse_file};
use crate::model::{ClusterState, Object, ObjectRef};

/// The outcome of one load of the directory.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub files: usize,
    pub objects: usize,
    pub ignored: usize,
    pub errors: Vec<DocumentError>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A manifest directory and the last good objects of each file in it.
#[derive(Debug)]
pub struct Directory {
    root: PathBuf,
    last_good: BTreeMap<PathBuf, BTreeMap<ObjectRef, Object>>,
    /// Each file's parse, kept while its length and mtime are unchanged: a change to one file of a
    /// 10k-pod directory re-parses that file only.
    parsed: BTreeMap<PathBuf, CachedParse>,
}

#[derive(Debug, Clone)]
struct CachedParse {
    len: u64,
    modified: Option<SystemTime>,
    objects: BTreeMap<ObjectRef, Object>,
    errors: Vec<DocumentError>,
    ignored: usize,
}

impl Directory {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Directory {
            root: root.into(),
            last_good: BTreeMap::new(),
            parsed: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every manifest file now. Fails only if the directory itself cannot be read.
    pub fn load(&mut self) -> Result<(ClusterState, LoadReport), SourceError> {
        let mut report = LoadReport::default();
        let files = manifest_files(&self.root)?;
        let mut next: BTreeMap<PathBuf, BTreeMap<ObjectRef, Object>> = BTreeMap::new();
        let mut parsed_now = BTreeMap::new();
        for path in files {
            report.files += 1;
            let meta = std::fs::metadata(&path).ok();
            let (len, modified) = (
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            );
            let cached = self
                .parsed
                .remove(&path)
                .filter(|c| c.len == len && c.modified == modified);
            let parse = match cached {
                Some(c) => c,
                None => match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        let p = parse_file(&path, &text);
                        CachedParse {
                            len,
                            modified,
                            objects: p.objects.into_iter().map(|o| (o.object_ref(), o)).collect(),
                            errors: p.errors,
                            ignored: p.ignored,
                        }
                    }
                    Err(e) => {
                        // Unreadable now (mid-write, permissions): keep what it held.
                        warn!(file = %path.display(), "cannot read manifest: {e}");
                        if let Some(prev) = self.last_good.get(&path) {
                            next.insert(path, prev.clone());
                        }
                        continue;
                    }
                },
            };
            report.ignored += parse.ignored;
            let mut objects = parse.objects.clone();
            if !parse.errors.is_empty() {
                if let Some(prev) = self.last_good.get(&path) {
                    for (key, object) in prev {
                        objects.entry(key.clone()).or_insert_with(|| object.clone());
                    }
                }
                report.errors.extend(parse.errors.iter().cloned());
            }
            parsed_now.insert(path.clone(), parse);
            next.insert(path, objects);
        }
        self.parsed = parsed_now;
        let mut state = ClusterState::new();
        let mut seen = BTreeSet::new();
        for (path, objects) in &next {
            for (key, object) in objects {
                if !seen.insert(key.clone()) {
                    warn!(file = %path.display(), object = %key, "defined in more than one file; the first file (by path) wins");
                    continue;
                }
                state.upsert(object.clone());
            }
        }
        report.objects = state.len();
        self.last_good = next;
        Ok((state, report))
    }
}

fn manifest_files(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| SourceError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the directory looks like on disk, to notice changes without reading every file.
fn fingerprint(root: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    manifest_files(root)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect()
}

/// Loads the directory, then reloads it whenever a file appears, disappears or changes (checked
/// every `interval`), publishing each new state. Runs until the receiver side is gone.
pub async fn watch(
    mut dir: Directory,
    interval: Duration,
    states: watch::Sender<ClusterState>,
    reports: watch::Sender<LoadReport>,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if states.is_closed() {
            return;
        }
        let print = fingerprint(dir.root());
        if last.as_ref() == Some(&print) {
            continue;
        }
        match dir.load() {
            Ok((state, report)) => {
                for e in &report.errors {
                    warn!("invalid manifest skipped: {e}");
                }
                info!(
                    files = report.files,
                    objects = report.objects,
                    errors = report.errors.len(),
                    "manifests loaded"
                );
                states.send_if_modified(|current| {
                    let changed = *current != state;
                    *current = state;
                    changed
                });
                reports.send_replace(report);
                last = Some(print);
            }
            // The directory is unreadable (e.g. being replaced): keep serving the last state.
            Err(e) => warn!("{e}; keeping the last good config"),
        }
    }
}
