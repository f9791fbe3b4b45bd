//! x86_64: memory layout, boot, CPU setup and ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod layout;
