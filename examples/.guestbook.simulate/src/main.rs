//! The guestbook: Lifeboat's demo site. A small but real web app with SQLite (WAL mode, shared
//! by several instances), file uploads and an admin login.
//!
//! Configuration comes from the environment:
//! - `PORT`: listen on `127.0.0.1:$PORT` (`0` picks a free port; the start line shows it).
//! - `GUESTBOOK_DATA`: the data dir (default `$LIFEBOAT_STATE_DIR/data` under Lifeboat, else
//!   `./data`); the database is `guestbook.db` in it, uploads go to `uploads/` in it.
//! - `GUESTBOOK_ADMIN_PASSWORD` or `GUESTBOOK_ADMIN_PASSWORD_FILE`: the initial admin password,
//!   used only while the database has none.
//!
//! `guestbook set-admin-password` replaces the admin password (read from those variables, or
//! else from stdin) and signs every session out: the hook for rotating a stolen credential.
#![forbid(unsafe_code)]

/// Prints a line to stdout. A closed stdout (the log reader went away) must not crash the
/// site, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like [`say!`], to stderr.
macro_rules! esay {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod auth;
mod db;
mod routes;
mod uploads;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

const USAGE: &str = "\
usage: guestbook                       serve the site on 127.0.0.1:$PORT
       guestbook set-admin-password    set the admin password from GUESTBOOK_ADMIN_PASSWORD,
                                       GUESTBOOK_ADMIN_PASSWORD_FILE, or else stdin
environment: PORT, GUESTBOOK_DATA (default ./data), GUESTBOOK_ADMIN_PASSWORD[_FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(),
        ["set-admin-password"] => set_admin_password(),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            esay!("guestbook: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            esay!("guestbook: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `GUESTBOOK_DATA`; else `data` in the state dir Lifeboat gives (`$LIFEBOAT_STATE_DIR`, which
/// a rewind moves to a restored copy); else `./data`.
fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GUESTBOOK_DATA") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("LIFEBOAT_STATE_DIR") {
        Some(state) if !state.is_empty() => PathBuf::from(state).join("data"),
        _ => PathBuf::from("data"),
    }
}

fn open_db(data: &std::path::Path) -> anyhow::Result<db::Db> {
    std::fs::create_dir_all(data.join("uploads")).with_context(|| {
        format!(
            "creating the data dir {}; set GUESTBOOK_DATA to a writable directory",
            data.display()
        )
    })?;
    db::Db::open(&data.join("guestbook.db"))
}

fn serve() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set; set it to the port to listen on (0 picks a free one)")?
        .parse()
        .context("PORT is not a port number; set it to a number from 0 to 65535")?;
    let data = data_dir();
    let db = open_db(&data)?;

    if let Some(password) = auth::password_from_env()? {
        let mut conn = db.connect()?;
        if db::admin_password_hash(&mut conn)?.is_none() {
            auth::validate_new_password(&password)
                .context("the initial admin password from the environment is not acceptable")?;
            let hash = auth::hash_password(&password)?;
            if db::set_initial_admin_password(&mut conn, &hash)? {
                say!("guestbook: initial admin password stored");
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("listening on {addr}; is another program using PORT={port}?")
        })?;
        let local = listener.local_addr()?;
        say!(
            "guestbook: listening on http://{local} (pid {}, data {})",
            std::process::id(),
            data.display()
        );
        let app = routes::router(routes::AppState {
            db,
            uploads_dir: data.join("uploads"),
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_requested())
            .await
            .context("serving HTTP")?;
        say!("guestbook: stopped (pid {})", std::process::id());
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C; in-flight requests are then finished before exit.
async fn shutdown_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            esay!("guestbook: cannot listen for SIGTERM ({err}); only Ctrl-C stops it");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    say!("guestbook: shutting down, finishing requests in flight");
}

fn set_admin_password() -> anyhow::Result<()> {
    let password = match auth::password_from_env()? {
        Some(password) => password,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the new admin password from stdin")?;
            auth::strip_one_newline(&text).to_string()
        }
    };
    auth::validate_new_password(&password)?;
    let db = open_db(&data_dir())?;
    let hash = auth::hash_password(&password)?;
    let mut conn = db.connect()?;
    db::replace_admin_password(&mut conn, &hash, None)?;
    say!("guestbook: admin password changed; every session was signed out");
    Ok(())
}
