//! Pure domain logic: conflict resolution, field mapping, filters.
//!
//! Nothing here performs I/O, reads the clock or the environment, or spawns
//! tasks: every function takes its inputs (including the current time, when
//! it matters) as arguments and returns a value, so the rules can be tested
//! exhaustively and reused by the store, the workers and the API alike.
pub mod conflict;
