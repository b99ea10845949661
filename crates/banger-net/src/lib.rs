//! banger-net
