//! Tokens without a restart (SPEC §12): `serve` re-reads `[[tokens]]` on
//! SIGHUP and when its configuration file changes. A file that does not
//! validate is refused and logged; the running configuration stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::engine::Engine;

/// How often the file is looked at: a `token new … >> changegate.toml`
/// takes effect within this.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Listens for SIGHUP at once (so that one never stops the server), and
/// returns the task that reloads `path`'s tokens into `engine`; without a
/// file, a SIGHUP is logged and otherwise ignored.
pub fn start(
    path: Option<PathBuf>,
    engine: Arc<Engine>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = signal(SignalKind::hangup())?;
    let Some(path) = path else {
        return Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: no configuration file was read at start, so there is nothing to reload");
            }
        }));
    };
    let watch = engine.config().server.reload_on_change;
    Ok(tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        let mut look = tokio::time::interval(LOOK_EVERY);
        loop {
            let why = tokio::select! {
                _ = hangups.recv() => "SIGHUP",
                _ = look.tick(), if watch => {
                    let now = fingerprint(&path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "the file changed"
                }
            };
            reload(&path, &engine, why).await;
        }
    }))
}

/// The file's content hash, or `None` while it cannot be read.
fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path)
        .ok()
        .map(|bytes| sha2::Sha256::digest(&bytes).into())
}

/// Re-reads the file and swaps in its tokens, if it validates. Logs names
/// only: never a token or its hash.
async fn reload(path: &Path, engine: &Engine, why: &str) {
    let file = path.display().to_string();
    let new = match Config::load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %file, reason = why, error = %e, "configuration not reloaded: it does not validate; the running tokens stay");
            return;
        }
    };
    let old = engine.config();
    let names = |c: &Config| -> Vec<String> { c.tokens.iter().map(|t| t.name.clone()).collect() };
    let (before, after) = (names(&old), names(&new));
    let added: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    let removed: Vec<&String> = before.iter().filter(|n| !after.contains(n)).collect();
    let mut others = Config::clone(&new);
    others.tokens = old.tokens.clone();
    if others != *old {
        tracing::warn!(file = %file, "only [[tokens]] is re-read while serving; the other changes take effect at the next start");
    }
    if new.tokens == old.tokens {
        return;
    }
    match engine.reload_tokens(new.tokens).await {
        Ok(_) => {
            tracing::info!(file = %file, reason = why, identities = after.len(), added = ?added, removed = ?removed, "tokens reloaded")
        }
        Err(e) => {
            tracing::warn!(file = %file, error = %e, "tokens reloaded; re-reading the default branch failed, the next refresh retries")
        }
    }
}
