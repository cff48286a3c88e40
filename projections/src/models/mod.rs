//! The read models. Each module: its projection constants (tables and pure apply function).

pub mod ais;
pub mod billing;
pub mod calls;
pub mod campaigns;
pub mod conferences;
pub mod flows;
pub mod identity;
pub mod queues;
pub mod transcribes;
pub mod trunks;
