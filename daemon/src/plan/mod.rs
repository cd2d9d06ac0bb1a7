//! plan (being written)
