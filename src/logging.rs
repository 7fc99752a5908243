//! Log output of the `clm` binary, on stderr: one JSON object per line
//! (`CLM_LOG_FORMAT=json`, the default) or human-readable text.
//!
//! A JSON line carries `timestamp`, `level`, `target`, `message`, the
//! event's own fields and the fields of every span it was logged in, lifted
//! to the top level. The HTTP middleware opens a span with the
//! `request_id` around each request, so every line logged while serving it
//! — by the handler, the service, the store or the HSM room — has
//! `"request_id"` without knowing about requests. `CLM_LOG` takes an
//! `EnvFilter` directive (default [`DEFAULT_FILTER`]).

use std::fmt;

mod queue;

pub use queue::WriterGuard;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

pub const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn";

/// Installs the global subscriber (and the bridge for crates that log
/// through `log`), and routes panics into the log so that a JSON log stays
/// JSON. Keep the returned guard until the process ends: dropping it
/// writes what is still queued.
///
/// Lines are written by a thread of their own (`queue`), in batches, so
/// a request's thread formats its access line and moves on. Nothing is
/// dropped: a full queue makes loggers wait.
pub fn init(json: bool) -> queue::WriterGuard {
    let (writer, guard) = match queue::spawn(std::io::stderr()) {
        Ok(spawned) => spawned,
        // Start-up: without a log the server must not run.
        Err(e) => panic!("the log writer thread could not start: {e}"),
    };
    let filter =
        EnvFilter::try_from_env("CLM_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .init();
    } else {
        builder.init();
    }
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic with a non-string payload");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(panic = message, location, "panic");
    }));
    guard
}

/// `tokio::task::spawn_blocking` that keeps the caller's span, so that what
/// the blocking side logs (HSM session trouble during a signature, say)
/// still carries the request id. Any room may use it.
pub fn spawn_blocking_in_span<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}

/// The JSON event format. Span fields come from the `FormattedFields` that
/// [`JsonFields`] keeps per span (a JSON object); event fields override
/// span fields of the same name; fields named like the head
/// (`timestamp`, `level`) are dropped so that no key appears twice.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted) {
                    fields.extend(map);
                }
            }
        }
        event.record(&mut Fields(&mut fields));
        fields.remove("timestamp");
        fields.remove("level");
        // A fixed head for readers; the rest in key order.
        let head = [
            (
                "timestamp",
                Value::from(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ),
            ),
            ("level", Value::from(meta.level().as_str())),
            (
                "target",
                fields
                    .remove("target")
                    .unwrap_or_else(|| meta.target().into()),
            ),
            (
                "message",
                fields.remove("message").unwrap_or_else(|| "".into()),
            ),
        ];
        write!(writer, "{{")?;
        for (i, (key, value)) in head.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(writer, "{sep}{}:{value}", Value::from(*key))?;
        }
        for (key, value) in &fields {
            write!(writer, ",{}:{value}", Value::from(key.as_str()))?;
        }
        writeln!(writer, "}}")
    }
}

/// Event fields as JSON values. Records bridged from the `log` crate
/// carry their origin as `log.*` fields: the target replaces ours, the
/// rest (file, line, module) is noise in production logs.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "log.target" => {
                self.0.insert("target".into(), value);
            }
            name if name.starts_with("log.") => {}
            name => {
                self.0.insert(name.into(), value);
            }
        }
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
}
