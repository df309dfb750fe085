//! Leader election on a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{eventually, pg_url, TestSchema};
use wafleet_auth_coordinator::leadership::Role;
use wafleet_auth_coordinator::Leadership;

const RETRY: Duration = Duration::from_millis(200);
/// How long a takeover may take: a few retry intervals plus reconnects; generous so a busy
/// machine does not fail the test.
const TAKEOVER: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_of_two_leads_and_the_other_takes_over_when_the_leader_dies() {
    let Some(url) = pg_url() else { return };
    let schema = TestSchema::create(&url).await;
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
