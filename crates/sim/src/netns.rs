//! The sandbox's own network: a network namespace with nothing but loopback, so the sandbox's
//! lifeboat, its instances and its S3 server can reach nothing outside it; and the [`Dialer`]
//! the simulator's own traffic goes through, which opens its sockets in that namespace (a
//! socket belongs to the namespace it was made in, wherever it is used from).
//!
//! As root the namespace is a named one (`ip netns`), entered by threads of the simulator. As
//! an ordinary user it is a [`UserNetns`]: `unshare` makes a user namespace that maps only the
//! user's own uid, with a network namespace, and runs `lifeboat __sim-sockets` in it, which
//! brings loopback up and then, while the simulator lives, hands it unconnected sockets made
//! inside (over a Unix socket, `SCM_RIGHTS`); the sandbox's processes join it through the
//! instance shim (`--join-netns PID`). A thread of the simulator cannot join it: a user
//! namespace takes only single-threaded processes.
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

/// What `lifeboat __sim-sockets` sends once loopback is up.
const READY: u8 = b'R';

/// An ordinary user's sandbox network: a user namespace (only the user's own uid mapped) with a
/// network namespace of only loopback, held by `lifeboat __sim-sockets`, which ends when the
/// simulator's end of its socket closes (also when the simulator is killed), and the namespace
/// with it once the sandbox's processes are gone.
#[derive(Debug)]
pub struct UserNetns {
    holder: std::process::Child,
}

impl UserNetns {
    /// Starts the holder (`unshare` from util-linux 2.38+, `ip` from iproute2, unprivileged
    /// user namespaces allowed) with `dir` as its working dir, and returns it with the dialer
    /// whose sockets it makes. The error says what is missing.
    pub fn create(lifeboat_bin: &Path, dir: &Path) -> Result<(UserNetns, Dialer), String> {
        use std::io::Read;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| format!("cannot make a socket pair: {e}"))?;
        let mut holder = Command::new("unshare")
            .args(["--user", "--map-current-user", "--net", "--keep-caps", "--"])
            .arg(lifeboat_bin)
            .arg(HOLDER_COMMAND)
            .current_dir(dir)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `unshare` (util-linux): {e}"))?;
        let mut ready = [0u8];
        let answered = ours
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .and_then(|_| (&ours).read(&mut ready));
        if !matches!(answered, Ok(1)) || ready[0] != READY {
            let _ = holder.kill();
            let mut why = String::new();
            if let Some(mut err) = holder.stderr.take() {
                let _ = err.read_to_string(&mut why);
            }
            let _ = holder.wait();
            let why = why.trim();
            return Err(if why.is_empty() {
                "the network holder (`unshare ... lifeboat __sim-sockets`) did not start".into()
            } else {
                format!("cannot make a user network namespace: {why}")
            });
        }
        ours.set_read_timeout(None)
            .map_err(|e| format!("cannot use the socket pair: {e}"))?;
        let dialer = Dialer::through(ours).map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok((UserNetns { holder }, dialer))
    }

    /// The holder's pid: what the sandbox's processes join (`__instance --join-netns PID`).
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }
}

impl Drop for UserNetns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The hidden command that holds an ordinary user's sandbox network (see the module doc).
pub const HOLDER_COMMAND: &str = "__sim-sockets";

/// What `lifeboat __sim-sockets` does, inside the namespaces `unshare` made, with its
/// standard input a Unix socket to the simulator: brings loopback up (`ip`, with the
/// capabilities `unshare --keep-caps` left it in the new user namespace), drops every
/// capability, says it is ready, then for each request sends back an unconnected,
/// non-blocking TCP socket made here, or a connection to a Unix socket made from here (the
/// sandbox's control socket). Returns when the simulator's end closes.
pub fn serve_sockets() -> Result<(), String> {
    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags,
        SocketType, sendmsg, socket_with,
    };
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStringExt;
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip link set lo up` failed in the new namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Done with them: a process with capabilities the sandbox's lifeboat lacks is one whose
    // /proc entries it may not read, and its control socket admits a peer only once it has
    // read which user namespace the peer is in.
    let none = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    )
    .map_err(|e| format!("cannot drop the capabilities `unshare` left: {e}"))?;
    let chan = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .map_err(|e| format!("standard input is not usable: {e}"))?;
    (&chan)
        .write_all(&[READY])
        .map_err(|e| format!("cannot answer the simulator: {e}"))?;
    let mut asked = [0u8];
    while matches!((&chan).read(&mut asked), Ok(1)) {
        let made: io::Result<OwnedFd> = match asked[0] {
            ASK_TCP => socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                None,
            )
            .map_err(io::Error::from),
            ASK_UNIX => {
                let mut len = [0u8; 2];
                (&chan)
                    .read_exact(&mut len)
                    .map_err(|e| format!("the simulator's request broke off: {e}"))?;
                let mut path = vec![0u8; u16::from_le_bytes(len).into()];
                (&chan)
                    .read_exact(&mut path)
                    .map_err(|e| format!("the simulator's request broke off: {e}"))?;
                let path = std::ffi::OsString::from_vec(path);
                std::os::unix::net::UnixStream::connect(path).map(OwnedFd::from)
            }
            other => {
                return Err(format!(
                    "the simulator asked for {other:?}, which is no request"
                ));
            }
        };
        let sent = match &made {
            Ok(fd) => {
                let fds = [fd.as_fd()];
                let mut space =
                    [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                sendmsg(
                    &chan,
                    &[io::IoSlice::new(&[READY])],
                    &mut control,
                    SendFlags::empty(),
                )
                .map(|_| ())
                .map_err(io::Error::from)
            }
            Err(_) => (&chan).write_all(&[FAILED]),
        };
        sent.map_err(|e| format!("cannot answer the simulator: {e}"))?;
    }
    Ok(())
}

/// Requests to the holder: a TCP socket, unconnected; a connection to the Unix socket whose
/// path follows (length, two bytes little-endian, then the bytes).
const ASK_TCP: u8 = b't';
const ASK_UNIX: u8 = b'u';
/// The holder's answer when it could not do what was asked (no descriptor comes with it).
const FAILED: u8 = b'E';

/// What the simulator asks of the thread that makes its sockets.
enum Want {
    Tcp,
    Unix(PathBuf),
}

/// Asks the holder at the other end of `chan` for `want` and receives the descriptor.
fn ask_holder(mut chan: &std::os::unix::net::UnixStream, want: &Want) -> io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let gone = || io::Error::other("the sandbox's network holder (lifeboat __sim-sockets) ended");
    match want {
        Want::Tcp => chan.write_all(&[ASK_TCP])?,
        Want::Unix(path) => {
            let bytes = path.as_os_str().as_bytes();
            let len = u16::try_from(bytes.len())
                .map_err(|_| io::Error::other(format!("{} is too long", path.display())))?;
            let mut ask = vec![ASK_UNIX];
            ask.extend(len.to_le_bytes());
            ask.extend(bytes);
            chan.write_all(&ask)?;
        }
    }
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8];
    let got = recvmsg(
        chan,
        &mut [io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes == 0 {
        return Err(gone());
    }
    if byte[0] == FAILED {
        return Err(match want {
            Want::Tcp => io::Error::other("the sandbox's network holder could not make a socket"),
            Want::Unix(path) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("cannot connect to {} from the sandbox", path.display()),
            ),
        });
    }
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(gone())
}

type SocketRequest = (Want, tokio::sync::oneshot::Sender<io::Result<OwnedFd>>);

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
                for (want, reply) in rx {
                    let made = match want {
                        Want::Tcp => socket(
                            AddressFamily::Inet,
                            SockType::Stream,
                            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                            None,
                        )
                        .map_err(io::Error::from),
                        // A Unix socket's path is no matter of the network namespace.
                        Want::Unix(path) => {
                            std::os::unix::net::UnixStream::connect(path).map(OwnedFd::from)
                        }
                    };
                    let _ = reply.send(made);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the socket thread ended"))??;
        Ok(Dialer { maker: Some(tx) })
    }

    /// A dialer whose sockets the holder at the other end of `chan` makes (see [`UserNetns`]).
    fn through(chan: std::os::unix::net::UnixStream) -> io::Result<Dialer> {
        let (tx, rx) = mpsc::channel::<SocketRequest>();
        std::thread::Builder::new()
            .name("sandbox-sockets".into())
            .spawn(move || {
                for (want, reply) in rx {
                    let _ = reply.send(ask_holder(&chan, &want));
                }
            })?;
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
        let fd = Self::ask(maker, Want::Tcp).await?;
        // Made with SOCK_NONBLOCK and never connected, as `from_std_stream` requires.
        TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .connect(addr)
            .await
    }
}

impl Dialer {
    async fn ask(maker: &mpsc::Sender<SocketRequest>, want: Want) -> io::Result<OwnedFd> {
        let (reply, made) = tokio::sync::oneshot::channel();
        maker
            .send((want, reply))
            .map_err(|_| io::Error::other("the socket thread ended"))?;
        made.await
            .map_err(|_| io::Error::other("the socket thread ended"))?
    }

    /// Connects to the Unix socket at `path` as a process of the sandbox: an ordinary user's
    /// sandbox's lifeboat admits to its control socket only its own user namespace.
    pub async fn connect_unix(&self, path: &Path) -> io::Result<tokio::net::UnixStream> {
        let Some(maker) = &self.maker else {
            return tokio::net::UnixStream::connect(path).await;
        };
        let fd = Self::ask(maker, Want::Unix(path.to_path_buf())).await?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(stream)
    }

    /// A control-socket connector for [`lifeboat_control::ControlClient`] through this dialer.
    pub fn control_connector(&self) -> lifeboat_control::client::SocketConnector {
        let dialer = self.clone();
        std::sync::Arc::new(move |path: PathBuf| {
            let dialer = dialer.clone();
            Box::pin(async move { dialer.connect_unix(&path).await })
        })
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
