//! The `status` the leader writes, as Gateway API defines it: a Gateway's `Accepted` (ours and
//! valid), `Programmed` (its Deployment has a replica available) and the Service's hostname as
//! its address; a GatewayClass's `Accepted`; and, through the same [`merge_conditions`], each
//! HTTPRoute parent's conditions (`routes.rs`). Pure: the caller reads the object and writes the
//! patch.
//!
//! A condition's `lastTransitionTime` moves only when its status does, and an unchanged status
//! is not written at all, so reconciling again is silent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::objects::GATEWAY_API_VERSION;

/// Ambit's name as a Gateway API controller: a GatewayClass's `spec.controllerName`
/// (`deploy/base/gatewayclass.yaml`), and the `controllerName` of its HTTPRoute parent entries.
pub const CONTROLLER_NAME: &str = "ambit.dev/waypoint-controller";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the reconciler found: `Err(message)` if the Gateway is invalid, else whether its
/// Deployment has an available replica.
pub fn conditions(outcome: &Result<bool, String>) -> [Condition; 2] {
    match outcome {
        Err(message) => [
            Condition {
                type_: "Accepted",
                status: false,
                reason: "Invalid",
                message: message.clone(),
            },
            Condition {
                type_: "Programmed",
                status: false,
                reason: "Invalid",
                message: "the Gateway is not accepted".into(),
            },
        ],
        Ok(available) => [
            Condition {
                type_: "Accepted",
                status: true,
                reason: "Accepted",
                message: "a waypoint of this Gateway is deployed".into(),
            },
            if *available {
                Condition {
                    type_: "Programmed",
                    status: true,
                    reason: "Programmed",
                    message: "the waypoint has an available replica".into(),
                }
            } else {
                Condition {
                    type_: "Programmed",
                    status: false,
                    reason: "Pending",
                    message: "waiting for the waypoint Deployment to have an available replica"
                        .into(),
                }
            },
        ],
    }
}

/// `conditions` as they are written over `current` (the object's conditions as read) at
/// `generation`, and whether `current` already says exactly this. A condition keeps its
/// `lastTransitionTime` while its status stays. Every status Ambit writes (Gateways, HTTPRoute
/// parents, GatewayClasses) goes through here, so they all follow Gateway API's rules alike.
pub fn merge_conditions(
    current: Option<&Vec<Value>>,
    conditions: &[Condition],
    generation: i64,
) -> (Vec<Value>, bool) {
    let find = |type_: &str| current?.iter().find(|c| c["type"] == type_);
    let now = serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null);
    // Conditions of other types (another writer's) are neither compared nor written.
    let mut unchanged = true;
    let merged = conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let before = find(c.type_);
            let same_status = before.is_some_and(|b| b["status"] == status);
            unchanged &= same_status
                && before.is_some_and(|b| {
                    b["reason"] == c.reason
                        && b["message"] == c.message.as_str()
                        && b["observedGeneration"].as_i64() == Some(generation)
                });
            let since = match before {
                Some(b) if same_status => b["lastTransitionTime"].clone(),
                _ => now.clone(),
            };
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            })
        })
        .collect();
    (merged, unchanged)
}

/// An object's `metadata.generation`, which every condition reports as `observedGeneration`.
pub fn generation(object: &Value) -> i64 {
    object["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// The body of a server-side apply of `status` to `gateway` (the object as read), or `None` if
/// it already says all this.
pub fn patch(gateway: &Value, conditions: &[Condition], hostname: Option<&str>) -> Option<Value> {
    let addresses: Vec<Value> = hostname
        .map(|h| json!({"type": "Hostname", "value": h}))
        .into_iter()
        .collect();
    let same_addresses = gateway["status"]["addresses"].as_array().map(Vec::as_slice)
        == Some(addresses.as_slice())
        || (addresses.is_empty() && gateway["status"]["addresses"].is_null());
    let (conditions, same_conditions) = merge_conditions(
        gateway["status"]["conditions"].as_array(),
        conditions,
        generation(gateway),
    );
    if same_addresses && same_conditions {
        return None;
    }
    let mut status = json!({"conditions": conditions});
    if !addresses.is_empty() {
        status["addresses"] = Value::Array(addresses);
    }
    Some(json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "status": status,
    }))
}

/// One parent's entry in an HTTPRoute's `status.parents`: the parentRef as the route's spec
/// writes it, and its conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentStatus {
    pub parent_ref: Value,
    pub conditions: Vec<Condition>,
}

/// The body of a server-side apply of an HTTPRoute's `status.parents` (`route` as read), with
/// `ours` in place of Ambit's entries; `None` if the route already says exactly that.
///
/// `parents` is an atomic list in Gateway API's CRDs, so an apply replaces all of it: the
/// entries of other controllers (an ingress implementation's, for the same route) are written
/// back exactly as read. (A write of theirs between the read and this apply is lost and
/// rewritten at their next reconcile; the API offers nothing finer.)
pub fn route_patch(route: &Value, ours: &[ParentStatus]) -> Option<Value> {
    let generation = generation(route);
    let current: &[Value] = route["status"]["parents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let is_ours = |p: &&Value| p["controllerName"] == CONTROLLER_NAME;
    let current_ours: Vec<&Value> = current.iter().filter(is_ours).collect();
    let mut unchanged = current_ours.len() == ours.len();
    let written: Vec<Value> = ours
        .iter()
        .map(|p| {
            let before = current_ours.iter().find(|c| c["parentRef"] == p.parent_ref);
            let (conditions, same) = merge_conditions(
                before.and_then(|b| b["conditions"].as_array()),
                &p.conditions,
                generation,
            );
            unchanged &= before.is_some() && same;
            json!({
                "parentRef": p.parent_ref,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            })
        })
        .collect();
    if unchanged {
        return None;
    }
    let parents: Vec<Value> = current
        .iter()
        .filter(|p| !is_ours(p))
        .cloned()
        .chain(written)
        .collect();
    Some(json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "status": {"parents": parents},
    }))
}

/// A GatewayClass of this controller: Accepted, as Gateway API asks of the controller named in
/// its `controllerName`; `None` if its status says so already.
pub fn class_patch(class: &Value) -> Option<Value> {
    let accepted = Condition {
        type_: "Accepted",
        status: true,
        reason: "Accepted",
        message: "Ambit deploys a waypoint for each Gateway of this class".into(),
    };
    let (conditions, unchanged) = merge_conditions(
        class["status"]["conditions"].as_array(),
        &[accepted],
        generation(class),
    );
    (!unchanged).then(|| {
        json!({
            "apiVersion": GATEWAY_API_VERSION,
            "kind": "GatewayClass",
            "status": {"conditions": conditions},
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(generation: i64, status: Value) -> Value {
        json!({"metadata": {"name": "wp", "generation": generation}, "status": status})
    }

    #[test]
    fn an_unchanged_status_is_not_written_and_transition_times_stay() {
        let ready = conditions(&Ok(true));
        let first = patch(
            &gateway(1, Value::Null),
            &ready,
            Some("wp.shop.svc.cluster.local"),
        )
        .expect("a first status");
        let written = gateway(1, first["status"].clone());
        assert_eq!(
            patch(&written, &ready, Some("wp.shop.svc.cluster.local")),
            None
        );

        // A new generation is reported, but Accepted stayed True: its time does not move.
        let mut later = written.clone();
        later["status"]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        later["metadata"]["generation"] = json!(2);
        let again = patch(&later, &ready, Some("wp.shop.svc.cluster.local")).unwrap();
        let accepted = &again["status"]["conditions"][0];
        assert_eq!(accepted["observedGeneration"], 2);
        assert_eq!(accepted["lastTransitionTime"], "2020-01-01T00:00:00Z");

        // Programmed turning False is a transition.
        let pending = patch(
            &later,
            &conditions(&Ok(false)),
            Some("wp.shop.svc.cluster.local"),
        );
        let programmed = &pending.unwrap()["status"]["conditions"][1];
        assert_eq!(programmed["status"], "False");
        assert_eq!(programmed["reason"], "Pending");
        assert_ne!(programmed["lastTransitionTime"], "2020-01-01T00:00:00Z");
    }

    #[test]
    fn an_invalid_gateway_is_not_accepted_and_has_no_address() {
        let body = patch(
            &gateway(3, Value::Null),
            &conditions(&Err("bad label".into())),
            None,
        )
        .unwrap();
        let accepted = &body["status"]["conditions"][0];
        assert_eq!(accepted["status"], "False");
        assert_eq!(accepted["reason"], "Invalid");
        assert_eq!(accepted["message"], "bad label");
        assert!(body["status"]["addresses"].is_null());
    }

    fn parent(name: &str, accepted: bool) -> ParentStatus {
        ParentStatus {
            parent_ref: json!({"name": name}),
            conditions: vec![Condition {
                type_: "Accepted",
                status: accepted,
                reason: if accepted {
                    "Accepted"
                } else {
                    "NoMatchingParent"
                },
                message: String::new(),
            }],
        }
    }

    #[test]
    fn route_parents_of_other_controllers_are_kept_and_an_unchanged_status_is_not_written() {
        let other = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/gw",
                           "conditions": [{"type": "Accepted", "status": "True"}]});
        let route = json!({"metadata": {"generation": 4}, "status": {"parents": [other]}});
        let body = route_patch(&route, &[parent("wp", true)]).expect("ours is missing");
        let parents = body["status"]["parents"].as_array().unwrap();
        assert_eq!(parents[0], other, "another controller's entry, as read");
        assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);
        assert_eq!(parents[1]["parentRef"], json!({"name": "wp"}));
        assert_eq!(parents[1]["conditions"][0]["observedGeneration"], 4);

        let written = json!({"metadata": {"generation": 4}, "status": body["status"]});
        assert_eq!(route_patch(&written, &[parent("wp", true)]), None);
        // A parent turning False, or gone from the spec, is a change.
        assert!(route_patch(&written, &[parent("wp", false)]).is_some());
        let gone = route_patch(&written, &[]).expect("our stale entry removed");
        assert_eq!(gone["status"]["parents"], json!([other]));
    }

    #[test]
    fn a_class_is_accepted_once() {
        let class = json!({"metadata": {"generation": 1}});
        let body = class_patch(&class).unwrap();
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        let written = json!({"metadata": {"generation": 1}, "status": body["status"]});
        assert_eq!(class_patch(&written), None);
    }
}
