use super::*;
use outpost_protocol::{AgentVersion, RolloutId};

fn ids() -> (FleetId, DeviceId) {
    (
        FleetId::parse("acme").expect("fleet"),
        DeviceId::parse("kiosk-1").expect("device"),
    )
}

#[test]
fn status_and_tags_show_up_in_the_device_list() {
    let mut store = Store::open_in_memory().expect("store");
    let (fleet, device) = ids();
    let status = Status {
        presence: Presence::Online,
        agent_version: AgentVersion::parse("0.3.1").expect("v"),
        protocol_version: 2,
        at_unix_ms: 5,
    };
    store
        .record_status(&fleet, &device, &status, ProtocolVersion::V3, 42)
        .expect("status");
    store
        .set_tags(&fleet, &device, &["berlin".into(), "canary".into()], 43)
        .expect("tags");
    let list = store.devices().expect("devices");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].presence, "online");
    assert_eq!(list[0].tags, ["berlin", "canary"]);
    assert_eq!(list[0].protocol_version, Some(2));
    assert_eq!(store.online_count().expect("count"), 1);
    assert_eq!(
        store.devices_with_tag("canary").expect("tagged"),
        vec![device.clone()]
    );
    assert_eq!(store.device_protocol(&device).expect("proto"), Some(2));
}

#[test]
fn assignment_refuses_to_move_a_generation_backwards() {
    let mut store = Store::open_in_memory().expect("store");
    let (_, device) = ids();
    let state = |g| DesiredState {
        generation: Generation(g),
        rollout: Some(RolloutId::parse("r1").expect("id")),
        artifacts: outpost_protocol::ArtifactSet::new(),
        releases: Default::default(),
        rollback_floor: Default::default(),
        issued_at_unix_ms: 1,
    };
    let done = store
        .assign(
            std::slice::from_ref(&device),
            "device:kiosk-1",
            1,
            |_, _| Ok::<_, ()>(state(3)),
        )
        .expect("store")
        .expect("plan");
    assert_eq!(done[0].1.generation, Generation(3));
    assert!(matches!(
        store.assign(std::slice::from_ref(&device), "x", 2, |_, _| Ok::<_, ()>(
            state(3)
        )),
        Err(StoreError::StaleGeneration { .. })
    ));
    assert_eq!(
        store.desired(&device).expect("read").map(|s| s.generation),
        Some(Generation(3))
    );
}

#[tokio::test]
async fn the_handle_runs_jobs_on_the_store_thread() {
    let (handle, thread) =
        StoreHandle::spawn(Store::open_in_memory().expect("store")).expect("spawn");
    let n = handle.call(|s| s.online_count()).await.expect("count");
    assert_eq!(n, 0);
    drop(handle);
    thread
        .join()
        .expect("store thread ends when handles are dropped");
}
