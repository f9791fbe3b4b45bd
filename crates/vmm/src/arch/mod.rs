//! Architecture-specific code. Only x86_64 exists today; aarch64 would sit
//! beside it behind the same functions.

pub mod x86_64;
