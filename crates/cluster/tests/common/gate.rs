//! A TCP forwarder on loopback between one client and one etcd member, which a test can cut:
//! the client's node is then partitioned from etcd while everyone else still reaches it.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Traffic flows.
    Open,
    /// Connections are closed at once (as a refused or reset connection).
    Closed,
    /// Connections are accepted and never answered (as a network that drops packets).
    Blackhole,
}

struct State {
    mode: Mode,
    conns: Vec<JoinHandle<()>>,
}

/// A gate in front of `target`, listening on its own loopback port.
pub struct Gate {
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl Gate {
    pub async fn open(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Open,
            conns: Vec::new(),
        }));
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut st = st.lock().unwrap();
                match st.mode {
                    Mode::Closed => drop(inbound),
                    Mode::Blackhole => st.conns.push(tokio::spawn(async move {
                        let _held = inbound;
                        std::future::pending::<()>().await
                    })),
                    Mode::Open => st.conns.push(tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    })),
                }
            }
        });
        Gate {
            port,
            state,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sets the mode; leaving `Open` breaks every connection already made.
    pub fn set(&self, mode: Mode) {
        let mut st = self.state.lock().unwrap();
        st.mode = mode;
        if mode != Mode::Open {
            for c in st.conns.drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.state.lock().unwrap().conns.drain(..) {
            c.abort();
        }
    }
}
