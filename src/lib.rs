//! clm — an HSM-backed certificate lifecycle manager.
//!
//! The crate is organised in rooms with one-way doors:
//!
//! ```text
//! http  ─►  service  ─►  { store, hsm, pki }  ─►  domain
//! ```
//!
//! Only `store` imports sea_orm, only `hsm` imports cryptoki, only `http`
//! (and `main.rs`) import actix. `config` reads settings and is used by the
//! binary to wire the rooms together; `logging` sets up the log output and
//! offers every room a span-keeping `spawn_blocking`; `memory` gives freed
//! memory back to the system after bursts.

pub mod bench;
pub mod config;
pub mod domain;
pub mod hsm;
pub mod http;
pub mod logging;
pub mod memory;
pub mod pki;
pub mod service;
pub mod store;
