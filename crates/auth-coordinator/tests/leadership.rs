//! Leader election on a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{eventually, pg_url, TestSchema};
use std::time::SystemTime;

use wafleet_auth_coordinator::leadership::{LeadershipConfig, Role};
use wafleet_auth_coordinator::Leadership;

const RETRY: Duration = Duration::from_millis(200);
/// How long a takeover may take: a few retry intervals plus reconnects; generous so a busy
/// machine does not fail the test.
const TAKEOVER: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_of_two_leads_and_the_other_takes_over_when_the_leader_dies() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    // The registry's migrations create the leader row.
    let _registry = schema.registry().await;
    let config = schema.config().pg_config().expect("config");
    let a = Leadership::start(config.clone(), RETRY);
    let b = Leadership::start(config.clone(), RETRY);

    let leader_pid = eventually(TAKEOVER, "a leader", || async {
        match (a.role(), b.role()) {
            (Role::Leader { backend_pid }, Role::Follower)
            | (Role::Follower, Role::Leader { backend_pid }) => Some(backend_pid),
            _ => None,
        }
    })
    .await;
    // Still exactly one after several retry rounds.
    tokio::time::sleep(RETRY * 5).await;
    assert_eq!(
        [a.role(), b.role()]
            .iter()
            .filter(|r| r.is_leader())
            .count(),
        1
    );
    let a_led = a.role().is_leader();

    // Kill the leader's database connection, as a crash or a network cut would.
    let admin = common::admin(&url).await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&leader_pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);

    let new_pid = eventually(TAKEOVER, "the follower to take over", || async {
        let (old, new) = if a_led { (&a, &b) } else { (&b, &a) };
        match (old.role(), new.role()) {
            (Role::Follower, Role::Leader { backend_pid }) => Some(backend_pid),
            _ => None,
        }
    })
    .await;
    assert_ne!(new_pid, leader_pid);

    // A clean stop hands leadership back: the other one leads again.
    let (stopping, staying) = if a_led { (b, a) } else { (a, b) };
    stopping.stop().await.expect("stop");
    eventually(TAKEOVER, "the remaining one to lead", || async {
        staying.role().is_leader().then_some(())
    })
    .await;
    staying.stop().await.expect("stop");
    schema.drop_schema().await;
}

fn config(retry: Duration, pg_grace: Duration, dead_after: Duration, id: &str) -> LeadershipConfig {
    LeadershipConfig {
        retry,
        pg_grace,
        dead_after,
        id: id.to_string(),
    }
}

async fn leader_row(url: &str, schema: &str) -> (Option<String>, Option<SystemTime>) {
    let row = common::admin(url)
        .await
        .query_one(
            &format!("SELECT holder, confirmed_at FROM {schema}.coordinator_leader WHERE id = 1"),
            &[],
        )
        .await
        .expect("leader row");
    (row.get(0), row.get(1))
}

/// The leader horizon: the leader confirms the row every interval; a coordinator taking
/// over from a holder that did not step down cleanly may not end silent leases before
/// `confirmed_at + pg_grace + dead_after + 1 s`; after a clean step-down, no horizon.
#[tokio::test]
async fn a_new_leader_inherits_the_horizon_of_one_that_did_not_step_down() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
    let _registry = schema.registry().await;
    let pg = schema.config().pg_config().expect("config");
    let (grace, dead_after) = (Duration::from_secs(5), Duration::from_secs(2));

    let mut a = Leadership::start_with(pg.clone(), config(RETRY, grace, dead_after, "coord-a"));
    a.until_leader().await;
    assert_eq!(
        a.state().horizon,
        None,
        "a fresh schema has no previous leader"
    );
    assert_eq!(a.state().term, 1);
    // Confirmed every interval.
    let (holder, first) = leader_row(&url, &schema.name).await;
    assert_eq!(holder.as_deref(), Some("coord-a"));
    tokio::time::sleep(RETRY * 4).await;
    let (_, later) = leader_row(&url, &schema.name).await;
    assert!(later > first, "{later:?} after {first:?}");

    // a dies without a word (its connection is cut); b takes over with a horizon.
    let pid = match a.role() {
        Role::Leader { backend_pid } => backend_pid,
        Role::Follower => panic!("a leads"),
    };
    drop(a);
    let admin = common::admin(&url).await;
    let _ = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await;
    let (_, confirmed) = leader_row(&url, &schema.name).await;
    let confirmed = confirmed.expect("confirmed_at");
    let mut b = Leadership::start_with(pg.clone(), config(RETRY, grace, dead_after, "coord-b"));
    tokio::time::timeout(TAKEOVER, b.until_leader())
        .await
        .expect("b leads");
    let horizon = b.state().horizon.expect("a horizon after an unclean end");
    let expected = confirmed + grace + dead_after + Duration::from_secs(1);
    let gap = horizon
        .duration_since(expected)
        .unwrap_or_else(|e| e.duration());
    assert!(
        gap < Duration::from_millis(50),
        "{horizon:?} vs {expected:?}"
    );

    // A clean step-down clears the holder: the next leader has no horizon.
    b.stop().await.expect("stop");
    assert_eq!(leader_row(&url, &schema.name).await.0, None);
    let mut c = Leadership::start_with(pg, config(RETRY, grace, dead_after, "coord-c"));
    tokio::time::timeout(TAKEOVER, c.until_leader())
        .await
        .expect("c leads");
    assert_eq!(c.state().horizon, None);
    c.stop().await.expect("stop");
    schema.drop_schema().await;
}
