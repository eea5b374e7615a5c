//! `changegate serve`: HTTP only. Handlers turn requests into store calls.

mod api;
pub mod auth;
mod error;
mod ingest;
mod listen;
pub mod metrics;
mod pages;
mod reload;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::engine::Engine;
use crate::github::Github;
use crate::store::{Store, StoreError, SyncReport};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The server's configuration.
    pub config: Arc<Config>,
    /// The gate service.
    pub engine: Arc<Engine>,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Wakes the GitHub worker when a delivery is stored.
    pub inbox_wake: Arc<tokio::sync::Notify>,
    /// The inbox's group-commit writer.
    pub ingest: ingest::Ingest,
    /// Memory that webhook bodies being received may hold at once.
    pub webhook_budget: webhooks::BodyBudget,
}

#[derive(OpenApi)]
#[openapi(info(
    title = "changegate",
    description = "Change review and gated deployment"
))]
struct ApiDoc;

/// The router, and the OpenAPI document generated from the same routes.
pub fn router(state: AppState) -> axum::Router {
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::healthz))
        .routes(routes!(api::readyz))
        .routes(routes!(api::list_changes))
        .routes(routes!(api::get_change))
        .routes(routes!(api::record_approval))
        .routes(routes!(api::claim))
        .routes(routes!(api::heartbeat))
        .routes(routes!(api::report))
        .routes(routes!(api::proceed))
        .routes(routes!(api::retry))
        .routes(routes!(api::rollback))
        .routes(routes!(api::abandon))
        .routes(routes!(api::breaker))
        .routes(routes!(api::reset_breaker))
        .routes(routes!(api::alerts))
        .routes(routes!(api::actions))
        .routes(routes!(api::audit))
        .with_state(state.clone())
        .split_for_parts();
    error::document_errors(&mut openapi);
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    let pages = axum::Router::new()
        .route("/", get(pages::index))
        .route("/changes/{id}", get(pages::change))
        .route("/feed.atom", get(pages::feed))
        .with_state(state.clone())
        .layer(axum::middleware::map_response(pages::security_headers));
    router
        .route("/openapi.json", get(move || async move { Json(openapi) }))
        .route("/metrics", get(metrics::metrics).with_state(state.clone()))
        .merge(pages)
        .route(
            "/webhooks/github",
            axum::routing::post(webhooks::github).with_state(state.clone()),
        )
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state, metrics::track))
}

/// Why `serve` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// `[github]` cannot be set up (bad key, unreadable mirror).
    #[error(transparent)]
    Github(#[from] crate::github::SyncError),
}

/// Runs the service until SIGTERM or SIGINT, then drains in-flight
/// requests. `[[tokens]]` is re-read from `source` (the file the
/// configuration came from) on SIGHUP and when the file changes.
pub async fn serve(config: Config, source: Option<std::path::PathBuf>) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.server.listen.clone(),
            source,
        })?;
    run_reloading(config, source, listener, shutdown_signal()).await
}

/// Runs the service on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_reloading(config, None, listener, shutdown).await
}

/// [`run`], re-reading `[[tokens]]` from `source` while it serves.
async fn run_reloading(
    config: Config,
    source: Option<std::path::PathBuf>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Store::connect(&config.database_url()).await?;
    store.migrate().await?;
    tracing::info!(backend = ?store.backend(), "store ready");
    let config = Arc::new(config);
    let engine = Arc::new(Engine::new(config.clone(), store.clone()));
    let reloader = reload::start(source, engine.clone())?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let github = Github::new(engine.clone(), metrics.clone())?.map(Arc::new);
    match refresh_all(&engine, github.as_deref()).await {
        Ok(r) => tracing::info!(
            added = r.added,
            redigested = r.redigested,
            removed = r.removed,
            "changes loaded from the default branch"
        ),
        // A failed fetch was logged once for its streak by the mirror.
        Err(crate::github::SyncError::Git(crate::git::GitError::Fetch { .. })) => {}
        Err(e) => tracing::error!(error = %e, "cannot read the default branch; will retry"),
    }
    let addr = listener.local_addr()?;
    let inbox_wake = Arc::new(tokio::sync::Notify::new());
    let (ingest, ingest_writer) = ingest::Ingest::start(store.clone());
    let background = tokio::spawn(background(config.clone(), engine.clone(), github.clone()));
    let github_worker = github
        .filter(|g| g.is_worker())
        .map(|g| tokio::spawn(github_worker(g, inbox_wake.clone())));
    let delivery = tokio::spawn(crate::alerts::worker(
        store.clone(),
        config.clone(),
        metrics.clone(),
    ));
    tracing::info!(%addr, "listening");
    let webhook_budget = webhooks::BodyBudget::new(
        config.server.webhook_memory_mib,
        config.server.body_timeout.to_std(),
    );
    let (header_timeout, body_timeout) = (
        config.server.header_timeout.as_secs().max(1),
        config.server.body_timeout.as_secs().max(1),
    );
    let app = router(AppState {
        config,
        engine,
        metrics,
        inbox_wake,
        ingest,
        webhook_budget,
    });
    let timeouts = listen::Timeouts {
        header: std::time::Duration::from_secs(header_timeout),
        body: std::time::Duration::from_secs(body_timeout),
    };
    listen::serve(listener, app, timeouts, shutdown).await?;
    background.abort();
    reloader.abort();
    delivery.abort();
    ingest_writer.abort();
    if let Some(worker) = github_worker {
        worker.abort();
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Applies stored webhook deliveries as soon as they arrive (and every
/// half second, for retries), keeps commit statuses current, and reconciles
/// with the REST API every `sync_interval`, starting at once so anything
/// missed while the server was down is repaired.
async fn github_worker(github: Arc<Github>, wake: Arc<tokio::sync::Notify>) {
    let every = Duration::from_secs(github.sync_interval_secs().max(1));
    let mut sync = tokio::time::interval(every);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
            _ = sync.tick() => match github.sync().await {
                Ok(s) => tracing::info!(pull_requests = s.pull_requests, updated = s.pull_requests_updated, authors_added = s.authors_added, reviews_added = s.reviews_added, reviews_updated = s.reviews_updated, "reconciled with GitHub"),
                Err(e) => tracing::warn!(error = %e, "reconciliation failed; will retry"),
            },
        }
        if let Err(e) = github.tick().await {
            tracing::warn!(error = %e, "github worker pass failed; will retry");
        }
    }
}

/// Re-reads the default branch every `refresh_secs` (fetching the mirror
/// first, with GitHub), expires leases every second so an interrupted
/// step is noticed without waiting for a claim, and watches rollouts in
/// flight every `rollouts.watch_every`.
async fn background(config: Arc<Config>, engine: Arc<Engine>, github: Option<Arc<Github>>) {
    let every = Duration::from_secs(config.server.refresh_secs.max(1));
    // While the remote fails, try again sooner than the period (1 s, 2 s,
    // 4 s …), so readiness comes back soon after it does.
    let next_refresh =
        |github: Option<&Github>| github.and_then(|g| g.fetch_backoff(every)).unwrap_or(every);
    let refresh = tokio::time::sleep(next_refresh(github.as_deref()));
    tokio::pin!(refresh);
    let mut leases = tokio::time::interval(Duration::from_secs(1));
    let mut rollouts = tokio::time::interval(Duration::from_secs(
        config.rollouts.watch_every.as_secs().max(1),
    ));
    loop {
        tokio::select! {
            _ = &mut refresh => {
                match refresh_all(&engine, github.as_deref()).await {
                    Ok(r) if r != SyncReport::default() => tracing::info!(added = r.added, redigested = r.redigested, removed = r.removed, "default branch refreshed"),
                    Ok(_) => {}
                    // A failed fetch was logged once for its streak by the mirror.
                    Err(crate::github::SyncError::Git(crate::git::GitError::Fetch { .. })) => {}
                    Err(e) => tracing::warn!(error = %e, "refresh failed"),
                }
                let wait = next_refresh(github.as_deref());
                refresh.as_mut().reset(tokio::time::Instant::now() + wait);
            }
            _ = leases.tick() => match engine.expire_leases().await {
                Ok(expired) => {
                    for a in expired {
                        tracing::warn!(change = %a.change_id, step = %a.step_id, attempt = %a.id, "lease expired: step interrupted");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease check failed"),
            },
            // Throughout each bake and wave, a firing alert on a touched
            // target halts the rollout (recorded and logged by the engine).
            _ = rollouts.tick() => match engine.watch_rollouts().await {
                Ok(unreachable) => {
                    for (change, why) in unreachable {
                        tracing::warn!(change = %change, error = %why, "cannot watch the rollout's targets");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "rollout watch failed"),
            },
        }
    }
}

/// Re-reads the default branch, fetching the mirror first with GitHub.
async fn refresh_all(
    engine: &Engine,
    github: Option<&Github>,
) -> Result<SyncReport, crate::github::SyncError> {
    match github {
        Some(github) => {
            // Until pinned, deliveries are matched by name; keep trying.
            if let Err(e) = github.pin_repository().await {
                tracing::warn!(error = %e, "cannot pin the repository's id yet; matching deliveries by name");
            }
            github.fetch_and_refresh().await
        }
        None => Ok(engine.refresh().await?),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
