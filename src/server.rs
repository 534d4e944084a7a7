//! A running broker: store, revocation mirror and its sync task, broker, and listeners.
//!
//! `serve`, `dev`, the tests and the benchmarks all start the broker through
//! [`Server::start`], so they run exactly the same thing.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::broker::{Broker, StartError};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::http::listener::{ConnLimits, bind, serve};
use crate::http::{AppState, router};
use crate::revoke::mirror::RevocationMirror;
use crate::revoke::sync::{initial_load, run_mirror_sync};
use crate::store::Store;
use crate::tls;

/// Latency buckets (seconds) for every `*_seconds` histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The process-wide Prometheus recorder; installed once, shared by every server in it.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// A broker serving HTTP(S) in this process.
pub struct Server {
    broker: Arc<Broker>,
    https_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Connects the store, loads the revocation mirror in full, starts its sync task,
    /// builds the broker and binds the configured listeners.
    pub async fn start(config: Config, clock: SharedClock) -> Result<Server, StartError> {
        tls::install_default_provider();
        if config.revocation.fail_open {
            tracing::warn!(
                "revocation.fail_open = true: if the revocation store is unreachable for longer than max_staleness, \
                 this broker KEEPS ISSUING and may honour revoked credentials"
            );
        }
        let config = Arc::new(config);
        let store = Store::connect(&config.revocation).await?;
        let mirror = Arc::new(RevocationMirror::new());
        initial_load(&store, &mirror).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(run_mirror_sync(
            store.clone(),
            mirror.clone(),
            shutdown_rx.clone(),
        )));

        let broker = Arc::new(Broker::new(config.clone(), clock, store, mirror)?);
        tasks.push(tokio::spawn(
            broker.clone().share_covered_svids(shutdown_rx.clone()),
        ));
        let state = AppState {
            broker: broker.clone(),
            metrics: metrics_handle(),
        };
        let app = router(state);
        let limits = ConnLimits {
            max_header: config.server.max_header.0 as usize,
        };

        let mut https_addr = None;
        if let (Some(addr), Some(cert), Some(key)) = (
            config.server.listen,
            config.server.tls_cert.as_ref(),
            config.server.tls_key.as_ref(),
        ) {
            let acceptor = TlsAcceptor::from(
                tls::server_config(cert, key).map_err(|e| StartError::Other(e.to_string()))?,
            );
            let listener = bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))?;
            https_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(serve(
                listener,
                Some(acceptor),
                app.clone(),
                limits,
                shutdown_rx.clone(),
            )));
        }
        let mut http_addr = None;
        if let Some(addr) = config.server.listen_http {
            let listener = bind(addr)
                .await
                .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))?;
            http_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(serve(
                listener,
                None,
                app,
                limits,
                shutdown_rx,
            )));
        }
        tracing::info!(
            https = ?https_addr,
            http = ?http_addr,
            issuer = %config.issuer,
            trust_domain = %config.trust_domain,
            "credbroker is serving"
        );
        Ok(Server {
            broker,
            https_addr,
            http_addr,
            shutdown,
            tasks,
        })
    }

    /// The broker behind the listeners.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Where HTTPS is served, if configured.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Where plain HTTP is served, if configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops accepting, drains open connections and stops the mirror sync.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
