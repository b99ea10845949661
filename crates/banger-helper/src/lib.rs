//! banger-helper
