//! `supersocketd`: the SuperSocket host with the built-in server types.

fn main() -> std::process::ExitCode {
    supersocket::daemon::main(supersocket::HostBuilder::new())
}
