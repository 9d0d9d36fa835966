//! Standalone mode: a directory of Kubernetes YAML, watched live.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory is read (hidden files and
//! directories are skipped). A bad document is reported and skipped; the rest is served. A file
//! with any error never removes objects it held before (a missing document might be a deletion or
//! the casualty of a syntax error, and the safe reading is the latter), and an object whose new
//! version is invalid keeps its last good version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// The objects of one file, by key.
type Objects = BTreeMap<ObjectRef, Arc<Object>>;

/// A manifest directory: what each file holds, and the state they make together.
#[derive(Debug)]
pub struct Directory {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// For each key, the files that define it; the first by path wins.
    owners: HashMap<ObjectRef, BTreeSet<PathBuf>>,
    state: ClusterState,
}

#[derive(Debug)]
struct FileState {
    /// Length and mtime of the parse below; `None` forces a re-read (the file was unreadable).
    stamp: Option<(u64, Option<SystemTime>)>,
    /// The problems of the file's last parse (`None`: it could not be read).
    parse: Option<FileParse>,
    /// What the file contributes: its last good objects.
    good: Arc<Objects>,
}

#[derive(Debug)]
struct FileParse {
    errors: Vec<DocumentError>,
    ignored: usize,
}

impl Directory {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Directory {
            root: root.into(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
            state: ClusterState::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every object of the directory, as of the last [`Directory::load`].
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Reads every manifest file that changed since the last load and updates [`Directory::state`].
    /// Returns the report and the keys whose object changed. Fails only if the directory itself
    /// cannot be read.
    ///
    /// Work is proportional to the files that changed (plus a `stat` of each file): an unchanged
    /// file keeps its parse and its objects, shared, and only keys of changed files are merged.
    pub fn load(&mut self) -> Result<(LoadReport, Vec<ObjectRef>), SourceError> {
        let paths = manifest_files(&self.root)?;
        // Each changed file: (path, what it contributed before, what it contributes now).
        let mut changed_files: Vec<(PathBuf, Arc<Objects>, Arc<Objects>)> = Vec::new();
        let listed: BTreeSet<&PathBuf> = paths.iter().collect();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !listed.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let old = self.files.remove(&path).expect("listed").good;
            changed_files.push((path, old, Arc::default()));
        }
        for path in &paths {
            let meta = std::fs::metadata(path).ok();
            let stamp = (
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            );
            let previous = self.files.get(path);
            if previous.is_some_and(|f| f.stamp == Some(stamp)) {
                continue;
            }
            let old_good = previous.map(|f| f.good.clone()).unwrap_or_default();
            let next = match std::fs::read_to_string(path) {
                Ok(text) => read_file(path, &text, stamp, &old_good),
                Err(e) => {
                    // Unreadable now (mid-write, permissions): keep what it held, read it again
                    // next time.
                    warn!(file = %path.display(), "cannot read manifest: {e}");
                    FileState {
                        stamp: None,
                        parse: None,
                        good: old_good.clone(),
                    }
                }
            };
            if !Arc::ptr_eq(&old_good, &next.good) {
                changed_files.push((path.clone(), old_good, next.good.clone()));
            }
            self.files.insert(path.clone(), next);
        }
        let changed = self.merge(changed_files);
        let mut report = LoadReport {
            files: paths.len(),
            objects: self.state.len(),
            ..LoadReport::default()
        };
        for parse in self.files.values().filter_map(|f| f.parse.as_ref()) {
            report.ignored += parse.ignored;
            report.errors.extend(parse.errors.iter().cloned());
        }
        Ok((report, changed))
    }

    /// Updates the owners and the state for files whose contribution changed; returns the keys
    /// whose object changed.
    fn merge(&mut self, files: Vec<(PathBuf, Arc<Objects>, Arc<Objects>)>) -> Vec<ObjectRef> {
        let mut affected = BTreeSet::new();
        for (path, old, new) in files {
            for key in old.keys().filter(|k| !new.contains_key(*k)) {
                if let Some(owners) = self.owners.get_mut(key) {
                    owners.remove(&path);
                    if owners.is_empty() {
                        self.owners.remove(key);
                    }
                }
                affected.insert(key.clone());
            }
            for (key, object) in new.iter() {
                if old.get(key).is_some_and(|o| Arc::ptr_eq(o, object)) {
                    continue;
                }
                self.owners
                    .entry(key.clone())
                    .or_default()
                    .insert(path.clone());
                affected.insert(key.clone());
            }
        }
        let mut changed = Vec::new();
        for key in affected {
            let owners = self.owners.get(&key);
            if let Some(owners) = owners.filter(|o| o.len() > 1) {
                let first = owners.first().expect("non-empty");
                warn!(file = %first.display(), object = %key, "defined in more than one file; the first file (by path) wins");
            }
            let winner = owners
                .and_then(|o| o.first())
                .and_then(|path| self.files.get(path)?.good.get(&key));
            let differs = match (winner, self.state.get_shared(&key)) {
                (Some(new), Some(old)) => !Arc::ptr_eq(new, old),
                (None, None) => false,
                _ => true,
            };
            if !differs {
                continue;
            }
            match winner {
                Some(object) => self.state.insert(object.clone()),
                None => self.state.remove(&key),
            };
            changed.push(key);
        }
        changed
    }
}

/// Parses a file's text into its next state; `old_good` is what it contributed before.
fn read_file(
    path: &Path,
    text: &str,
    stamp: (u64, Option<SystemTime>),
    old_good: &Arc<Objects>,
) -> FileState {
    let parsed = parse_file(path, text);
    // An object equal to the one the file held keeps its allocation: downstream, unchanged
    // objects are then recognised by pointer.
    let mut good: Objects = parsed
        .objects
        .into_iter()
        .map(|o| {
            let key = o.object_ref();
            let object = match old_good.get(&key) {
                Some(old) if **old == o => old.clone(),
                _ => Arc::new(o),
            };
            (key, object)
        })
        .collect();
    if !parsed.errors.is_empty() {
        // A missing document might be a deletion or the casualty of an error: keep the last
        // good version of everything the file no longer yields.
        for (key, object) in old_good.iter() {
            good.entry(key.clone()).or_insert_with(|| object.clone());
        }
    }
    let same = good.len() == old_good.len()
        && good
            .iter()
            .zip(old_good.iter())
            .all(|((k, a), (l, b))| k == l && Arc::ptr_eq(a, b));
    FileState {
        stamp: Some(stamp),
        parse: Some(FileParse {
            errors: parsed.errors,
            ignored: parsed.ignored,
        }),
        good: if same {
            old_good.clone()
        } else {
            Arc::new(good)
        },
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
            Ok((report, changed)) => {
                for e in &report.errors {
                    warn!("invalid manifest skipped: {e}");
                }
                info!(
                    files = report.files,
                    objects = report.objects,
                    errors = report.errors.len(),
                    "manifests loaded"
                );
                // Only the changed keys are copied over: the published state is updated in place.
                states.send_if_modified(|current| {
                    for key in &changed {
                        match dir.state().get_shared(key) {
                            Some(object) => current.insert(object.clone()),
                            None => current.remove(key),
                        };
                    }
                    !changed.is_empty()
                });
                reports.send_replace(report);
                last = Some(print);
            }
            // The directory is unreadable (e.g. being replaced): keep serving the last state.
            Err(e) => warn!("{e}; keeping the last good config"),
        }
    }
}
