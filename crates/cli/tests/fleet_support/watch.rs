//! Watchers for the fault tests: the simulator's live sockets per device and the registry's
//! (epoch, worker, status) per session, sampled in the background with wall-clock times, so
//! a test can say when each socket closed and reopened and when each lease was granted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use wafleet_sim::Simulator;

/// A change one of the watchers saw.
#[derive(Debug, Clone)]
pub struct Change<T> {
    pub at: SystemTime,
    pub key: String,
    pub value: T,
}

/// The simulator's live logged-in sockets per device, sampled every `every`, and its
/// login count per device (a login between two samples still shows as a new count).
pub struct SocketWatch {
    pub changes: Arc<Mutex<Vec<Change<usize>>>>,
    pub logins: Arc<Mutex<Vec<Change<u64>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SocketWatch {
    pub fn start(sim: &Simulator, every: Duration) -> SocketWatch {
        let changes: Arc<Mutex<Vec<Change<usize>>>> = Arc::default();
        let logins: Arc<Mutex<Vec<Change<u64>>>> = Arc::default();
        let sink = Arc::clone(&changes);
        let login_sink = Arc::clone(&logins);
        let sim = sim.clone();
        let task = tokio::spawn(async move {
            let mut last: HashMap<String, usize> = HashMap::new();
            let mut last_logins: HashMap<String, u64> = sim.counters().logins;
            loop {
                let now = SystemTime::now();
                let counters = sim.counters();
                let mut current: HashMap<String, usize> =
                    last.keys().map(|d| (d.clone(), 0)).collect();
                current.extend(counters.live_sockets);
                {
                    let mut out = login_sink.lock().expect("login changes");
                    for (device, n) in &counters.logins {
                        if last_logins.get(device) != Some(n) {
                            out.push(Change {
                                at: now,
                                key: device.clone(),
                                value: *n,
                            });
                        }
                    }
                }
                last_logins = counters.logins;
                {
                    let mut out = sink.lock().expect("socket changes");
                    for (device, n) in &current {
                        if last.get(device) != Some(n) {
                            out.push(Change {
                                at: now,
                                key: device.clone(),
                                value: *n,
                            });
                        }
                    }
                }
                last = current;
                tokio::time::sleep(every).await;
            }
        });
        SocketWatch {
            changes,
            logins,
            task,
        }
    }

    /// Changes of one device, in order.
    pub fn of(&self, device: &str) -> Vec<Change<usize>> {
        self.changes
            .lock()
            .expect("socket changes")
            .iter()
            .filter(|c| c.key == device)
            .cloned()
            .collect()
    }

    /// When the device logged in after `from` (to the sampling interval).
    pub fn logins_after(&self, device: &str, from: SystemTime) -> Vec<SystemTime> {
        self.logins
            .lock()
            .expect("login changes")
            .iter()
            .filter(|c| c.key == device && c.at >= from)
            .map(|c| c.at)
            .collect()
    }

    /// The first time after `from` the device had no live socket.
    pub fn first_close_after(&self, device: &str, from: SystemTime) -> Option<SystemTime> {
        self.of(device)
            .into_iter()
            .find(|c| c.at >= from && c.value == 0)
            .map(|c| c.at)
    }

    /// The first time after `from` the device had a live socket again, after a close.
    pub fn first_open_after(&self, device: &str, from: SystemTime) -> Option<SystemTime> {
        let changes = self.of(device);
        let closed = changes.iter().position(|c| c.at >= from && c.value == 0)?;
        changes[closed..].iter().find(|c| c.value > 0).map(|c| c.at)
    }

    /// How many times after `from` the device's socket count fell to 0.
    pub fn closes_after(&self, device: &str, from: SystemTime) -> usize {
        self.of(device)
            .iter()
            .filter(|c| c.at >= from && c.value == 0)
            .count()
    }
}

impl Drop for SocketWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A session's registry row as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub epoch: i64,
    pub worker: Option<String>,
    pub status: i32,
}

/// The registry's rows of one tenant, polled every `every`; a failing database (the PG
/// fault) is retried, and the gap shows as no changes.
pub struct RegistryWatch {
    pub changes: Arc<Mutex<Vec<Change<Lease>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryWatch {
    pub fn start(pg_url: &str, schema: &str, tenant: &str, every: Duration) -> RegistryWatch {
        let changes: Arc<Mutex<Vec<Change<Lease>>>> = Arc::default();
        let sink = Arc::clone(&changes);
        let pg_url = pg_url.to_string();
        let query = format!(
            "SELECT session, epoch, worker_id, status FROM {schema}.sessions WHERE tenant = $1"
        );
        let tenant = tenant.to_string();
        let task = tokio::spawn(async move {
            let mut last: HashMap<String, Lease> = HashMap::new();
            loop {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(every).await;
                    continue;
                };
                let conn = tokio::spawn(connection);
                loop {
                    let rows = match client.query(&query, &[&tenant]).await {
                        Ok(rows) => rows,
                        Err(_) => break,
                    };
                    let now = SystemTime::now();
                    {
                        let mut out = sink.lock().expect("registry changes");
                        for row in rows {
                            let session: String = row.get(0);
                            let lease = Lease {
                                epoch: row.get(1),
                                worker: row.get(2),
                                status: row.get(3),
                            };
                            if last.get(&session) != Some(&lease) {
                                out.push(Change {
                                    at: now,
                                    key: session.clone(),
                                    value: lease.clone(),
                                });
                                last.insert(session, lease);
                            }
                        }
                    }
                    tokio::time::sleep(every).await;
                }
                conn.abort();
                tokio::time::sleep(every).await;
            }
        });
        RegistryWatch { changes, task }
    }

    /// Times a new epoch of `session` appeared within [from, to].
    pub fn grants(&self, session: &str, from: SystemTime, to: SystemTime) -> Vec<SystemTime> {
        let changes = self.changes.lock().expect("registry changes");
        let mut epoch = None;
        let mut out = Vec::new();
        for c in changes.iter().filter(|c| c.key == session) {
            if epoch.is_some_and(|e| c.value.epoch > e) && c.at >= from && c.at <= to {
                out.push(c.at);
            }
            epoch = Some(c.value.epoch);
        }
        out
    }
}

impl Drop for RegistryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A printed record of what happened when, in ms since the test's zero.
pub struct Timeline {
    pub zero: SystemTime,
    pub title: String,
    entries: Mutex<Vec<(SystemTime, String)>>,
}

impl Timeline {
    pub fn new(title: &str) -> Timeline {
        Timeline {
            zero: SystemTime::now(),
            title: title.to_string(),
            entries: Mutex::default(),
        }
    }

    /// Milliseconds from the zero (negative before it).
    pub fn ms(&self, at: SystemTime) -> i64 {
        match at.duration_since(self.zero) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }

    /// Records `what` now and returns the time.
    pub fn mark(&self, what: &str) -> SystemTime {
        let now = SystemTime::now();
        self.at(now, what);
        now
    }

    pub fn at(&self, at: SystemTime, what: &str) {
        self.entries
            .lock()
            .expect("timeline")
            .push((at, what.to_string()));
    }

    pub fn render(&self) -> String {
        let mut entries = self.entries.lock().expect("timeline").clone();
        entries.sort_by_key(|(at, _)| *at);
        let mut out = format!("=== timeline: {} (ms from the fault)\n", self.title);
        for (at, what) in entries {
            out.push_str(&format!("{:>8} ms  {what}\n", self.ms(at)));
        }
        out
    }
}
