//! `wafleet demo --local`: links simulated phones end to end on loopback with the driver
//! alone (no fleet, no services) and shows the events. Without `--local`, `wafleet demo`
//! is the fleet demo ([`crate::fleet_demo`]).
//!
//! Starts the WhatsApp simulator in this process, then:
//! 1. links session `support-desk` by QR (the QR is drawn in the terminal; the simulated
//!    phone scans it), until ready with its prekeys on the server;
//! 2. starts that session again from its saved state: it logs in without any QR;
//! 3. links session `crm` by pairing code for a second phone number;
//! 4. unlinks `support-desk` from its phone: the session reports `logged_out`.
//!
//! Every driver event is printed as one JSON line prefixed with the session name. Each
//! step checks what it shows, so the demo exits non-zero if the product misbehaves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use wafleet_protocol::cert::RootKey;
use wafleet_session_worker::qr::QrImage;
use wafleet_session_worker::{
    DriverConfig, DriverEvent, FsSessionStore, ServerConfig, SessionDriver, SessionName,
    SessionStore,
};
use wafleet_sim::{SimConfig, Simulator};

/// Arguments of `wafleet demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The driver alone on loopback (no NATS, PostgreSQL or S3): QR link, login without
    /// QR, pairing-code link, unlink.
    #[arg(long)]
    local: bool,
    /// Keep the sessions here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Don't draw the QR in the terminal (the JSON events still carry it).
    #[arg(long)]
    no_qr: bool,
}

const QR_PHONE: &str = "15550001111";
const CODE_PHONE: &str = "15550002222";
/// How long any one step may take before the demo calls it a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `wafleet demo`.
pub fn run(args: DemoArgs) -> Result<(), String> {
    if !args.local {
        return crate::fleet_demo::run(!args.no_qr);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(demo(args))
}

/// One session as the demo drives it.
struct Demo {
    sim: Simulator,
    data_dir: PathBuf,
    draw_qr: bool,
}

impl Demo {
    fn store(&self, name: &str) -> Result<FsSessionStore, String> {
        let name = SessionName::parse(name).map_err(|e| e.to_string())?;
        Ok(FsSessionStore::new(self.data_dir.clone(), &name))
    }

    fn start(&self, name: &str, phone: Option<&str>) -> Result<SessionDriver, String> {
        let name = SessionName::parse(name).map_err(|e| e.to_string())?;
        let config = DriverConfig {
            label: name.to_string(),
            server: ServerConfig {
                url: self.sim.ws_url(),
                root: RootKey::custom(self.sim.root_public_key()),
            },
            phone: phone.map(str::to_owned),
            ..DriverConfig::default()
        };
        SessionDriver::start(config, Arc::new(self.store(name.as_str())?))
            .map_err(|e| e.to_string())
    }

    /// The next event of `driver`, printed; an error if none comes in time.
    async fn next(&self, name: &str, driver: &mut SessionDriver) -> Result<DriverEvent, String> {
        let event = tokio::time::timeout(STEP_TIMEOUT, driver.next_event())
            .await
            .map_err(|_| format!("{name}: no event within {STEP_TIMEOUT:?}"))?
            .ok_or_else(|| format!("{name}: the driver ended"))?;
        println!("[{name}] {}", event.to_json_line());
        if let (DriverEvent::Qr { code, .. }, true) = (&event, self.draw_qr) {
            if let Ok(image) = QrImage::new(code.expose()) {
                println!("{}", image.to_terminal());
            }
        }
        Ok(event)
    }

    /// Events until `want` matches one; a terminal failure on the way is an error.
    async fn until<T>(
        &self,
        name: &str,
        driver: &mut SessionDriver,
        mut want: impl FnMut(&DriverEvent) -> Option<T>,
    ) -> Result<T, String> {
        loop {
            let event = self.next(name, driver).await?;
            if let Some(found) = want(&event) {
                return Ok(found);
            }
            if let DriverEvent::Failed { reason, detail }
            | DriverEvent::AuthFailure { reason, detail } = &event
            {
                return Err(format!("{name}: {reason}: {detail}"));
            }
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

async fn demo(args: DemoArgs) -> Result<(), String> {
    let temp;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            temp.path().to_owned()
        }
    };
    let sim = Simulator::start(SimConfig::default())
        .await
        .map_err(|e| format!("simulator: {e}"))?;
    step(&format!(
        "simulator on {} (root key {}); sessions in {}",
        sim.ws_url(),
        hex::encode(sim.root_public_key()),
        data_dir.display()
    ));
    for phone in [QR_PHONE, CODE_PHONE] {
        let info = sim.add_phone(phone).map_err(|e| e.to_string())?;
        println!("simulated phone {} (LID {})", info.jid, info.lid);
    }
    let demo = Demo {
        sim: sim.clone(),
        data_dir,
        draw_qr: !args.no_qr,
    };

    step("1. link session support-desk by QR; the simulated phone scans it");
    let mut desk = demo.start("support-desk", None)?;
    let qr = demo
        .until("support-desk", &mut desk, |e| match e {
            DriverEvent::Qr { code, .. } => Some(code.expose().to_owned()),
            _ => None,
        })
        .await?;
    let device = sim
        .scan_qr(QR_PHONE, &qr)
        .await
        .map_err(|e| format!("scan: {e}"))?;
    println!("phone {QR_PHONE} scanned the QR and verified the companion's signature: {device}");
    demo.until("support-desk", &mut desk, |e| {
        matches!(e, DriverEvent::PreKeysUploaded { .. }).then_some(())
    })
    .await?;
    desk.finish().await;

    step("2. start support-desk again from its saved state: login, no QR");
    let mut desk = demo.start("support-desk", None)?;
    let saw_qr = demo
        .until("support-desk", &mut desk, |e| match e {
            DriverEvent::Qr { .. } => Some(true),
            DriverEvent::Ready { .. } => Some(false),
            _ => None,
        })
        .await?;
    if saw_qr {
        return Err("support-desk showed a QR although it was linked".into());
    }

    step("3. link session crm by pairing code for +15550002222");
    let mut crm = demo.start("crm", Some(CODE_PHONE))?;
    let code = demo
        .until("crm", &mut crm, |e| match e {
            DriverEvent::PairingCode { code, .. } => Some(code.expose().to_owned()),
            _ => None,
        })
        .await?;
    let crm_device = sim
        .enter_pairing_code(CODE_PHONE, &code)
        .await
        .map_err(|e| format!("pairing code: {e}"))?;
    println!("phone {CODE_PHONE} typed {code}: linked {crm_device}");
    demo.until("crm", &mut crm, |e| {
        matches!(e, DriverEvent::PreKeysUploaded { .. }).then_some(())
    })
    .await?;

    step("4. the phone unlinks support-desk");
    sim.unlink(&device).await.map_err(|e| e.to_string())?;
    let reason = demo
        .until("support-desk", &mut desk, |e| match e {
            DriverEvent::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await?;
    if reason != "logged_out" {
        return Err(format!("support-desk ended with {reason}, not logged_out"));
    }
    demo.store("support-desk")?
        .mark_logged_out()
        .map_err(|e| e.to_string())?;
    println!("support-desk's saved state is kept only as logged out: the next start links anew");
    crm.finish().await;

    let counters = sim.counters();
    step("simulator counters");
    let live: BTreeMap<_, _> = counters.live_sockets.iter().collect();
    println!("live sockets per device: {live:?}");
    println!(
        "device signatures verified: {} ok, {} bad; replaced sent: {}; prekeys stored: {:?}",
        counters.device_signatures_ok,
        counters.device_signatures_bad,
        counters.replaced_sent,
        counters.prekeys_stored.iter().collect::<BTreeMap<_, _>>()
    );
    sim.shutdown().await;
    println!("\ndemo finished: QR link, login without QR, pairing-code link, unlink.");
    Ok(())
}
