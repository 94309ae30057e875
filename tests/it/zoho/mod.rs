//! Integration tests of the Zoho client against the emulator.
