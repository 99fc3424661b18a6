//! A tracing layer that copies every record naming an instance (a `server` field) into that
//! instance's log journal. `supersocketd` installs it beside its writer; a program that sets up
//! its own subscriber adds [`InstanceLogs`] to have `GET /api/v1/servers/{name}/logs` filled.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::logs::logs;

/// The layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstanceLogs;

impl<S: Subscriber> Layer<S> for InstanceLogs {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut record = Record::default();
        event.record(&mut record);
        let Some(server) = record.server else { return };
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let mut message = record.message;
        if !record.fields.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&record.fields);
        }
        logs().push(&server, &level, "host", message);
    }
}

/// A record's instance, message and other fields (`key=value`, space-separated).
#[derive(Default)]
struct Record {
    server: Option<String>,
    message: String,
    fields: String,
}

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "server" => self.server = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            name => self.field(name, format_args!("{value:?}")),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "server" => self.server = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => self.field(name, format_args!("{value:?}")),
        }
    }
}

impl Record {
    fn field(&mut self, name: &str, value: fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{name}={value}");
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::prelude::*;

    use super::*;

    #[test]
    fn records_naming_an_instance_reach_its_journal() {
        let subscriber = tracing_subscriber::registry().with(InstanceLogs);
        tracing::subscriber::with_default(subscriber, || {
            let name = "capture-test";
            tracing::warn!(server = %name, port = 7, "cannot bind");
            tracing::info!(server = name, "started");
            tracing::info!("a host record names no instance");
        });
        let lines: Vec<_> = logs()
            .of("capture-test")
            .last(10)
            .into_iter()
            .map(|e| (e.item.line.level.clone(), e.item.line.message.clone()))
            .collect();
        assert_eq!(
            lines,
            [
                ("warn".to_owned(), "cannot bind port=7".to_owned()),
                ("info".to_owned(), "started".to_owned())
            ]
        );
    }
}
