//! Every metric changegate keeps (Prometheus, `prometheus-client`): the
//! HTTP layer, the alert worker and the webhook handler record into one
//! registry, which `/metrics` encodes.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a webhook delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    /// Why, from a fixed set: `bad-signature`, `missing-headers`,
    /// `too-large`, `busy`, `too-slow`, `broken-body`; empty otherwise.
    pub reason: &'static str,
}

/// Labels of a claim decision.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `granted` or `refused`.
    pub outcome: String,
    /// The refusal reason, or empty.
    pub reason: String,
}

/// Labels of a step outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `succeeded` or `failed`.
    pub outcome: String,
}

/// Labels of a rollout metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// Targets: `pending`, `running`, `succeeded`, `failed` or
    /// `interrupted`. Halts: `failed`, `interrupted` or `alert`.
    pub state: &'static str,
}

/// Labels of a rollout halt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HaltLabels {
    /// `failed`, `interrupted` (a target) or `alert` (a firing alert).
    pub reason: &'static str,
}

/// Labels of a delivery from elsewhere.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignLabels {
    /// `foreign-repository` or `foreign-installation`.
    pub reason: &'static str,
}

/// Labels of a failed mirror fetch.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `auth`, `tls`, `unreachable` or `other`.
    pub reason: &'static str,
}

/// Labels of an alert delivery.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The sink's name.
    pub sink: String,
    /// `delivered` or `failed`.
    pub outcome: String,
}

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The method.
    pub method: String,
    /// The route template, e.g. `/api/v1/changes/{id}`.
    pub route: String,
    /// The status code.
    pub status: String,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    /// Claims by outcome and reason.
    pub claims: Family<ClaimLabels, Counter>,
    /// Reported step outcomes.
    pub steps: Family<StepLabels, Counter>,
    /// Rollbacks that ended, by outcome: `rolled-back` or `rollback-failed`.
    pub rollbacks: Family<StepLabels, Counter>,
    /// Reported step durations, seconds.
    pub step_seconds: Histogram,
    /// Alert deliveries by sink and outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// HTTP request durations, seconds.
    pub http_seconds: Family<HttpLabels, Histogram>,
    /// GitHub webhook deliveries by outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Stored deliveries the worker ignored as another repository's.
    pub webhooks_foreign: Family<ForeignLabels, Counter>,
    breaker_open: Gauge,
    alerts_firing: Gauge,
    outbox_pending: Gauge,
    fleet_action_refusals: Gauge,
    inbox_pending: Gauge,
    rollout_targets: Family<RolloutLabels, Gauge>,
    rollout_halts: Family<HaltLabels, Counter>,
    mirror_fetch_failures: Family<FetchLabels, Counter>,
    /// 1 while the mirror's last fetch failed.
    pub mirror_fetch_failing: Gauge,
    /// Change set files read from git (brought up to date at each scrape).
    change_sets_read: Counter,
    change_sets_read_sync: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("changegate");
        let claims = Family::<ClaimLabels, Counter>::default();
        let steps = Family::<StepLabels, Counter>::default();
        let rollbacks = Family::<StepLabels, Counter>::default();
        let step_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 16));
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let http_seconds = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let (breaker_open, alerts_firing, outbox_pending, fleet_action_refusals, inbox_pending) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "claims",
            "Claims by outcome and refusal reason",
            claims.clone(),
        );
        registry.register("steps", "Reported step outcomes", steps.clone());
        registry.register(
            "rollbacks",
            "Rollbacks that ended, by outcome",
            rollbacks.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Reported step durations",
            step_seconds.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Alert deliveries by sink and outcome",
            deliveries.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations",
            http_seconds.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "GitHub webhook deliveries: accepted, duplicate or rejected",
            webhooks.clone(),
        );
        let webhooks_foreign = Family::<ForeignLabels, Counter>::default();
        registry.register(
            "webhooks_foreign",
            "Stored deliveries the worker ignored: another repository's or installation's",
            webhooks_foreign.clone(),
        );
        registry.register(
            "breaker_open",
            "1 while the step breaker is open",
            breaker_open.clone(),
        );
        registry.register("alerts_firing", "Alerts firing now", alerts_firing.clone());
        registry.register(
            "outbox_pending",
            "Alert deliveries not yet done (outbox depth)",
            outbox_pending.clone(),
        );
        registry.register(
            "fleet_action_refusals_sticky",
            "Fleet action kinds refused until an operator resets them",
            fleet_action_refusals.clone(),
        );
        registry.register(
            "inbox_pending",
            "Webhook deliveries stored but not yet applied (inbox depth)",
            inbox_pending.clone(),
        );
        let rollout_targets = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "rollout_targets",
            "Targets of rollouts in flight (running or failed), by state",
            rollout_targets.clone(),
        );
        let rollout_halts = Family::<HaltLabels, Counter>::default();
        registry.register(
            "rollout_halts",
            "Rollout halts: a failed or interrupted target, or a firing alert",
            rollout_halts.clone(),
        );
        let mirror_fetch_failures = Family::<FetchLabels, Counter>::default();
        registry.register(
            "mirror_fetch_failures",
            "Failed fetches of the repository into the mirror, by reason",
            mirror_fetch_failures.clone(),
        );
        let mirror_fetch_failing = Gauge::default();
        registry.register(
            "mirror_fetch_failing",
            "1 while the mirror's last fetch failed",
            mirror_fetch_failing.clone(),
        );
        let change_sets_read = Counter::default();
        registry.register(
            "change_sets_read",
            "Change set files read from git by this process (a restart over an unmoved branch reads none)",
            change_sets_read.clone(),
        );
        Metrics {
            registry,
            change_sets_read,
            change_sets_read_sync: std::sync::Mutex::new(()),
            mirror_fetch_failures,
            mirror_fetch_failing,
            rollout_targets,
            rollout_halts,
            claims,
            steps,
            rollbacks,
            step_seconds,
            deliveries,
            http_seconds,
            webhooks,
            webhooks_foreign,
            breaker_open,
            alerts_firing,
            outbox_pending,
            fleet_action_refusals,
            inbox_pending,
        }
    }
}

/// What the store and the breaker say now, for the gauges.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// 1 while the step breaker is open.
    pub breaker_open: bool,
    /// Alerts firing.
    pub alerts_firing: i64,
    /// Alert deliveries not yet done.
    pub outbox_pending: i64,
    /// Fleet action kinds refused until an operator resets them.
    pub fleet_action_refusals: i64,
    /// Webhook deliveries stored but not yet applied.
    pub inbox_pending: i64,
    /// Rollouts, as the store says now.
    pub rollouts: RolloutGauges,
}

/// Rollout figures read from the store at scrape time, so that every
/// replica reports the same and a restart loses nothing.
#[derive(Debug, Clone, Default)]
pub struct RolloutGauges {
    /// Targets of rollouts in flight, by state.
    pub targets: Vec<(&'static str, i64)>,
    /// Every halt ever recorded, by reason.
    pub halts: Vec<(&'static str, u64)>,
}

impl Metrics {
    /// Counts a failed mirror fetch and marks the mirror failing.
    pub fn mirror_fetch_failed(&self, reason: &'static str) {
        self.mirror_fetch_failures
            .get_or_create(&FetchLabels { reason })
            .inc();
        self.mirror_fetch_failing.set(1);
    }

    /// Sets the gauges read at scrape time.
    pub fn set_gauges(&self, g: Gauges) {
        {
            let _one = self.change_sets_read_sync.lock().expect("metrics lock");
            let (now, shown) = (crate::git::change_sets_read(), self.change_sets_read.get());
            self.change_sets_read.inc_by(now.saturating_sub(shown));
        }
        self.breaker_open.set(i64::from(g.breaker_open));
        self.alerts_firing.set(g.alerts_firing);
        self.outbox_pending.set(g.outbox_pending);
        self.fleet_action_refusals.set(g.fleet_action_refusals);
        self.inbox_pending.set(g.inbox_pending);
        self.rollout_targets.clear();
        for (state, n) in g.rollouts.targets {
            self.rollout_targets
                .get_or_create(&RolloutLabels { state })
                .set(n);
        }
        // A counter read from the store: add what was recorded since.
        for (reason, n) in g.rollouts.halts {
            let c = self.rollout_halts.get_or_create(&HaltLabels { reason });
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}
