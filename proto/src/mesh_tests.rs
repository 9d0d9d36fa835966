use super::*;

fn workload(name: &str, ip: &str, sa: &str, f: impl FnOnce(&mut api::Workload)) -> api::Resource {
    let mut w = api::Workload {
        uid: name.into(),
        name: name.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
        addresses: vec![ip.into()],
        ..Default::default()
    };
    f(&mut w);
    api::Resource {
        name: name.into(),
        kind: Some(Kind::Workload(w)),
        ..Default::default()
    }
}

fn service(name: &str, waypoint: Option<&str>) -> api::Resource {
    let s = api::Service {
        name: name.into(),
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
        ports: vec![api::Port {
            service_port: if waypoint.is_some() { 80 } else { 15008 },
            target_port: 0,
        }],
        waypoint: waypoint.map(|wp| api::GatewayAddress {
            destination: Some(api::gateway_address::Destination::Hostname(
                api::NamespacedHostname {
                    namespace: "shop".into(),
                    hostname: format!("{wp}.shop.svc.cluster.local"),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    };
    api::Resource {
        name: format!("shop/{}", s.hostname),
        kind: Some(Kind::Service(s)),
        ..Default::default()
    }
}

fn backs(w: &mut api::Workload, service: &str) {
    w.services.insert(
        format!("shop/{service}.shop.svc.cluster.local"),
        api::PortList::default(),
    );
}

fn attrs(identity: Option<&Identity>) -> authz::Attributes<'_> {
    authz::Attributes {
        source_identity: identity,
        source_ip: "10.0.0.9".parse().unwrap(),
        destination_ip: "10.0.0.2".parse().unwrap(),
        destination_port: 8080,
        http: None,
    }
}

#[test]
fn a_waypoint_only_workload_accepts_only_its_waypoints() {
    let store = Store::new("cluster.local");
    let waypoint = |w: &mut api::Workload| {
        w.waypoint_for = "service".into();
        backs(w, "wp");
    };
    store
        .apply(
            type_url::SERVICE,
            vec![service("reviews", Some("wp")), service("wp", None)],
            vec![],
        )
        .unwrap();
    store
        .apply(
            type_url::WORKLOAD,
            vec![
                workload("wp-pod", "10.0.0.1", "wp", waypoint),
                workload("reviews", "10.0.0.2", "reviews", |w| {
                    backs(w, "reviews");
                    w.waypoint_only = true;
                }),
                workload("open", "10.0.0.3", "open", |w| backs(w, "reviews")),
            ],
            vec![],
        )
        .unwrap();
    let state = store.current();
    let reviews = state.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap();
    let open = state.workload_by_ip("10.0.0.3".parse().unwrap()).unwrap();
    let wp = Identity::new("cluster.local", "shop", "wp").unwrap();
    let client = Identity::new("cluster.local", "shop", "client").unwrap();

    assert!(state.authorize(reviews, &attrs(Some(&wp))).allowed());
    let bypass = state.authorize(reviews, &attrs(Some(&client)));
    assert_eq!(
        bypass,
        authz::Decision::DenyBypass {
            waypoints: vec!["wp.shop.svc.cluster.local".into()]
        }
    );
    assert!(bypass.explain().contains("only through its waypoint"));
    // Plaintext cannot be a waypoint.
    assert!(!state.authorize(reviews, &attrs(None)).allowed());
    // Without the opt-in, anyone may (subject to policy).
    assert!(state.authorize(open, &attrs(Some(&client))).allowed());

    // No waypoint pod running: nobody gets in (fail closed).
    store
        .apply(type_url::WORKLOAD, vec![], vec!["wp-pod".into()])
        .unwrap();
    let state = store.current();
    let reviews = state.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap();
    assert!(!state.authorize(reviews, &attrs(Some(&wp))).allowed());
}
