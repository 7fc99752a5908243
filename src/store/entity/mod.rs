//! sea-orm entities of both databases. The schemas themselves are defined
//! by `migrations_core` and `migrations_secure`.

pub mod core;
pub mod secure;
