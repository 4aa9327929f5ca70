//! One module per subcommand.

pub mod fetch;
