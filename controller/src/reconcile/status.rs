//! The Gateway's `status` as the reconciler reports it: `Accepted` (the Gateway is ours and
//! valid), `Programmed` (its Deployment has a replica available), and the Service's hostname as
//! its address. Pure: the caller reads the Gateway and writes the patch.
//!
//! A condition's `lastTransitionTime` moves only when its status does, and an unchanged status
//! is not written at all, so reconciling again is silent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::objects::GATEWAY_API_VERSION;

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

/// The body of a server-side apply of `status` to `gateway` (the object as read), or `None` if
/// it already says all this.
pub fn patch(gateway: &Value, conditions: &[Condition], hostname: Option<&str>) -> Option<Value> {
    let generation = gateway["metadata"]["generation"].as_i64().unwrap_or(0);
    let current = gateway["status"]["conditions"].as_array();
    let find = |type_: &str| current?.iter().find(|c| c["type"] == type_);
    let addresses: Vec<Value> = hostname
        .map(|h| json!({"type": "Hostname", "value": h}))
        .into_iter()
        .collect();
    let mut unchanged = gateway["status"]["addresses"].as_array().map(Vec::as_slice)
        == Some(addresses.as_slice())
        || (addresses.is_empty() && gateway["status"]["addresses"].is_null());
    let now = serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null);
    let conditions: Vec<Value> = conditions
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
    if unchanged {
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
}
