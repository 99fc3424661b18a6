//! A host binary with a custom server type: the standard `supersocketd` command line, admin API
//! and life cycle, plus the `kv` type of this crate.
//!
//! ```sh
//! cargo run -p supersocket-examples --example kv-server -- --config examples/kv.toml
//! ```

use supersocket::HostBuilder;
use supersocket_examples::burn::BurnService;
use supersocket_examples::kv::KvService;

fn main() -> std::process::ExitCode {
    let builder = HostBuilder::new()
        .server_type("kv", KvService::from_context)
        .server_type("burn", |_: &_| Ok::<_, String>(BurnService));
    supersocket::daemon::main(builder)
}
