//! The sandbox's own network: as root, a network namespace with nothing but loopback, so the
//! sandbox's lifeboat, its instances and its S3 server can reach nothing outside it; and the
//! [`Dialer`] the simulator's own traffic goes through, which opens its sockets in that
//! namespace (a socket belongs to the namespace of the thread that created it).
//!
//! Never does: enter the namespace on a thread of the async runtime (they are shared with the
//! restore, which must reach the real vault), or leave a namespace behind: each is named after
//! the run (`lbsim-PID`), recorded in `run.json` before it is made, deleted at teardown or by
//! the next run.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use tokio::net::{TcpSocket, TcpStream};

/// Where `ip netns` keeps the named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The name of the namespace of the simulation run by process `pid`.
pub fn name_for(pid: u32) -> String {
    format!("lbsim-{pid}")
}

/// A named network namespace with only loopback, up.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Makes the namespace `name` (`ip netns add`) and brings its loopback up. Needs root and
    /// `ip` (iproute2); the error says which is missing.
    pub fn create(name: &str) -> Result<Netns, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root to make a network namespace".into());
        }
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The file that stands for the namespace.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Deletes the namespace `name` if it exists (what a killed run left).
pub fn delete(name: &str) {
    if Path::new(NETNS_DIR).join(name).exists() {
        let _ = ip(&["netns", "delete", name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Moves the calling thread into the namespace at `path`: everything it creates or starts from
/// then on (sockets, child processes) is in it.
pub(crate) fn enter(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

type SocketRequest = tokio::sync::oneshot::Sender<io::Result<OwnedFd>>;

/// Opens the simulator's TCP connections: in the sandbox's namespace when it has one, else in
/// the simulator's own. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    /// A thread inside the namespace that makes unconnected sockets on request.
    maker: Option<mpsc::Sender<SocketRequest>>,
}

impl Dialer {
    /// A dialer whose sockets are made inside the namespace at `path`.
    pub fn inside(path: &Path) -> io::Result<Dialer> {
        let (tx, rx) = mpsc::channel::<SocketRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("sandbox-sockets".into())
            .spawn(move || {
                let entered = enter(&path);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                for reply in rx {
                    let made = socket(
                        AddressFamily::Inet,
                        SockType::Stream,
                        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                    .map_err(io::Error::from);
                    let _ = reply.send(made);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the socket thread ended"))??;
        Ok(Dialer { maker: Some(tx) })
    }

    /// Whether connections are made inside a namespace of the sandbox's.
    pub fn isolated(&self) -> bool {
        self.maker.is_some()
    }

    /// Connects to `addr` (IPv4) from the sandbox's namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let Some(maker) = &self.maker else {
            return TcpStream::connect(addr).await;
        };
        let (reply, made) = tokio::sync::oneshot::channel();
        maker
            .send(reply)
            .map_err(|_| io::Error::other("the socket thread ended"))?;
        let fd = made
            .await
            .map_err(|_| io::Error::other("the socket thread ended"))??;
        // Made with SOCK_NONBLOCK and never connected, as `from_std_stream` requires.
        TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .connect(addr)
            .await
    }
}

/// The dialer as a connector for hyper's client.
impl tower_service::Service<http::Uri> for Dialer {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| io::Error::other(format!("{uri} names no ip:port")))?;
            let stream =
                tokio::time::timeout(std::time::Duration::from_secs(2), dialer.connect(addr))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = stream.set_nodelay(true);
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made, used and deleted on its own: from inside, a listener on the host's 127.0.0.1 is
    /// out of reach while one inside answers; the host's own dialer reaches the host's.
    #[tokio::test]
    async fn the_sandboxs_network_reaches_its_own_loopback_and_nothing_outside() {
        let name = format!("lbsim-test-{}", std::process::id());
        if !nix::unistd::Uid::effective().is_root() {
            let why = Netns::create(&name).unwrap_err();
            assert!(why.contains("needs root"), "{why}");
            return;
        }
        let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host_addr = host.local_addr().unwrap();
        assert!(
            Dialer::default().connect(host_addr).await.is_ok(),
            "the host's own dialer reaches the host"
        );
        let ns = Netns::create(&name).unwrap();
        assert!(ns.path().exists());
        let dialer = Dialer::inside(&ns.path()).unwrap();
        assert!(dialer.isolated());
        assert!(
            dialer.connect(host_addr).await.is_err(),
            "the host's 127.0.0.1 is out of reach from inside"
        );
        // A listener made inside (by a thread that entered the namespace) answers.
        let (tx, rx) = mpsc::channel();
        let path = ns.path();
        std::thread::spawn(move || {
            enter(&path).unwrap();
            let inside = std::net::TcpListener::bind(host_addr).unwrap();
            tx.send(()).unwrap();
            let _ = inside.accept();
        });
        rx.recv().unwrap();
        assert!(
            dialer.connect(host_addr).await.is_ok(),
            "its own loopback answers"
        );
        drop(ns);
        assert!(!Path::new(NETNS_DIR).join(&name).exists(), "deleted");
    }
}
