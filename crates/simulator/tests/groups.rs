//! Groups created and changed through the simulator's API and its HTTP control API.

mod support;

use serde_json::json;
use support::http;
use wafleet_sim::{GroupAction, GroupRank, SimConfig, SimError, Simulator, GROUP_ID_PREFIX};

const A: &str = "15550000001";
const B: &str = "15550000002";
const C: &str = "15550000003";

#[tokio::test]
async fn groups_over_the_api_and_http() {
    let sim = Simulator::start(SimConfig {
        control_bind: Some("127.0.0.1:0".parse().expect("address")),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    for phone in [A, B, C] {
        sim.add_phone(phone).expect("phone");
    }

    // Rust API.
    let group = sim.create_group(A, "Team", &[B]).expect("group created");
    assert!(group.jid.user.starts_with(GROUP_ID_PREFIX), "{group:?}");
    assert_eq!(group.owner.to_string(), format!("{A}@s.whatsapp.net"));
    let ranks: Vec<(String, GroupRank)> = group
        .participants
        .iter()
        .map(|p| (p.jid.user.clone(), p.rank))
        .collect();
    assert_eq!(
        ranks,
        vec![
            (A.to_owned(), GroupRank::SuperAdmin),
            (B.to_owned(), GroupRank::Member)
        ]
    );
    let outcomes = sim
        .update_group(&group.jid, GroupAction::Add, &[C, B, "15559999999"])
        .expect("add");
    let statuses: Vec<u16> = outcomes.iter().map(|o| o.status).collect();
    assert_eq!(statuses, vec![200, 409, 404]);
    assert_eq!(sim.group(&group.jid).expect("group").participants.len(), 3);
    assert!(matches!(
        sim.create_group(A, "", &[B]),
        Err(SimError::BadGroupRequest(_))
    ));
    assert!(matches!(
        sim.create_group(A, "x", &["15559999999"]),
        Err(SimError::UnknownPhone(_))
    ));

    // HTTP.
    let base = sim.control_url().expect("control API runs");
    let (status, created) = http(
        &base,
        "POST",
        "/groups",
        Some(&json!({"creator": B, "subject": "Over HTTP", "participants": [A], "addressing_mode": "lid"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let jid = created["jid"].as_str().expect("jid").to_owned();
    assert!(jid.ends_with("@g.us"));
    assert_eq!(
        created["participants"][1]["rank"], "superadmin",
        "{created}"
    );
    let (status, removed) = http(
        &base,
        "POST",
        &format!("/groups/{jid}/participants"),
        Some(&json!({"action": "remove", "participants": [A]})),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["participants"][0]["status"], 200, "{removed}");
    let (status, fetched) = http(&base, "GET", &format!("/groups/{jid}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["participants"].as_array().map(Vec::len), Some(1));
    let (status, error) = http(&base, "GET", "/groups/120363000000000000@g.us", None).await;
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "unknown_group");
    let (status, error) = http(
        &base,
        "POST",
        &format!("/groups/{jid}/participants"),
        Some(&json!({"action": "kick", "participants": [A]})),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let counters = sim.counters();
    assert_eq!(counters.groups.created, 2);
    sim.shutdown().await;
}
