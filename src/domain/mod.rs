//! Pure logic, no I/O: what the hub and the sync decide, given records and
//! configuration. Nothing here reads the clock or the environment, performs
//! I/O or spawns tasks: every function takes its inputs (the current time
//! included, when it matters) and is tested exhaustively beside the code.

pub mod conflict;
pub mod filters;
pub mod mapping;
