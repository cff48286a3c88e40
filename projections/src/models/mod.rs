//! The read models. Each module: its `PROJECTION` (tables and pure apply function).

pub mod calls;
pub mod identity;
