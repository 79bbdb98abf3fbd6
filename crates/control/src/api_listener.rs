//! The control socket's door: only the owner's own commands get in.
//!
//! The socket is 0600 in a 0700 directory, so the file system already keeps other users out.
//! But when the site's processes run as Lifeboat's own user (lifeboat is not root), the
//! permissions cannot tell a `lifeboat` command of the owner from a compromised app that found
//! its way to the socket. The site's processes then always run in a user namespace of their
//! own (with their private mounts), and everything they start stays in it or below it; the
//! owner's commands run in the daemon's. So a peer of Lifeboat's own user is let in only from
//! the daemon's user namespace. (Not the mount namespace: `ip netns exec`, systemd's
//! `PrivateTmp=` and the like give the daemon a mount namespace of its own, and the owner's
//! commands from a shell must still get in.)

use std::path::PathBuf;

use axum::serve::Listener;
use tokio::net::{UnixListener, UnixStream};

/// A [`UnixListener`] that drops connections from the site's own processes.
pub(crate) struct OwnerListener {
    inner: UnixListener,
    my_namespace: Option<PathBuf>,
}

impl OwnerListener {
    pub(crate) fn new(inner: UnixListener) -> OwnerListener {
        OwnerListener {
            inner,
            my_namespace: std::fs::read_link("/proc/self/ns/user").ok(),
        }
    }

    /// Whether the peer may drive the site.
    fn admits(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        if cred.uid() != nix::unistd::Uid::effective().as_raw() {
            // Another user got through the file permissions: root.
            return true;
        }
        let Some(pid) = cred.pid() else {
            return false;
        };
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
        theirs.is_some() && theirs == self.my_namespace
    }
}

impl Listener for OwnerListener {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.admits(&stream) {
                        return (stream, addr);
                    }
                    tracing::warn!(
                        "refused a connection to the control socket from a process outside \
                         lifeboat's user namespace (a process of the site?)"
                    );
                }
                Err(e) => {
                    tracing::warn!("accepting on the control socket failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
