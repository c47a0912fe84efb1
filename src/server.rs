//! Assembles and runs the Pingora server: proxy listeners (plain and TLS), the admin listener,
//! and the background services (reload, health checks, facilitator discovery, ready file).

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config;
use crate::header_deadline::HeaderDeadline;
use crate::health::HealthService;
use crate::listen_owner::Owner;
use crate::metrics::Metrics;
use crate::payment::Payments;
use crate::proxy::Gateway;
use crate::reload::{ReloadService, Reloader};
use crate::snapshot::{PortPicker, Snapshot};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Written (atomically) with the bound addresses once every listener accepts connections.
    pub ready_file: Option<PathBuf>,
}

/// Refreshes each facilitator's `/supported` list: at start, then every minute (every 5 s
/// while one is failing). Start-up never waits for it.
struct SupportedService {
    config: Arc<ArcSwap<Snapshot>>,
    payments: Arc<Payments>,
}

#[async_trait]
impl BackgroundService for SupportedService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use crate::facilitator::probe_log::{ProbeEvent, ProbeLog};
        let mut last_unserved: Option<Vec<String>> = None;
        let mut next_full = Instant::now();
        let mut log = ProbeLog::default();
        // Configurations asked at least once: one a reload brought in is asked at once, not
        // at the next full round, and is not asked again before it while it fails.
        let mut asked: HashSet<String> = HashSet::new();
        loop {
            let snap = self.config.load_full();
            let names: Vec<&str> = snap.facilitators.iter().map(|f| f.name.as_str()).collect();
            log.retain(&names);
            // Settlers of facilitators no longer configured are dropped.
            self.payments
                .facilitators
                .settlers
                .retain(&snap.facilitators);
            self.payments
                .facilitators
                .supported
                .retain(&snap.facilitators);
            asked.retain(|f| snap.facilitators.iter().any(|c| &c.fingerprint == f));
            let full = Instant::now() >= next_full;
            let mut failing = false;
            for fac in &snap.facilitators {
                // Between full rounds, probe only configurations never asked, and
                // facilitators out of rotation whose ejection has run out: a good answer
                // brings them back.
                let health = self.payments.facilitators.pool.health(fac);
                let new = !asked.contains(&fac.fingerprint);
                if new {
                    asked.insert(fac.fingerprint.clone());
                }
                if !full && !new && (health.healthy() || !health.available()) {
                    continue;
                }
                let outcome = self.payments.facilitators.probe(fac).await;
                failing |= outcome.is_err();
                match log.record(
                    &fac.name,
                    outcome.map(|_| ()).map_err(|e| e.to_string()),
                    Instant::now(),
                ) {
                    Some(ProbeEvent::Failing { error }) => {
                        tracing::warn!(facilitator = %fac.name, error = %error, "cannot fetch /supported (retrying every 5 s; said again every 10 minutes while it lasts)");
                    }
                    Some(ProbeEvent::StillFailing { error, since }) => {
                        tracing::warn!(facilitator = %fac.name, error = %error, failing_for_s = since.as_secs(), "still cannot fetch /supported");
                    }
                    Some(ProbeEvent::Recovered) => {
                        tracing::info!(facilitator = %fac.name, "/supported answers again");
                    }
                    None => {}
                }
            }
            if full {
                next_full = Instant::now()
                    + if failing {
                        Duration::from_secs(5)
                    } else {
                        Duration::from_secs(60)
                    };
            } else if failing {
                // A configuration asked at once that did not answer: asked again in 5 s, as
                // in any round where something fails.
                next_full = next_full.min(Instant::now() + Duration::from_secs(5));
            }
            let unserved = self
                .payments
                .facilitators
                .supported
                .unserved(&snap.facilitators, snap.priced_offers());
            if last_unserved.as_ref() != Some(&unserved) {
                if !unserved.is_empty() {
                    tracing::warn!(routes = %unserved.join("; "), "priced routes on networks no facilitator supports");
                }
                last_unserved = Some(unserved);
            }
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// How often the shared store is searched for settlements in flight whose replica stopped.
const PENDING_SWEEP: Duration = Duration::from_secs(2);

/// Takes over settlements in flight from replicas that stopped renewing their lease.
struct PendingService {
    config: Arc<ArcSwap<Snapshot>>,
    payments: Arc<Payments>,
}

#[async_trait]
impl BackgroundService for PendingService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(PENDING_SWEEP) => {}
            }
            let snap = self.config.load_full();
            self.payments.sweep_pending(&snap.payment_env()).await;
        }
    }
}

/// How often the claimer looks for channels that are due.
const CLAIM_TICK: Duration = Duration::from_secs(1);
/// How often the claimer reads channels with unclaimed value from the chain (a payer's timed
/// withdrawal is claimed against long before its delay, at least 15 minutes, ends).
const CHAIN_READ: Duration = Duration::from_secs(5);

/// Claims payment channels' latest vouchers on chain (`batch-settlement`): every group on the
/// configured interval, a group past the threshold or with a timed withdrawal pending at the
/// next tick. The last pass, once every request was answered, is [`final_claims`].
struct ClaimerService {
    config: Arc<ArcSwap<Snapshot>>,
    payments: Arc<Payments>,
}

#[async_trait]
impl BackgroundService for ClaimerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_all = std::time::Instant::now();
        let mut last_read = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(CLAIM_TICK) => {}
            };
            let snap = self.config.load_full();
            // Channels stay claimed after a reload stopped offering them (their vouchers pay
            // for what was served): without channel rules the store is asked on the interval.
            let offers_channels = snap
                .priced_offers()
                .any(|(_, o)| crate::payment::channel::is_channel(o));
            let due = last_all.elapsed() >= snap.channels.claim_interval;
            let has_channels = offers_channels
                || (due
                    && self
                        .payments
                        .state()
                        .channel_ids()
                        .await
                        .is_ok_and(|ids| !ids.is_empty()));
            if !offers_channels && due {
                last_all = std::time::Instant::now();
            }
            if has_channels {
                let all = due;
                if all {
                    last_all = std::time::Instant::now();
                }
                let refresh = all || last_read.elapsed() >= CHAIN_READ;
                if refresh {
                    last_read = std::time::Instant::now();
                }
                let report = self
                    .payments
                    .claim_channels(&snap.payment_env(), &snap.channels, all, refresh)
                    .await;
                if report.claim_transactions > 0 || report.failures > 0 || report.retired > 0 {
                    tracing::info!(?report, "channel claimer pass");
                }
            }
        }
    }
}

/// How long the claimer's last pass may take when the gateway stops.
const FINAL_CLAIMS: Duration = Duration::from_secs(30);

/// The claimer's last pass, once the server stopped and every request was answered: every
/// channel's latest voucher is claimed, so a gateway that stops leaves nothing it served
/// unclaimed (another replica would claim it later, this one may not come back). Runs on a
/// runtime of its own: the server's are gone.
fn final_claims(config: &ArcSwap<Snapshot>, payments: &Payments) {
    let snap = config.load_full();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot run the channel claimer's last pass");
            return;
        }
    };
    rt.block_on(async {
        if !payments
            .state()
            .channel_ids()
            .await
            .is_ok_and(|ids| !ids.is_empty())
        {
            return;
        }
        let env = snap.payment_env();
        let pass = payments.claim_channels(&env, &snap.channels, true, true);
        match tokio::time::timeout(FINAL_CLAIMS, pass).await {
            Ok(report) => tracing::info!(?report, "channel claimer's last pass"),
            Err(_) => tracing::error!("the channel claimer's last pass did not finish in time"),
        }
    });
}

/// Exit status when a listen address turned out to be another process's (only possible for
/// `:0` addresses, whose port is picked before Pingora binds it): starting again picks another.
pub const EXIT_ADDRESS_TAKEN: i32 = 3;

/// What became of one listener at start-up.
enum Ready {
    Yes,
    Taken,
    Never,
}

/// Writes the ready file once every address accepts connections on this process's sockets.
struct ReadyFile {
    path: PathBuf,
    report: serde_json::Value,
    addrs: Vec<String>,
}

#[async_trait]
impl BackgroundService for ReadyFile {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for a in &self.addrs {
            let addr = a.clone();
            let ready = tokio::task::spawn_blocking(move || {
                while Instant::now() < deadline {
                    if let Ok(sa) = addr.parse()
                        && TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
                    {
                        // Something answers: it must be this process, not another program
                        // that took the port first.
                        match crate::listen_owner::owner(sa) {
                            Owner::Us => return Ready::Yes,
                            Owner::Other => return Ready::Taken,
                            Owner::Unknown if !cfg!(target_os = "linux") => return Ready::Yes,
                            Owner::Unknown => {}
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ready::Never
            })
            .await
            .unwrap_or(Ready::Never);
            match ready {
                Ready::Yes => {}
                Ready::Never => {
                    tracing::error!(addr = %a, "listener never became ready");
                    return;
                }
                Ready::Taken => {
                    // Nothing was served yet: stop now rather than report another program's
                    // listener as this one's.
                    // Written straight to stderr: the log writer is not flushed by an exit.
                    eprintln!("listen address {a} is taken by another process");
                    std::process::exit(EXIT_ADDRESS_TAKEN);
                }
            }
        }
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&self.report).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &self.path)) {
            tracing::error!(error = %e, "cannot write the ready file");
        }
    }
}

/// The state store `[state]` names. A shared store connects in the background: start-up does
/// not wait for it, `/readyz` says when it answers.
fn open_state(
    conf: &crate::state::StateConf,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn crate::state::StateStore>, String> {
    use crate::state::{Backend, MemoryStore, OnUnavailable, OpenOnFailure, RedisStore};
    Ok(match &conf.backend {
        Backend::Memory => {
            metrics.state_up.set(1);
            Arc::new(MemoryStore::default())
        }
        Backend::Redis(r) => {
            let shared = RedisStore::start(r, metrics.clone())?;
            tracing::info!(url = %r.url.redacted_url(), replica = %conf.replica_id, "state store: redis");
            match conf.on_unavailable {
                OnUnavailable::Closed => shared,
                OnUnavailable::Open => Arc::new(OpenOnFailure::new(shared)),
            }
        }
    })
}

/// Loads the configuration, builds every service and runs until a signal stops the process.
pub fn run(opts: RunOptions) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let snap = config::load(&opts.config, 1, None).map_err(|issues| issues.to_string())?;
    let _log = crate::telemetry::init(&snap.logging);
    let traces = match &snap.logging.otlp_endpoint {
        Some(endpoint) => Some(crate::traces::init(
            endpoint,
            &snap.logging.otlp_service_name,
        )?),
        None => None,
    };

    let startup = snap.startup.clone();
    // One picker for every address: its probes are released together, just before Pingora
    // binds, so no two `:0` addresses share a port.
    let mut ports = PortPicker::default();
    let mut resolve = |addrs: &[String]| -> Result<Vec<String>, String> {
        addrs
            .iter()
            .map(|a| ports.resolve(a).map_err(|e| format!("{a}: {e}")))
            .collect()
    };
    let plain = resolve(&startup.listen)?;
    let tls_addrs = resolve(
        &startup
            .tls
            .iter()
            .map(|t| t.addr.clone())
            .collect::<Vec<_>>(),
    )?;
    let admin_addr = resolve(startup.admin.as_slice())?.pop();
    let facilitator_api_addr = resolve(startup.facilitator_api.as_slice())?.pop();
    drop(ports);

    let mut conf = ServerConf {
        threads: startup.threads,
        grace_period_seconds: Some(startup.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(startup.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: startup.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    conf.work_stealing = false;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let config = Arc::new(ArcSwap::from_pointee(snap));
    let metrics = Arc::new(Metrics::new());
    let settlers = Arc::new(crate::facilitator::local::Settlers::default());
    // What is remembered across requests (payment reservations, pass quotas …).
    let state = open_state(&startup.state, &metrics)?;
    let payments = Arc::new(
        Payments::new(metrics.clone(), settlers.clone(), state.clone())
            .with_replica(&startup.state.replica_id),
    );
    let payments_at_exit = payments.clone();
    let access = Arc::new(crate::access::Access::new(metrics.clone(), state.clone()));
    let gateway = |tls: bool| Gateway {
        config: config.clone(),
        metrics: metrics.clone(),
        payments: payments.clone(),
        access: access.clone(),
        tls,
    };

    // The proxy, with a deadline on every request head (Pingora's only limits single reads).
    let proxy_conf = server.configuration.clone();
    let proxy_service = |tls: bool, name: &str| {
        Service::new(
            name.to_owned(),
            HeaderDeadline::new(
                pingora::proxy::http_proxy(&proxy_conf, gateway(tls)),
                startup.header_read_timeout,
                metrics.clone(),
            ),
        )
    };
    // Client connections buffer writes up to `write_buffer_bytes`: a response head and a
    // body of known length leave in one segment (Pingora's default, one MSS, splits a 402's
    // head from its body). Chunked and close-delimited bodies are flushed per write anyway;
    // a known-length body waits in the buffer until it fills or the body ends.
    let client_buffers = L4BufferSettings::default().write(startup.write_buffer_bytes);
    if !plain.is_empty() {
        let mut svc = proxy_service(false, "x402-gateway");
        for a in &plain {
            svc.add_listener(ListenerConfig::tcp(a.as_str()).l4_buffer(client_buffers));
        }
        server.add_service(svc);
    }
    if !startup.tls.is_empty() {
        let mut svc = proxy_service(true, "x402-gateway-tls");
        for (index, (t, addr)) in startup.tls.iter().zip(&tls_addrs).enumerate() {
            let mut settings =
                TlsSettings::intermediate(&t.cert.to_string_lossy(), &t.key.to_string_lossy())
                    .map_err(|e| format!("TLS listener {addr}: {e}"))?;
            // The certificate comes from the current configuration at each handshake, so a
            // reload that renews it applies to new connections at once.
            settings.set_cert_resolver(Arc::new(crate::tls::CurrentCert {
                config: config.clone(),
                index,
            }));
            if t.h2 {
                settings.enable_h2();
            }
            svc.add_listener(
                ListenerConfig::tcp(addr.as_str())
                    .tls(settings)
                    .l4_buffer(client_buffers),
            );
        }
        server.add_service(svc);
    }
    if let Some(addr) = &admin_addr {
        let mut svc = Service::new(
            "admin".into(),
            HttpServer::new_app(Admin {
                config: config.clone(),
                metrics: metrics.clone(),
                payments: payments.clone(),
                access: access.clone(),
            }),
        );
        svc.add_tcp(addr);
        svc.threads = Some(1);
        server.add_service(svc);
    }
    if let Some(addr) = &facilitator_api_addr {
        let mut svc = Service::new(
            "facilitator-api".into(),
            HttpServer::new_app(crate::facilitator_api::FacilitatorApi::new(
                config.clone(),
                settlers.clone(),
            )),
        );
        svc.add_tcp(addr);
        server.add_service(svc);
    }
    let reloader = Arc::new(Reloader::new(
        opts.config.clone(),
        config.clone(),
        metrics.clone(),
    ));
    server.add_service(background_service("reload", ReloadService { reloader }));
    server.add_service(background_service(
        "health",
        HealthService {
            config: config.clone(),
        },
    ));
    if state.shared() {
        // Settlements in flight of replicas that stopped, resolved from the chain.
        server.add_service(background_service(
            "pending-settlements",
            PendingService {
                config: config.clone(),
                payments: payments.clone(),
            },
        ));
    }
    server.add_service(background_service(
        "channel-claimer",
        ClaimerService {
            config: config.clone(),
            payments: payments.clone(),
        },
    ));
    server.add_service(background_service(
        "facilitators",
        SupportedService {
            config: config.clone(),
            payments,
        },
    ));
    if let Some(path) = opts.ready_file {
        let mut addrs: Vec<String> = plain.iter().chain(&tls_addrs).cloned().collect();
        addrs.extend(admin_addr.clone());
        addrs.extend(facilitator_api_addr.clone());
        let report = serde_json::json!({
            "pid": std::process::id(),
            "listen": plain,
            "tls": tls_addrs,
            "admin": admin_addr,
            "facilitator_api": facilitator_api_addr,
        });
        server.add_service(background_service(
            "ready-file",
            ReadyFile {
                path,
                report,
                addrs,
            },
        ));
    }
    tracing::info!(listen = ?plain, tls = ?tls_addrs, admin = ?admin_addr, facilitator_api = ?facilitator_api_addr, "x402-gateway starting");
    for w in &config.load().warnings {
        tracing::warn!(warning = %w, "configuration warning");
    }
    server.run(RunArgs::default());
    final_claims(&config, &payments_at_exit);
    // Every runtime has stopped: what the ledger holds reaches the disk before the exit.
    if let Err(e) = payments_at_exit.ledger().sync() {
        tracing::error!(error = %e, "cannot sync the receipts ledger at shutdown");
    }
    if let Some(provider) = &traces {
        crate::traces::shutdown(provider);
    }
    Ok(())
}
