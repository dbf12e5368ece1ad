//! Logging and tracing: a `tracing` subscriber, and an OpenTelemetry layer exporting
//! spans over OTLP when an endpoint is configured. The Prometheus metrics: [`metrics`].
pub mod metrics;

use crate::config::Settings;
use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// Keeps the exporter alive; flushes spans when dropped at shutdown.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("flushing traces failed: {error}");
            }
        }
    }
}

/// What the OTLP exporter receives: every RPC and unit of work, and the PostgreSQL and Redis
/// calls below them.
const TRACE_FILTER: &str = "info,flash_loyalty=debug";

pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    // An incoming `traceparent` is continued by every RPC's span (`grpc::observe`).
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = EnvFilter::try_new(&settings.log).context("FLASH_LOG is not a valid filter")?;
    let format = if settings.log_json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("building the OTLP exporter")?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("flash")
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    // Traces keep the database and Redis calls (debug spans) whatever FLASH_LOG says; without
    // an exporter nothing enables those spans, so they cost nothing.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("flash"))
            .with_filter(EnvFilter::new(TRACE_FILTER))
    });
    tracing_subscriber::registry()
        .with(format.with_filter(filter))
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    Ok(TelemetryGuard(provider))
}
