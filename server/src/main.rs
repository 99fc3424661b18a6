//! `supersocketd`: the SuperSocket host with the built-in server types.

#[global_allocator]
static ALLOCATOR: supersocket::memory::HostAllocator = supersocket::memory::HostAllocator;

fn main() -> std::process::ExitCode {
    supersocket::daemon::main(supersocket::HostBuilder::new())
}
