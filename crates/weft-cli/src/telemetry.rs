//! Span export: the OpenTelemetry SDK behind the API the engine and the API crate use, with a
//! parent-based ratio sampler, exporting over OTLP/HTTP (protobuf) to `--otlp-endpoint` when
//! one is set. Without an endpoint spans still get ids (runs and outbound requests carry a
//! `traceparent`, with the sampled flag off) but are not recorded.

use anyhow::Context as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

/// The installed tracer provider; flushed at shutdown.
pub(crate) struct Telemetry {
    provider: SdkTracerProvider,
}

/// Installs the tracer provider; `endpoint` is the OTLP/HTTP base URL (the exporter posts to
/// `{endpoint}/v1/traces`); `ratio` is the share of new traces sampled (a trace started by a
/// caller follows the caller's decision).
pub(crate) fn init(endpoint: Option<&str>, ratio: f64) -> anyhow::Result<Telemetry> {
    // Without an exporter nothing is recorded: spans still get ids (so `traceparent` is stored
    // and sent), and nothing is built for a sampler to throw away (see `trace::set_recording`).
    let sampler = if endpoint.is_some() {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
    } else {
        Sampler::AlwaysOff
    };
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name("weft")
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        );
    if let Some(endpoint) = endpoint {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .with_context(|| format!("--otlp-endpoint: cannot export spans to {url}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    weft_engine::trace::set_recording(endpoint.is_some() && ratio > 0.0);
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter.
    pub(crate) fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "could not flush spans at shutdown");
        }
    }
}
