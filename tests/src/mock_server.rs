//! What the two mock servers share: a listener on 127.0.0.1:0 served on the fixture's
//! runtime, and the record of every request received, for the tests to inspect.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::client::RecordedRequest;

/// The shared record a connection handler appends to.
pub type Records = Arc<Mutex<Vec<RecordedRequest>>>;

/// Handle on a running mock server; cheap to clone.
#[derive(Clone)]
pub struct MockServer {
    port: u16,
    requests: Records,
    /// Who it is, for failure messages ("the auth service").
    role: &'static str,
}

impl MockServer {
    /// Binds 127.0.0.1:0 and runs `serve` on `rt` for each accepted connection.
    pub fn start<F, Fut>(rt: &Runtime, role: &'static str, serve: F) -> MockServer
    where
        F: Fn(TcpStream, Records) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {role}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Records::default();
        let recorded = requests.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, recorded.clone()));
            }
        });
        MockServer { port, requests, role }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("mock records").clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("mock records").len()
    }

    /// The most recent request; panics if there was none.
    pub fn last(&self) -> RecordedRequest {
        self.requests().pop().unwrap_or_else(|| panic!("{} received no request", self.role))
    }
}
