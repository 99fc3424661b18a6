//! SuperSocket for Rust: one host process running many named socket server instances side by
//! side, controlled through an embedded HTTP admin API; and the framework to write their types.
//!
//! # Layout
//! Each module imports only those listed before it (and leaf helpers):
//! - [`config`]: the config file (TOML or JSON), validated with file, server, key and line.
//! - [`filter`]: pipeline filters that cut bytes into packages.
//! - [`outcome`], [`session`]: what operations come to; sessions as the host keeps them (ids,
//!   close reasons, outboxes, registries).
//! - [`instance`]: one instance's state machine, and the traits of where it runs (`Backend`,
//!   `Run`, `Launch`).
//! - [`dispatch`]: instances finding each other by name and type; the crc32 dispatcher.
//! - [`context`]: what handlers see ([`InstanceContext`], [`Session`], [`SessionHandle`]).
//! - [`service`]: the [`Service`] trait a server type implements.
//! - `runtime`: runs in this process (listeners, accept loops, session tasks, type catalog).
//! - `isolation`: runs in agent processes (channel, supervisor, agent).
//! - [`services`]: the built-in types, through the public API only.
//! - [`host`]: the registry of instances, launchers, boot, reload and shutdown.
//! - [`admin`]: the admin API (axum); [`daemon`]: the `supersocketd` program around it all.
//!
//! Leaf helpers any module may use: `timefmt` (RFC 3339 times), [`secret`] (comparing
//! secrets in constant time) and `systemd` (readiness notifications, socket activation).
//!
//! # A custom server type
//! ```no_run
//! use bytes::BytesMut;
//! use supersocket::{HostBuilder, Service, Session, filter::LineFilter};
//!
//! struct Shout;
//!
//! impl Service for Shout {
//!     type Filter = LineFilter;
//!     fn filter(&self, max: usize) -> LineFilter {
//!         LineFilter::new(max)
//!     }
//!     async fn received(&self, session: &mut Session<'_>, line: BytesMut) {
//!         session.reply(&line.to_ascii_uppercase());
//!         session.reply(b"\r\n");
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let builder = HostBuilder::new().server_type("shout", |_: &_| Ok::<_, String>(Shout));
//!     supersocket::daemon::main(builder)
//! }
//! ```

pub mod admin;
pub mod config;
pub mod context;
pub mod daemon;
pub mod dispatch;
mod events;
pub mod filter;
pub mod host;
pub mod instance;
mod isolation;
pub mod memory;
pub mod outcome;
mod runtime;
pub mod secret;
pub mod service;
pub mod services;
pub mod session;
mod systemd;
mod timefmt;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use context::{InstanceContext, Session, SessionHandle, Traffic};
pub use dispatch::{HostHandle, Route};
pub use events::capture::InstanceLogs;
pub use host::{Host, HostBuilder};
pub use instance::Instance;
pub use outcome::{OpError, Pending};
pub use runtime::types::ServerTypes;
pub use service::{Service, ServiceContext};
pub use session::{CloseReason, SessionId};
