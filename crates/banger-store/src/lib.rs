//! banger-store
