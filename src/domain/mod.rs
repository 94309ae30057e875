//! Pure logic, no I/O: what the sync decides, given records and
//! configuration. Callers do the reading and writing; everything here is a
//! function of its arguments and is tested exhaustively beside the code.

pub mod filters;
pub mod mapping;
