//! One module per subcommand.

pub mod fetch;
pub mod serve;
pub mod stop;
