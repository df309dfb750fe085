//! The fault suite of issue 11: a fleet of 20 linked sessions on two workers, the
//! simulator as WhatsApp, coordinators and workers as processes, and one fault at a time,
//! each on its own private instance of the service it breaks (a 3-node NATS cluster from
//! `scripts/nats-cluster.sh`, a private PostgreSQL, a private SeaweedFS S3):
//!
//! - one NATS node of three restarted (all three in turn, one at a time);
//! - all of NATS down 10 s;
//! - the only coordinator killed for 15 s;
//! - the leading coordinator killed with a standby running;
//! - S3 down 30 s while a worker is killed (a failover during the outage);
//! - PostgreSQL down 30 s;
//! - one worker cut off from NATS alone (it knows only node 3; node 3 stopped).
//!
//! After each: every session WORKING, 0 QR, 0 `replaced`, at most one socket per device at
//! every instant (the simulator's counter), bus commands answered; and the must-shows of
//! that fault. A test does not stop at the first broken must-show: it prints the measured
//! timeline and a table per session, then fails with every `MUST-SHOW broken: …` line.
//!
//! `WAFLEET_FAULT_SESSIONS=N` runs with N sessions instead of 20 (a quick harness check);
//! `WAFLEET_FAULT_LOGS=1` prints the processes' logs even when a test passes.

mod fleet_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use fleet_support::watch::{Lease, RegistryWatch, SocketWatch, Timeline};
use fleet_support::{eventually, Fleet, FleetSetup, HEARTBEAT_MS, MASTER_KEY, MISSED_HEARTBEATS};
use wafleet_bus_schema::codec::{decode_reply, ContentType};
use wafleet_bus_schema::v1::{self, session_event::Payload, ErrorCode, ReasonCode, SessionStatus};
use wafleet_bus_schema::{CommandVerb, CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON};

/// The coordinator counts a worker dead after this much silence (300 ms × 8).
const DEAD_AFTER: Duration = Duration::from_millis(HEARTBEAT_MS * MISSED_HEARTBEATS as u64);
/// "All WORKING within 3 s of recovery".
const BACK_WITHIN: Duration = Duration::from_secs(3);
/// How long a test waits for every session to be WORKING after a fault before it says
/// which are not.
const SETTLE: Duration = Duration::from_secs(25);
const WORKER_A: &str = "w-a";
const WORKER_B: &str = "w-b";

fn session_count() -> usize {
    std::env::var("WAFLEET_FAULT_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20)
}

/// Runs a blocking call (a script that stops or starts a service) without stalling the
/// runtime's other tasks (the simulator, the watchers, the event reader).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

static COMMAND_IDS: AtomicU64 = AtomicU64::new(0);

/// One command with a fresh id and a 5 s timeout: the reply, or why there was none.
async fn try_command(
    fleet: &Fleet,
    session: &str,
    verb: CommandVerb,
) -> Result<v1::CommandReply, String> {
    let subject = Fleet::address(session).command_subject(verb).to_string();
    let id = format!(
        "fault-{}-{}",
        std::process::id(),
        COMMAND_IDS.fetch_add(1, Ordering::Relaxed)
    );
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE_JSON);
    let request = async_nats::Request::new()
        .payload(format!(r#"{{"commandId":"{id}"}}"#).into_bytes().into())
        .headers(headers)
        .timeout(Some(Duration::from_secs(5)));
    let reply = fleet
        .backend
        .send_request(subject, request)
        .await
        .map_err(|e| format!("no reply: {e}"))?;
    let ct = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(CONTENT_TYPE_HEADER))
        .map(|v| v.as_str().to_string());
    let ct = ContentType::from_header(ct.as_deref()).map_err(|e| e.to_string())?;
    decode_reply(&reply.payload, Some(ct.header_value())).map_err(|e| e.to_string())
}

fn error_code(reply: &v1::CommandReply) -> Option<ErrorCode> {
    reply
        .error()
        .map(|e| ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified))
}

/// The registry's rows of the test's tenant, or empty when the database does not answer.
async fn registry(fleet: &Fleet) -> HashMap<String, Lease> {
    let Ok((client, connection)) =
        tokio_postgres::connect(&fleet.pg_url, tokio_postgres::NoTls).await
    else {
        return HashMap::new();
    };
    let conn = tokio::spawn(connection);
    let rows = client
        .query(
            &format!(
                "SELECT session, epoch, worker_id, status FROM {}.sessions WHERE tenant = $1",
                fleet.schema
            ),
            &[&fleet_support::TENANT],
        )
        .await
        .unwrap_or_default();
    conn.abort();
    rows.into_iter()
        .map(|row| {
            (
                row.get::<_, String>(0),
                Lease {
                    epoch: row.get(1),
                    worker: row.get(2),
                    status: row.get(3),
                },
            )
        })
        .collect()
}

fn status_name(status: i32) -> String {
    SessionStatus::try_from(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| status.to_string())
}

/// A fleet of linked sessions, watched, with the state before the fault.
struct Scene {
    fleet: Fleet,
    sessions: Vec<String>,
    /// Session → device JID (the simulator's key).
    devices: HashMap<String, String>,
    before: HashMap<String, Lease>,
    logins_before: HashMap<String, u64>,
    sockets: SocketWatch,
    registry: RegistryWatch,
    timeline: Timeline,
    /// The fault's start (the timeline's zero).
    fault: SystemTime,
    broken: Vec<String>,
}

/// Where each worker connects: `None` is every NATS server of the fleet.
struct WorkerPlan {
    id: &'static str,
    nats: Option<Vec<String>>,
}

impl Scene {
    /// Starts the fleet, `coordinators` coordinators, the workers, and links
    /// `session_count()` sessions by QR.
    async fn new(
        title: &str,
        setup: FleetSetup,
        coordinators: usize,
        workers: &[WorkerPlan],
    ) -> Scene {
        let fleet = Fleet::start_with(FleetSetup {
            coordinators: 0,
            ..setup
        })
        .await;
        Scene::populate(fleet, title, coordinators, workers).await
    }

    /// Starts the coordinators and workers on a running fleet and links the sessions.
    async fn populate(
        mut fleet: Fleet,
        title: &str,
        coordinators: usize,
        workers: &[WorkerPlan],
    ) -> Scene {
        fleet.coordinator_extra = vec!["--pg-grace-ms".into(), "45000".into()];
        fleet.worker_extra = vec!["--blob-wait-ms".into(), "30000".into()];
        for _ in 0..coordinators {
            fleet.start_coordinator();
        }
        for plan in workers {
            let urls = plan.nats.clone().unwrap_or_else(|| fleet.nats_urls.clone());
            fleet
                .start_worker_on(plan.id, 20, MASTER_KEY, &urls, &[])
                .await;
        }
        // Every worker's heartbeat reached the leader (it is in the registry, live) before
        // the sessions are created, so the grants spread over both.
        let ids: Vec<&str> = workers.iter().map(|w| w.id).collect();
        eventually(
            Duration::from_secs(30),
            "every worker live in the registry",
            || {
                let fleet = &fleet;
                let ids = &ids;
                async move {
                    let (client, connection) =
                        tokio_postgres::connect(&fleet.pg_url, tokio_postgres::NoTls)
                            .await
                            .ok()?;
                    let conn = tokio::spawn(connection);
                    let rows = client
                        .query(
                            &format!(
                                "SELECT worker_id FROM {}.workers
                             WHERE last_heartbeat > now() - interval '1 second'",
                                fleet.schema
                            ),
                            &[],
                        )
                        .await
                        .ok();
                    conn.abort();
                    let live: Vec<String> = rows?.iter().map(|r| r.get(0)).collect();
                    ids.iter()
                        .all(|id| live.iter().any(|l| l == id))
                        .then_some(())
                }
            },
        )
        .await;
        let sessions: Vec<String> = (0..session_count()).map(|i| format!("f{i:02}")).collect();
        for s in &sessions {
            fleet.create_and_start(s).await;
        }
        let links = sessions.iter().enumerate().map(|(i, s)| {
            let phone = format!("1555300{i:04}");
            let fleet = &fleet;
            async move { fleet.link_by_qr(s, &phone).await }
        });
        futures_util::future::join_all(links).await;
        let devices: HashMap<String, String> = sessions
            .iter()
            .map(|s| {
                let jid = fleet
                    .events_of(s)
                    .iter()
                    .find_map(|e| match &e.event.payload {
                        Some(Payload::Ready(r)) => Some(r.jid.clone()),
                        _ => None,
                    })
                    .expect("a ready event after linking");
                (s.clone(), jid)
            })
            .collect();
        // The prekeys are uploaded (and the blob saved) after the login: let that settle,
        // so the fault hits a fleet at rest.
        eventually(
            Duration::from_secs(60),
            "every device uploaded prekeys",
            || {
                let counters = fleet.sim.counters();
                let all = devices
                    .values()
                    .all(|d| counters.prekey_uploads.get(d).copied().unwrap_or(0) >= 1);
                async move { all.then_some(()) }
            },
        )
        .await;
        let before = eventually(Duration::from_secs(30), "every row WORKING", || async {
            let rows = registry(&fleet).await;
            let all = sessions.iter().all(|s| {
                rows.get(s)
                    .is_some_and(|r| r.status == SessionStatus::Working as i32)
            });
            all.then_some(rows)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sockets = SocketWatch::start(&fleet.sim, Duration::from_millis(20));
        let registry_watch = RegistryWatch::start(
            &fleet.pg_url,
            &fleet.schema,
            fleet_support::TENANT,
            Duration::from_millis(100),
        );
        let mut per_worker: HashMap<String, usize> = HashMap::new();
        for lease in before.values() {
            *per_worker
                .entry(lease.worker.clone().unwrap_or_default())
                .or_default() += 1;
        }
        eprintln!(
            "{title}: {} sessions linked: {per_worker:?}",
            sessions.len()
        );
        let logins_before = fleet.sim.counters().logins;
        Scene {
            fleet,
            sessions,
            devices,
            before,
            logins_before,
            sockets,
            registry: registry_watch,
            timeline: Timeline::new(title),
            fault: SystemTime::now(),
            broken: Vec::new(),
        }
    }

    /// Marks the fault's start: the timeline's zero.
    fn fault_starts(&mut self, what: &str) {
        self.fault = SystemTime::now();
        self.timeline.zero = self.fault;
        self.timeline.at(self.fault, what);
    }

    fn must(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.broken
                .push(format!("MUST-SHOW broken: {}", what.into()));
        }
    }

    fn sessions_on(&self, worker: &str) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|s| self.before[*s].worker.as_deref() == Some(worker))
            .cloned()
            .collect()
    }

    /// The first WORKING event of `session` produced after `from`.
    fn working_after(&self, session: &str, from: SystemTime) -> Option<(SystemTime, u64, String)> {
        self.fleet
            .events_of(session)
            .into_iter()
            .filter(|e| e.wall >= from && e.status().map(|s| s.0) == Some(SessionStatus::Working))
            .min_by_key(|e| e.wall)
            .map(|e| (e.wall, e.event.epoch, e.event.worker_id.clone()))
    }

    /// Waits (up to [`SETTLE`]) until every session is WORKING: its row says WORKING on
    /// a worker, its newest status event says WORKING at the row's epoch (events published
    /// during an outage may reach the backend late), and its device has a live socket.
    async fn every_session_working(&mut self, label: &str) -> HashMap<String, Lease> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let rows = registry(&self.fleet).await;
            let live = self.fleet.sim.counters().live_sockets;
            let not_working: Vec<String> = self
                .sessions
                .iter()
                .filter(|s| {
                    let Some(row) = rows.get(*s) else {
                        return true;
                    };
                    let row_ok =
                        row.status == SessionStatus::Working as i32 && row.worker.is_some();
                    let event_ok = self.fleet.last_status(s).is_some_and(|e| {
                        e.event.epoch == row.epoch as u64
                            && e.status().map(|x| x.0) == Some(SessionStatus::Working)
                    });
                    let socket_ok = live.get(&self.devices[*s]).copied().unwrap_or(0) == 1;
                    !(row_ok && event_ok && socket_ok)
                })
                .map(|s| {
                    let row = rows
                        .get(s)
                        .map(|r| {
                            format!(
                                "row {} epoch {} on {:?}",
                                status_name(r.status),
                                r.epoch,
                                r.worker
                            )
                        })
                        .unwrap_or_else(|| "no row".into());
                    let last = self
                        .fleet
                        .last_status(s)
                        .and_then(|e| {
                            e.status().map(|(st, reason)| {
                                format!(
                                    "{}/{} at epoch {}",
                                    st.as_str_name(),
                                    reason.as_str_name(),
                                    e.event.epoch
                                )
                            })
                        })
                        .unwrap_or_default();
                    let sockets = live.get(&self.devices[s]).copied().unwrap_or(0);
                    format!("{s} ({row}, last event {last}, {sockets} live sockets)")
                })
                .collect();
            if not_working.is_empty() {
                self.timeline
                    .mark(&format!("{label}: every session WORKING"));
                return rows;
            }
            if tokio::time::Instant::now() > deadline {
                self.must(
                    false,
                    format!(
                        "every session WORKING after the fault: {} of {} are not, {:?} after {label}: {}",
                        not_working.len(),
                        self.sessions.len(),
                        SETTLE,
                        not_working.join(", ")
                    ),
                );
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// 0 QR after the fault, 0 `replaced`, at most one socket per device at every instant.
    /// A fault that must cost nothing: 0 sockets dropped, 0 epochs changed.
    fn untouched(&mut self, rows: &HashMap<String, Lease>, label: &str) {
        self.no_socket_dropped(label);
        self.no_epoch_changed(rows, label);
    }

    fn common_checks(&mut self) {
        let qr: Vec<String> = self
            .sessions
            .iter()
            .filter(|s| {
                self.fleet
                    .events_of(s)
                    .iter()
                    .any(|e| e.wall >= self.fault && e.kind() == "qr")
            })
            .cloned()
            .collect();
        self.must(
            qr.is_empty(),
            format!("0 QR after the fault: QR events from {qr:?}"),
        );
        let counters = self.fleet.sim.counters();
        self.must(
            counters.replaced_sent == 0,
            format!(
                "0 `replaced`: the simulator sent {} `replaced` stream errors",
                counters.replaced_sent
            ),
        );
        self.must(
            counters.max_live_sockets_per_device <= 1,
            format!(
                "at most one socket per device at every instant: a device had {} at once",
                counters.max_live_sockets_per_device
            ),
        );
    }

    /// Every session answers a `start` (idempotent) with no error, all within 15 s.
    async fn commands_work(&mut self) {
        let mut failed = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let sessions = self.sessions.clone();
        for (i, s) in sessions.iter().enumerate() {
            if failed.len() >= 3 && tokio::time::Instant::now() > deadline {
                failed.push(format!("{} more not tried", sessions.len() - i));
                break;
            }
            loop {
                match try_command(&self.fleet, s, CommandVerb::Start).await {
                    Ok(reply) if reply.error().is_none() => break,
                    other if tokio::time::Instant::now() > deadline => {
                        failed.push(format!("{s}: {other:?}"));
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        self.timeline.mark("bus commands checked");
        self.must(
            failed.is_empty(),
            format!(
                "bus commands working after the fault: {}",
                failed.join("; ")
            ),
        );
    }

    /// The socket of every device stayed up: no close, no new login after the fault.
    fn no_socket_dropped(&mut self, label: &str) {
        let logins = self.fleet.sim.counters().logins;
        let mut dropped = Vec::new();
        for s in &self.sessions {
            let device = &self.devices[s];
            let closes = self.sockets.closes_after(device, self.fault);
            let new_logins = logins.get(device).copied().unwrap_or(0)
                - self.logins_before.get(device).copied().unwrap_or(0);
            if closes > 0 || new_logins > 0 {
                dropped.push(format!("{s} ({closes} closes, {new_logins} logins)"));
            }
        }
        self.must(
            dropped.is_empty(),
            format!("{label}: 0 sockets dropped: {}", dropped.join(", ")),
        );
    }

    /// No epoch changed (`rows` read after the fault).
    fn no_epoch_changed(&mut self, rows: &HashMap<String, Lease>, label: &str) {
        let changed: Vec<String> = self
            .sessions
            .iter()
            .filter_map(|s| {
                let before = self.before[s].epoch;
                let after = rows.get(s).map(|r| r.epoch);
                (after != Some(before)).then(|| format!("{s} {before}→{after:?}"))
            })
            .collect();
        self.must(
            changed.is_empty(),
            format!("{label}: 0 epochs changed: {}", changed.join(", ")),
        );
    }

    /// No session is on another worker than before (`rows` read after the fault).
    fn no_session_moved(&mut self, rows: &HashMap<String, Lease>, label: &str) {
        let moved: Vec<String> = self
            .sessions
            .iter()
            .filter_map(|s| {
                let before = self.before[s].worker.clone();
                let after = rows.get(s).and_then(|r| r.worker.clone());
                (after != before).then(|| format!("{s} {before:?}→{after:?}"))
            })
            .collect();
        self.must(
            moved.is_empty(),
            format!(
                "{label}: no session moves to another worker: {}",
                moved.join(", ")
            ),
        );
    }

    /// Every device's socket closed within `bound` of the fault (its trust ended).
    fn sockets_closed_within(&mut self, bound: Duration, label: &str) {
        let limit = self.fault + bound;
        let mut late = Vec::new();
        for s in &self.sessions {
            let device = &self.devices[s];
            match self.sockets.first_close_after(device, self.fault) {
                Some(at) if at <= limit => {}
                Some(at) => late.push(format!("{s} closed at {} ms", self.timeline.ms(at))),
                None => late.push(format!("{s} never closed")),
            }
        }
        self.must(
            late.is_empty(),
            format!(
                "{label}: no socket outlives its trust (closed by {} ms): {}",
                bound.as_millis(),
                late.join(", ")
            ),
        );
    }

    /// Every session that lost its socket after the fault WORKING again (an event
    /// produced after the socket closed) by `recovered` + `within`; a session whose socket
    /// never closed stayed WORKING.
    fn working_within(&mut self, recovered: SystemTime, within: Duration, label: &str) {
        let limit = recovered + within;
        let mut late = Vec::new();
        for s in &self.sessions {
            let Some(closed) = self.sockets.first_close_after(&self.devices[s], self.fault) else {
                continue;
            };
            match self.working_after(s, closed) {
                Some((at, _, _)) if at <= limit => {}
                Some((at, _, _)) => {
                    late.push(format!("{s} at {} ms", self.timeline.ms(at)));
                }
                None => late.push(format!("{s} no WORKING event after its socket closed")),
            }
        }
        self.must(
            late.is_empty(),
            format!(
                "{label}: all WORKING within {} ms of recovery (by {} ms): {}",
                within.as_millis(),
                self.timeline.ms(limit),
                late.join(", ")
            ),
        );
    }

    /// The per-session table: worker and epoch before → after, socket closed/reopened,
    /// WORKING again, logins since the fault.
    fn table(&self, rows: &HashMap<String, Lease>) -> String {
        let logins = self.fleet.sim.counters().logins;
        let ms = |t: Option<SystemTime>| {
            t.map(|t| format!("{}", self.timeline.ms(t)))
                .unwrap_or_else(|| "-".into())
        };
        let mut out = String::from(
            "session  worker before→after  epoch before→after  socket closed  reopened  WORKING again  logins+  grants\n",
        );
        let mut closed_max: Option<SystemTime> = None;
        let mut working_max: Option<SystemTime> = None;
        for s in &self.sessions {
            let device = &self.devices[s];
            let before = &self.before[s];
            let after = rows.get(s);
            let closed = self.sockets.first_close_after(device, self.fault);
            let reopened = self.sockets.first_open_after(device, self.fault);
            let working = closed.and_then(|c| self.working_after(s, c)).map(|w| w.0);
            if closed.is_some() {
                closed_max = closed_max.max(closed);
            }
            if working.is_some() {
                working_max = working_max.max(working);
            }
            let new_logins = logins.get(device).copied().unwrap_or(0)
                - self.logins_before.get(device).copied().unwrap_or(0);
            let grants = self.registry.grants(s, self.fault, SystemTime::now()).len();
            out.push_str(&format!(
                "{s:<8} {:>6}→{:<12} {:>6}→{:<11} {:>13}  {:>8}  {:>13}  {:>7}  {grants:>6}\n",
                before.worker.clone().unwrap_or_default(),
                after.and_then(|a| a.worker.clone()).unwrap_or_default(),
                before.epoch,
                after.map(|a| a.epoch.to_string()).unwrap_or_default(),
                ms(closed),
                ms(reopened),
                ms(working),
                new_logins,
            ));
        }
        out.push_str(&format!(
            "last socket closed at {} ms; last session WORKING again at {} ms\n",
            ms(closed_max),
            ms(working_max)
        ));
        out
    }

    /// The checks every fault ends with (0 QR, 0 `replaced`, one socket per device, bus
    /// commands answered), then prints the timeline and the table, stops the fleet, and
    /// fails with every broken must-show.
    async fn finish(mut self) {
        self.common_checks();
        self.commands_work().await;
        // Every login after the fault, and every instant a device was seen with two live
        // sockets, go on the timeline.
        for s in &self.sessions {
            for at in self.sockets.logins_after(&self.devices[s], self.fault) {
                let worker = self
                    .working_after(s, at - Duration::from_millis(500))
                    .map(|w| w.2)
                    .unwrap_or_default();
                self.timeline.at(at, &format!("{s}: logged in ({worker})"));
            }
            for change in self.sockets.of(&self.devices[s]) {
                if change.value >= 2 {
                    self.timeline.at(
                        change.at,
                        &format!("{s}: {} live sockets at once", change.value),
                    );
                }
            }
        }
        let rows = registry(&self.fleet).await;
        let counters = self.fleet.sim.counters();
        let mut report = self.timeline.render();
        report.push_str(&self.table(&rows));
        report.push_str(&format!(
            "simulator: replaced_sent {}, max_live_sockets_per_device {}, logins {}\n",
            counters.replaced_sent,
            counters.max_live_sockets_per_device,
            counters.logins.values().sum::<u64>()
        ));
        eprintln!("{report}");
        if !self.broken.is_empty() || std::env::var_os("WAFLEET_FAULT_LOGS").is_some() {
            eprintln!("{}", self.fleet.logs());
        }
        let broken = self.broken;
        let title = self.timeline.title.clone();
        drop(self.sockets);
        drop(self.registry);
        self.fleet.finish().await;
        assert!(
            broken.is_empty(),
            "{title}:\n{}\n(timeline and table above)",
            broken.join("\n")
        );
    }
}

fn both_workers() -> [WorkerPlan; 2] {
    [
        WorkerPlan {
            id: WORKER_A,
            nats: None,
        },
        WorkerPlan {
            id: WORKER_B,
            nats: None,
        },
    ]
}

fn cluster() -> FleetSetup {
    FleetSetup {
        nats_cluster: true,
        ..FleetSetup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_one_nats_node_restarted_costs_no_socket_and_no_epoch() {
    let mut scene = Scene::new(
        "one NATS node of three restarted (each node in turn)",
        cluster(),
        1,
        &both_workers(),
    )
    .await;
    scene.fault_starts("rolling restart begins");
    for node in 1..=3 {
        let cluster = scene.fleet.cluster.as_ref().expect("cluster");
        scene
            .timeline
            .mark(&format!("node {node} stopping (SIGTERM)"));
        blocking(|| cluster.stop_node(node, false));
        scene.timeline.mark(&format!("node {node} stopped"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cluster = scene.fleet.cluster.as_ref().expect("cluster");
        blocking(|| cluster.start_node(node));
        scene
            .timeline
            .mark(&format!("node {node} accepts clients again"));
        // Routes and the stream's replica catch up before the next node goes.
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let rows = scene
        .every_session_working("after the rolling restart")
        .await;
    let label = "NATS node restart";
    scene.untouched(&rows, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_all_of_nats_down_10s_closes_sockets_in_trust_and_brings_them_back_in_place() {
    let mut scene = Scene::new("all of NATS down 10 s", cluster(), 1, &both_workers()).await;
    scene.fault_starts("all three NATS nodes killed (SIGKILL)");
    let cluster = scene.fleet.cluster.as_ref().expect("cluster");
    blocking(|| cluster.stop_all(true));
    scene.timeline.mark("all nodes gone");
    let fault = scene.fault;
    sleep_until(fault + Duration::from_secs(10)).await;
    scene.timeline.mark("starting the nodes again");
    let cluster = scene.fleet.cluster.as_ref().expect("cluster");
    blocking(|| cluster.start_all_nodes());
    let recovered = scene.timeline.mark("NATS back: every node accepts clients");
    let js = async_nats::jetstream::new(scene.fleet.backend.clone());
    let stream_back = eventually(Duration::from_secs(60), "the event stream answers", || {
        let js = js.clone();
        async move {
            match js.get_stream(wafleet_bus_schema::EVENT_STREAM).await {
                Ok(_) => Some(SystemTime::now()),
                Err(_) => None,
            }
        }
    })
    .await;
    scene
        .timeline
        .at(stream_back, "JetStream: the event stream answers again");
    let rows = scene.every_session_working("after NATS came back").await;
    let label = "all NATS down 10 s";
    scene.sockets_closed_within(DEAD_AFTER, label);
    scene.no_session_moved(&rows, label);
    scene.working_within(recovered, BACK_WITHIN, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_only_coordinator_down_15s_closes_sockets_in_trust_and_brings_them_back_in_place()
{
    let mut scene = Scene::new(
        "the only coordinator down 15 s",
        cluster(),
        1,
        &both_workers(),
    )
    .await;
    scene.fault_starts("coordinator killed (SIGKILL)");
    scene.fleet.coordinators[0].signal("KILL");
    let _ = blocking(|| scene.fleet.coordinators[0].wait_exit(Duration::from_secs(5)));
    let fault = scene.fault;
    sleep_until(fault + Duration::from_secs(15)).await;
    scene.fleet.start_coordinator();
    let recovered = scene.timeline.mark("coordinator started again");
    let leading = eventually(Duration::from_secs(20), "the coordinator leads", || {
        let leads = scene.fleet.coordinators[1]
            .log_text()
            .contains("leading: serving commands");
        async move { leads.then(SystemTime::now) }
    })
    .await;
    scene
        .timeline
        .at(leading, "coordinator leads (seen in its log)");
    let rows = scene
        .every_session_working("after the coordinator came back")
        .await;
    let label = "only coordinator down 15 s";
    scene.sockets_closed_within(DEAD_AFTER, label);
    scene.no_session_moved(&rows, label);
    scene.working_within(recovered, BACK_WITHIN, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_the_leader_killed_with_a_standby_costs_no_socket_and_no_epoch() {
    let mut scene = Scene::new(
        "the leading coordinator killed, a standby running",
        cluster(),
        2,
        &both_workers(),
    )
    .await;
    let leader = eventually(Duration::from_secs(10), "a leader", || {
        let found = scene
            .fleet
            .coordinators
            .iter()
            .position(|c| c.log_text().contains("leading: serving commands"));
        async move { found }
    })
    .await;
    scene.fault_starts(&format!("leader coordinator-{leader} killed (SIGKILL)"));
    scene.fleet.coordinators[leader].signal("KILL");
    let _ = blocking(|| scene.fleet.coordinators[leader].wait_exit(Duration::from_secs(5)));
    let other = 1 - leader;
    let took_over = eventually(Duration::from_secs(20), "the standby leads", || {
        let leads = scene.fleet.coordinators[other]
            .log_text()
            .contains("leading: serving commands");
        async move { leads.then(SystemTime::now) }
    })
    .await;
    scene
        .timeline
        .at(took_over, &format!("coordinator-{other} leads"));
    // Past the lease TTL (6 s) and the dead-after window: the new leader renews, moves
    // nothing.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rows = scene.every_session_working("after the takeover").await;
    let label = "leader killed with a standby";
    scene.untouched(&rows, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_s3_down_30s_during_a_failover_backs_off_and_recovers() {
    let mut scene = Scene::new(
        "S3 down 30 s during a failover (worker w-a killed)",
        FleetSetup {
            private_s3: true,
            ..cluster()
        },
        1,
        &both_workers(),
    )
    .await;
    let moved = scene.sessions_on(WORKER_A);
    scene.must(
        !moved.is_empty(),
        "setup: w-a holds sessions before the fault",
    );
    scene.fault_starts("S3 killed (SIGKILL)");
    let s3 = scene.fleet.private_s3.as_ref().expect("private S3");
    blocking(|| s3.stop());
    scene.timeline.mark("S3 gone");
    scene.timeline.mark("worker w-a killed (SIGKILL)");
    blocking(|| scene.fleet.kill_worker(WORKER_A));
    let fault = scene.fault;
    sleep_until(fault + Duration::from_secs(30)).await;
    let outage_end = scene.timeline.mark("starting S3 again");
    let s3 = scene.fleet.private_s3.as_ref().expect("private S3");
    blocking(|| s3.start_again());
    scene.timeline.mark("S3 port answers");
    // S3 is back when it serves a session's blob again (SeaweedFS answers 500 for a few
    // seconds after a restart).
    let probe = scene.sessions[0].clone();
    let store = scene.fleet.blob_store();
    let recovered = eventually(Duration::from_secs(60), "S3 serves reads", || {
        let store = &store;
        let probe = &probe;
        async move {
            use wafleet_blob::BlobStore;
            match store.load(&Fleet::blob_id(probe)).await {
                Ok(Some(_)) => Some(SystemTime::now()),
                _ => None,
            }
        }
    })
    .await;
    scene
        .timeline
        .at(recovered, "S3 serves reads (a blob loads)");
    let rows = scene.every_session_working("after S3 came back").await;
    let label = "S3 down 30 s";
    // ≤ 1 grant per session per 5 s during the outage.
    let mut too_fast = Vec::new();
    for s in &scene.sessions {
        let grants = scene.registry.grants(s, fault, outage_end);
        for pair in grants.windows(2) {
            let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
            if gap < Duration::from_secs(5) {
                too_fast.push(format!(
                    "{s} granted at {} ms and {} ms",
                    scene.timeline.ms(pair[0]),
                    scene.timeline.ms(pair[1])
                ));
            }
        }
        if !grants.is_empty() {
            let times: Vec<String> = grants
                .iter()
                .map(|g| format!("{}", scene.timeline.ms(*g)))
                .collect();
            scene.timeline.at(
                grants[0],
                &format!("{s} grants during the outage at {times:?} ms"),
            );
        }
    }
    scene.must(
        too_fast.is_empty(),
        format!(
            "{label}: <= 1 grant per session per 5 s during the outage: {}",
            too_fast.join(", ")
        ),
    );
    // Deliver 3: the reason says what is down.
    let told: Vec<String> = moved
        .iter()
        .filter(|s| {
            scene.fleet.events_of(s).iter().any(|e| {
                e.wall >= fault && e.status().map(|x| x.1) == Some(ReasonCode::BlobStoreUnavailable)
            })
        })
        .cloned()
        .collect();
    scene.must(
        told.len() == moved.len(),
        format!(
            "{label}: the moved sessions report BLOB_STORE_UNAVAILABLE during the outage: {} of {} did",
            told.len(),
            moved.len()
        ),
    );
    let moved_to_b: Vec<String> = moved
        .iter()
        .filter(|s| rows.get(*s).and_then(|r| r.worker.as_deref()) != Some(WORKER_B))
        .cloned()
        .collect();
    scene.must(
        moved_to_b.is_empty(),
        format!("{label}: w-a's sessions are on w-b: not {moved_to_b:?}"),
    );
    scene.working_within(recovered, BACK_WITHIN, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_postgres_down_30s_keeps_sessions_running_and_commands_say_unavailable() {
    let mut scene = Scene::new(
        "PostgreSQL down 30 s",
        FleetSetup {
            private_pg: true,
            ..cluster()
        },
        1,
        &both_workers(),
    )
    .await;
    scene.fault_starts("PostgreSQL stopped (pg_ctl -m fast)");
    let pg = scene.fleet.private_pg.as_ref().expect("private PG");
    blocking(|| pg.stop(false));
    scene.timeline.mark("PostgreSQL gone");
    // During the outage: a command is answered, with the typed UNAVAILABLE.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probe = scene.sessions[0].clone();
    let during = try_command(&scene.fleet, &probe, CommandVerb::Start).await;
    scene.timeline.mark(&format!(
        "a command during the outage: {}",
        match &during {
            Ok(reply) => format!("{:?}", error_code(reply)),
            Err(e) => e.clone(),
        }
    ));
    let unavailable = matches!(&during, Ok(r) if error_code(r) == Some(ErrorCode::Unavailable));
    scene.must(
        unavailable,
        format!("PG down: commands answered UNAVAILABLE during the outage: got {during:?}"),
    );
    let fault = scene.fault;
    sleep_until(fault + Duration::from_secs(30)).await;
    let pg = scene.fleet.private_pg.as_ref().expect("private PG");
    blocking(|| pg.start_again());
    scene.timeline.mark("PostgreSQL accepts connections again");
    let rows = scene
        .every_session_working("after PostgreSQL came back")
        .await;
    let label = "PG down 30 s";
    scene.untouched(&rows, label);
    scene.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_a_worker_cut_off_from_nats_alone_its_sessions_move_never_two_sockets() {
    // w-b knows only node 3, the others only nodes 1 and 2, and the nodes do not tell
    // clients about each other: stopping node 3 cuts w-b off alone.
    let setup = FleetSetup {
        nats_cluster: true,
        nats_no_advertise: true,
        ..FleetSetup::default()
    };
    let mut scene = Scene::new_partitioned(setup).await;
    let cut_off = scene.sessions_on(WORKER_B);
    scene.must(
        !cut_off.is_empty(),
        "setup: w-b holds sessions before the partition",
    );
    scene.fault_starts("node 3 killed: w-b cut off from NATS");
    let cluster = scene.fleet.cluster.as_ref().expect("cluster");
    blocking(|| cluster.stop_node(3, true));
    // Its sessions move to w-a.
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let rows = registry(&scene.fleet).await;
        let all_on_a = cut_off.iter().all(|s| {
            rows.get(s).is_some_and(|r| {
                r.worker.as_deref() == Some(WORKER_A) && r.status == SessionStatus::Working as i32
            })
        });
        if all_on_a {
            scene
                .timeline
                .mark("every cut-off session WORKING on w-a (registry)");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let stuck: Vec<String> = cut_off
                .iter()
                .filter(|s| rows.get(*s).and_then(|r| r.worker.as_deref()) != Some(WORKER_A))
                .cloned()
                .collect();
            scene.must(
                false,
                format!("partition: its sessions move: not on w-a after {SETTLE:?}: {stuck:?}"),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The partition heals: w-b comes back and must not take a socket it no longer holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cluster = scene.fleet.cluster.as_ref().expect("cluster");
    blocking(|| cluster.start_node(3));
    scene.timeline.mark("node 3 back: w-b reconnects");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rows = scene
        .every_session_working("after the partition healed")
        .await;
    let label = "partition";
    let still_on_b: Vec<String> = cut_off
        .iter()
        .filter(|s| rows.get(*s).and_then(|r| r.worker.as_deref()) == Some(WORKER_B))
        .cloned()
        .collect();
    scene.must(
        still_on_b.is_empty(),
        format!("{label}: its sessions move (to w-a): still on w-b: {still_on_b:?}"),
    );
    for s in &cut_off {
        let device = scene.devices[s].clone();
        if let Some(closed) = scene.sockets.first_close_after(&device, scene.fault) {
            scene
                .timeline
                .at(closed, &format!("{s}: w-b's socket closed"));
        }
        if let Some(open) = scene.sockets.first_open_after(&device, scene.fault) {
            scene.timeline.at(open, &format!("{s}: socket open again"));
        }
    }
    scene.finish().await;
}

impl Scene {
    /// The partition scene: coordinator and w-a on nodes 1 and 2, w-b on node 3 only.
    async fn new_partitioned(setup: FleetSetup) -> Scene {
        // The cluster's URLs are known once it runs: start the fleet without workers or
        // coordinators, then place them.
        let mut fleet = Fleet::start_with(FleetSetup {
            coordinators: 0,
            ..setup
        })
        .await;
        let urls = fleet.nats_urls.clone();
        let majority = vec![urls[0].clone(), urls[1].clone()];
        fleet.coordinator_urls = majority.clone();
        fleet.worker_urls = majority.clone();
        Scene::populate(
            fleet,
            "one worker cut off from NATS alone (partition)",
            1,
            &[
                WorkerPlan {
                    id: WORKER_A,
                    nats: Some(majority),
                },
                WorkerPlan {
                    id: WORKER_B,
                    nats: Some(vec![urls[2].clone()]),
                },
            ],
        )
        .await
    }
}

async fn sleep_until(at: SystemTime) {
    if let Ok(left) = at.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}
