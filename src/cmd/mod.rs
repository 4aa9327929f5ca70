//! One module per subcommand.

pub mod discover;
pub mod fetch;
pub mod init;
pub mod register;
pub mod secret;
pub mod serve;
pub mod status;
pub mod stop;
