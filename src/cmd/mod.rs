//! One module per subcommand.

pub mod fetch;
pub mod init;
pub mod serve;
pub mod stop;
