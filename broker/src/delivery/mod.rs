//! The write side of a connection: [`shared_writer::SharedWriter`], the byte-capped output
//! buffer that any task appends to and the connection's own task drains.

pub mod shared_writer;
