//! GatewayClass status: a class whose `spec.controllerName` is [`status::CONTROLLER_NAME`]
//! (`deploy/base/gatewayclass.yaml` installs `ambit-waypoint` so) is told it is `Accepted`, as
//! Gateway API asks of the controller a class names. Classes naming another controller (an
//! installed Istio's `istio-waypoint`, whose Gateways Ambit still serves as waypoints) are
//! never written: their status is that controller's. Runs only while this replica leads.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::{debug, warn};

use super::status::{self, CONTROLLER_NAME};
use super::{ReconcileError, gateway_api_resource, patch_status};

const RETRY: Duration = Duration::from_secs(10);

pub fn class_resource() -> ApiResource {
    gateway_api_resource("GatewayClass", "gatewayclasses")
}

/// Whether the class names Ambit as its controller.
pub fn is_ours(class: &DynamicObject) -> bool {
    class.data["spec"]["controllerName"] == CONTROLLER_NAME
}

/// Writes the status of Ambit's GatewayClasses until `stop` resolves.
pub(super) async fn run(client: Client, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let classes = Api::<DynamicObject>::all_with(client.clone(), &class_resource());
    Controller::new_with(classes, watcher::Config::default(), class_resource())
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, Arc::new(client))
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                debug!("GatewayClass status: {e}");
            }
        })
        .await;
}

async fn reconcile(
    class: Arc<DynamicObject>,
    client: Arc<Client>,
) -> Result<Action, ReconcileError> {
    if !is_ours(&class) {
        return Ok(Action::await_change());
    }
    let value = serde_json::to_value(&*class).unwrap_or_default();
    if let Some(body) = status::class_patch(&value) {
        let name = class.name_any();
        patch_status(
            &client,
            &class_resource(),
            None,
            &name,
            "GatewayClass",
            &body,
        )
        .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(class: Arc<DynamicObject>, error: &ReconcileError, _: Arc<Client>) -> Action {
    warn!(class = %class.name_any(), retry_in = ?RETRY, "writing the GatewayClass status failed: {error}");
    Action::requeue(RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class the install ships names the controller that accepts it.
    #[test]
    fn the_installed_class_names_this_controller() {
        let text = include_str!("../../../deploy/base/gatewayclass.yaml");
        let class: DynamicObject = serde_yaml::from_str(text).unwrap();
        assert!(is_ours(&class), "{:?}", class.data);
        assert!(crate::translate::waypoint::WAYPOINT_CLASSES.contains(&class.name_any().as_str()));
    }
}
