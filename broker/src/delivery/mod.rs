//! The write side of a connection: [`shared_writer::SharedWriter`], the byte-capped output
//! buffer that any task appends to and the connection's own task drains, and beside it
//! the connection's [`control::Control`] block (wake-ups, kick, keep-alive state).
//! [`budget::ByteBudget`] is the broker-wide bound on bytes held for all of them.

pub mod budget;
pub mod control;
mod journal_hold;
pub mod pending_holds;
pub mod shared_writer;
