//! lifeboat-mariadb against real `mariadbd` processes (one test binary: CI builds and links
//! it once). MariaDB must be installed (`scripts/install-test-deps`); the tests fail, never
//! skip, without it.

mod common;

mod base;
mod capture;
mod errors;
mod import;
mod purge;
mod restore;
mod server;
