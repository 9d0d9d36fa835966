//! The lab's mesh as the data plane sees it: the controller's own directory loader reads the
//! lab's manifest directory, and [`crate::mesh::translate`] turns what it read into the state
//! the proxies hold. `ambit explain`, `ambit get` and the lab's kube-proxy read this.

use std::path::Path;

use ambit_controller::source::standalone::Directory;
use ambit_controller::translate::Settings;

pub use crate::mesh::{MeshView, ViewError, gateway_name};

/// Translates the manifests in `dir` with the settings the lab runs the controller with.
pub fn load(dir: &Path) -> Result<MeshView, ViewError> {
    let mut directory = Directory::new(dir);
    let (report, _) = directory
        .load()
        .map_err(|e| ViewError::Load(e.to_string()))?;
    let errors = report.errors.iter().map(ToString::to_string).collect();
    crate::mesh::translate(directory.state(), &Settings::default(), errors)
}
