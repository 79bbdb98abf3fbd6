//! A live site's timeline (being built).
#![forbid(unsafe_code)]
