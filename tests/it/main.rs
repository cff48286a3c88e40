//! The end-to-end tests: one test binary (linking the platform once) with a module per area.
//! Each test starts the real `vbin` binary against its own Postgres database, nats-server and
//! redis-server ([`support::Env`]). Run one area with `cargo nextest run -p vbin --test it
//! spine::`, one test with its full name.

mod support;

mod ai;
mod baresip;
mod bridge;
mod business;
mod chaos;
mod conference;
mod console;
mod flows;
mod fuzz_api;
mod gateway;
mod media_flows;
mod namespaces;
mod openapi;
mod read_side;
mod security;
mod sip;
mod spine;
mod storage;
mod transcribe;
mod trunks;
mod webhooks;
