//! What the mock servers share: a listener on 127.0.0.1:0 served on the fixture's
//! runtime, the record of every request received (for the tests to inspect), and a
//! [`Fault`] switch the soak flips (the listener closes for [`Fault::Refuse`]; the auth
//! service answers the others, see [`crate::mock_auth`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::client::RecordedRequest;

/// How a mock misbehaves (the soak's phases). `None`: as scripted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every answer is `500`.
    Status500,
    /// The listener is closed (connections are refused) and open connections are dropped.
    Refuse,
    /// Requests are read and never answered (until the fault ends; then the connection
    /// is closed).
    Hang,
    /// `NOT HTTP AT ALL` and close.
    Garbage,
}

/// Called with every request a mock handles (the soak checks what arrived as it arrives).
pub type Observer = Arc<dyn Fn(&RecordedRequest) + Send + Sync>;

struct Inner {
    requests: Mutex<Vec<RecordedRequest>>,
    count: AtomicUsize,
    keep: AtomicBool,
    observer: Mutex<Option<Observer>>,
    fault: watch::Sender<Fault>,
}

/// The shared record a connection handler appends to (cheap to clone).
#[derive(Clone)]
pub struct Records(Arc<Inner>);

impl Records {
    fn new() -> Records {
        Records(Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            keep: AtomicBool::new(true),
            observer: Mutex::new(None),
            fault: watch::channel(Fault::None).0,
        }))
    }

    /// Records `req` (kept unless [`MockServer::keep_records`] turned that off) and shows
    /// it to the observer.
    pub fn push(&self, req: RecordedRequest) {
        if let Some(observe) = self.0.observer.lock().expect("observer").clone() {
            observe(&req);
        }
        self.0.count.fetch_add(1, Ordering::SeqCst);
        if self.0.keep.load(Ordering::Relaxed) {
            self.0.requests.lock().expect("mock records").push(req);
        }
    }

    /// Whether a kept request satisfies `pred`.
    pub fn any(&self, pred: impl Fn(&RecordedRequest) -> bool) -> bool {
        self.0.requests.lock().expect("mock records").iter().any(pred)
    }

    /// How many kept requests satisfy `pred`.
    pub fn count_matching(&self, pred: impl Fn(&RecordedRequest) -> bool) -> usize {
        self.0.requests.lock().expect("mock records").iter().filter(|r| pred(r)).count()
    }

    /// The fault in force now.
    pub fn fault(&self) -> Fault {
        *self.0.fault.borrow()
    }

    /// Waits until the fault is no longer `fault`.
    pub async fn fault_ends(&self, fault: Fault) {
        let mut rx = self.0.fault.subscribe();
        let _ = rx.wait_for(|f| *f != fault).await;
    }

    async fn fault_begins(&self, fault: Fault) {
        let mut rx = self.0.fault.subscribe();
        let _ = rx.wait_for(|f| *f == fault).await;
    }
}

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
        let requests = Records::new();
        let recorded = requests.clone();
        rt.spawn(async move {
            let mut listener = Some(TcpListener::from_std(listener).expect("tokio listener"));
            loop {
                let Some(open) = &listener else {
                    // Refusing: wait for the fault to end, then listen on the same port again.
                    recorded.fault_ends(Fault::Refuse).await;
                    listener = rebind(port).await;
                    continue;
                };
                let accepted = tokio::select! {
                    biased;
                    _ = recorded.fault_begins(Fault::Refuse) => {
                        listener = None;
                        continue;
                    }
                    accepted = open.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let served = serve(stream, recorded.clone());
                let records = recorded.clone();
                // A refusing server also drops the connections it has.
                tokio::spawn(async move {
                    tokio::select! {
                        biased;
                        _ = records.fault_begins(Fault::Refuse) => {}
                        _ = served => {}
                    }
                });
            }
        });
        MockServer { port, requests, role }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far, in arrival order (only those kept).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.0.requests.lock().expect("mock records").clone()
    }

    /// The requests received after the first `before` (as [`MockServer::count`] was then),
    /// in arrival order: what arrived since.
    pub fn requests_since(&self, before: usize) -> Vec<RecordedRequest> {
        let requests = self.requests.0.requests.lock().expect("mock records");
        requests.get(before..).unwrap_or_default().to_vec()
    }

    /// How many requests arrived (kept or not).
    pub fn count(&self) -> usize {
        self.requests.0.count.load(Ordering::SeqCst)
    }

    /// The most recent request; panics if there was none.
    pub fn last(&self) -> RecordedRequest {
        self.requests().pop().unwrap_or_else(|| panic!("{} received no request", self.role))
    }

    /// Whether to keep every request for [`MockServer::requests`] (default); a long
    /// run turns it off and counts (and observes) only.
    pub fn keep_records(&self, keep: bool) {
        self.requests.0.keep.store(keep, Ordering::Relaxed);
    }

    /// Shows every request from now on to `observer` before it is answered.
    pub fn observe(&self, observer: Observer) {
        *self.requests.0.observer.lock().expect("observer") = Some(observer);
    }

    /// Switches the fault (see [`Fault`]); takes effect for the next request (and, for
    /// `Refuse`, at once for the listener and open connections).
    pub fn set_fault(&self, fault: Fault) {
        self.requests.0.fault.send_replace(fault);
    }
}

/// Binds `port` again (retried briefly: the old socket may linger for a moment).
async fn rebind(port: u16) -> Option<TcpListener> {
    for _ in 0..200 {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return Some(listener);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("cannot listen on 127.0.0.1:{port} again after a refuse phase");
}
