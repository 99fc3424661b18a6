//! SuperSocket for Rust: one host process running many named socket server instances side by
//! side, controlled through an embedded HTTP admin API; and the framework to write their types.
//!
//! # Layout
//! - [`config`]: the config file (TOML or JSON), validated with file, server, key and line.
//! - [`host`]: the registry of instances, boot and shutdown.
//! - [`instance`]: one instance's state machine, listeners and accept loop.
//! - [`session`]: one task per connection (read, decode, handle, write) and what a handler sees.
//! - [`filter`]: pipeline filters that cut bytes into packages.
//! - [`service`]: the [`Service`] trait a server type implements, and the type catalog.
//! - [`dispatch`]: instances finding each other by name and type; the crc32 dispatcher.
//! - [`services`]: the built-in types (`echo`, `command`).
//! - [`admin`]: the admin API (axum).
//! - [`daemon`]: the `supersocketd` program around it all.
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
pub mod daemon;
pub mod dispatch;
pub mod filter;
pub mod host;
pub mod instance;
pub(crate) mod isolation;
mod secret;
pub mod service;
pub mod services;
pub mod session;
mod timefmt;
pub mod tls;

pub use dispatch::{HostHandle, Route};
pub use host::{Host, HostBuilder};
pub use instance::{CallError, Instance, InstanceContext};
pub use service::{Service, ServiceContext};
pub use session::{CloseReason, Session, SessionHandle, SessionId};
