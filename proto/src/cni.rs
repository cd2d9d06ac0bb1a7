//! CNI spec 1.1 types (being written).
