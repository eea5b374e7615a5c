//! `changegate serve`: HTTP only. Handlers turn requests into store calls.

mod api;
pub mod auth;
mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::git::{ChangeRepo, GitError};
use crate::model::{covered_paths, Digest};
use crate::store::{Store, StoreError, SyncReport};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The server's configuration.
    pub config: Arc<Config>,
    /// Storage.
    pub store: Store,
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
        .routes(routes!(api::audit))
        .with_state(state)
        .split_for_parts();
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    router.route("/openapi.json", get(move || async move { Json(openapi) }))
}

/// Why a refresh from the default branch failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The repository or branch could not be read.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the default branch and records its changes and digests. Invalid
/// change sets are logged and skipped: they cannot run until fixed.
pub async fn refresh(config: &Config, store: &Store) -> Result<SyncReport, RefreshError> {
    let (commit, changes) = {
        let repo = ChangeRepo::open(&config.repo.url)?;
        let snapshot = repo.at(&config.repo.default_branch)?;
        let model = snapshot.load_model()?;
        for d in &model.diagnostics {
            tracing::warn!(diagnostic = %d, "invalid on the default branch");
        }
        let changes: Vec<_> = model
            .changes
            .into_values()
            .filter_map(|c| match covered_paths(&c, &snapshot) {
                Ok(covered) => Some((Digest::of(&covered), c)),
                Err(e) => {
                    tracing::warn!(change = %c.id, error = %e, "no digest");
                    None
                }
            })
            .map(|(d, c)| (c, d))
            .collect();
        (snapshot.commit_id().to_string(), changes)
    };
    Ok(store.sync_changes(&commit, &changes).await?)
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
}

/// Runs the service until SIGTERM or SIGINT, then drains in-flight requests.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let url = config.database_url();
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    tracing::info!(backend = ?store.backend(), "store ready");
    match refresh(&config, &store).await {
        Ok(r) => tracing::info!(
            added = r.added,
            redigested = r.redigested,
            removed = r.removed,
            "changes loaded from the default branch"
        ),
        Err(e) => tracing::error!(error = %e, "cannot read the default branch; will retry"),
    }
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.server.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let config = Arc::new(config);
    let refresher = tokio::spawn(refresh_loop(config.clone(), store.clone()));
    tracing::info!(%addr, "listening");
    let app = router(AppState {
        config,
        store: store.clone(),
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    refresher.abort();
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn refresh_loop(config: Arc<Config>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.server.refresh_secs.max(1)));
    tick.tick().await;
    loop {
        tick.tick().await;
        match refresh(&config, &store).await {
            Ok(r) if r != SyncReport::default() => tracing::info!(
                added = r.added,
                redigested = r.redigested,
                removed = r.removed,
                "default branch refreshed"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "refresh failed"),
        }
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
