//! banger-client
