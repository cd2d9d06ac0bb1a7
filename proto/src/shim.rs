//! shim protocol (being written).
