//! The built-in server types of SPEC §5, one file each.

mod command;
mod echo;

pub use command::CommandService;
pub use echo::EchoService;

use crate::service::ServerTypes;

/// Registers every built-in type.
pub(crate) fn register_builtin(types: &mut ServerTypes) {
    types.register("echo", |_: &_| Ok::<_, String>(EchoService));
    types.register("command", |_: &_| Ok::<_, String>(CommandService));
}
