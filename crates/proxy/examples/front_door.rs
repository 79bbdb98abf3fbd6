//! A bare front door for benchmarks and manual tests: listens on an address and balances over
//! the given instance addresses, health-checking `/healthz`.
//!
//! usage: front_door LISTEN_ADDR INSTANCE_ADDR...
//! e.g.   cargo run --release -p lifeboat-proxy --example front_door 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
//! FRONT_DOOR_THREADS=N sets the number of threads of the runtime that accepts connections and
//! runs health checks (1: a single-threaded runtime; the default is one per core). Requests are
//! served by the proxy's own serving threads, one per core, whatever this setting.

use std::net::SocketAddr;
use std::time::Duration;

use lifeboat_proxy::{BackendHealth, Proxy, ProxyConfig};

/// The allocator of the `lifeboat` binary, so that profiles of this example match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = match std::env::var("FRONT_DOOR_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
    {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: front_door LISTEN_ADDR INSTANCE_ADDR...";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let instances: Vec<SocketAddr> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if instances.is_empty() {
        return Err(usage.into());
    }
    let proxy = Proxy::start(ProxyConfig {
        listen,
        ..ProxyConfig::default()
    })
    .await?;
    for (i, addr) in instances.iter().enumerate() {
        proxy.add_backend(&format!("web-{}", i + 1), *addr);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while proxy
        .backends()
        .iter()
        .any(|b| b.health != BackendHealth::Healthy)
    {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("instances not healthy after 30s: {:?}", proxy.backends()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "front door on http://{} -> {} healthy instances",
        proxy.local_addr(),
        instances.len()
    );
    tokio::signal::ctrl_c().await?;
    proxy.shutdown().await;
    Ok(())
}
