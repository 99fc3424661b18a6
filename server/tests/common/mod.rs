//! Runs a host in-process from config text, for the library's own tests.

use supersocket::config::{Config, ConfigSource};
use supersocket::{Host, HostBuilder};

/// Builds a host from `config` with the types of `builder` and starts its autostart servers.
pub async fn start_host(builder: HostBuilder, config: &str) -> Host {
    let source = ConfigSource::File("inline.toml".into());
    let config = Config::parse(config, false, source, builder.types()).expect("valid test config");
    let host = builder.build(config);
    host.start_autostart().await;
    host
}

/// The first bound port of a running server.
pub fn port(host: &Host, name: &str) -> u16 {
    host.instance(name).expect("server exists").info().listeners[0].port
}
