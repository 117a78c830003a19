//! The host in memory, for the flow's native tests: every call is recorded with the
//! context it acted on, and what the host answers is scripted (callout answers, refused
//! calls, CAS conflicts on shared data, the clock). Shared data is one map, so several
//! workers (several [`Worker`](crate::flow::worker::Worker)s over one `MockHost`) see
//! each other's writes, as Envoy's workers do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::flow::host::{Body, Host, Map, Refused};

pub type Pairs = Vec<(String, Vec<u8>)>;

/// How a stream's request ended, in the order the host was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Reply { status: u32, headers: Vec<(String, String)>, body: Option<Vec<u8>> },
    Resume,
}

/// One client stream as the host holds it.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    pub request: Pairs,
    pub trailers: Pairs,
    pub response: Pairs,
    pub body: Vec<u8>,
    /// `source.address`, `connection.mtls`...
    pub properties: HashMap<String, Vec<u8>>,
    pub ends: Vec<End>,
    /// The stream went away (reset, or completed): `enter` fails.
    pub gone: bool,
    /// Every filter-state write (`set_filter_state`), in order: (name, value).
    pub filter_state: Vec<(String, Vec<u8>)>,
}

/// A call the filter sent (`dispatch`).
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub token: u32,
    /// The effective context when it was sent.
    pub context: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// A host call that can be scripted to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fails {
    HeaderMap(Map),
    AddHeader,
    SetHeader,
    RemoveHeader(Map),
    Dispatch,
    Reply,
    Resume,
    Body,
    TickPeriod,
    Property,
}

#[derive(Default)]
struct State {
    now_ms: u64,
    effective: u32,
    streams: BTreeMap<u32, Stream>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    next_token: u32,
    dispatched: Vec<Dispatched>,
    /// The answer being delivered (`on_http_call_response`): headers and body.
    answer: Option<(Pairs, Vec<u8>)>,
    fails: HashSet<Fails>,
    /// The next CAS writes that lose their race (another worker wrote first).
    cas_conflicts: u32,
    counters: Vec<(String, u64)>,
    /// Each histogram's name and every sample recorded in it.
    histograms: Vec<(String, Vec<u64>)>,
    tick_period: Option<Duration>,
    /// Every host call's name and the effective context, in order.
    log: Vec<(u32, &'static str)>,
}

#[derive(Default)]
pub struct MockHost {
    state: RefCell<State>,
}

/// The ABI's serialized header map (count, lengths, NUL-terminated strings).
pub fn serialize(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(value);
        out.push(0);
    }
    out
}

impl MockHost {
    pub fn new(now_ms: u64) -> MockHost {
        let host = MockHost::default();
        host.state.borrow_mut().now_ms = now_ms;
        host.state.borrow_mut().next_token = 1;
        host
    }

    fn record(&self, call: &'static str) {
        let mut state = self.state.borrow_mut();
        let effective = state.effective;
        state.log.push((effective, call));
    }

    fn failing(&self, call: Fails) -> bool {
        self.state.borrow().fails.contains(&call)
    }

    /// Opens a stream `id` with these request headers; it becomes the effective context.
    pub fn open(&self, id: u32, request: Pairs) {
        let mut state = self.state.borrow_mut();
        state.streams.insert(id, Stream { request, ..Stream::default() });
        state.effective = id;
    }

    pub fn set_property(&self, id: u32, path: &str, value: &[u8]) {
        self.state.borrow_mut().streams.entry(id).or_default().properties.insert(path.to_string(), value.to_vec());
    }

    pub fn set_trailers(&self, id: u32, trailers: Pairs) {
        self.state.borrow_mut().streams.entry(id).or_default().trailers = trailers;
    }

    pub fn set_response(&self, id: u32, response: Pairs) {
        self.state.borrow_mut().streams.entry(id).or_default().response = response;
    }

    pub fn push_body(&self, id: u32, bytes: &[u8]) -> usize {
        let mut state = self.state.borrow_mut();
        let stream = state.streams.entry(id).or_default();
        stream.body.extend_from_slice(bytes);
        stream.body.len()
    }

    /// The stream went away: later `enter`s into it fail.
    pub fn close(&self, id: u32) {
        if let Some(stream) = self.state.borrow_mut().streams.get_mut(&id) {
            stream.gone = true;
        }
    }

    /// Makes `id` the effective context, as the host does before calling back into it.
    pub fn call_into(&self, id: u32) {
        self.state.borrow_mut().effective = id;
    }

    /// The answer the next `on_http_call_response` reads (`None`: Envoy's reset, no headers).
    pub fn answering(&self, answer: Option<(Pairs, Vec<u8>)>) {
        self.state.borrow_mut().answer = answer;
    }

    pub fn fail(&self, call: Fails) {
        self.state.borrow_mut().fails.insert(call);
    }

    /// The host makes `call` again.
    pub fn recover(&self, call: Fails) {
        self.state.borrow_mut().fails.remove(&call);
    }

    pub fn cas_conflicts(&self, n: u32) {
        self.state.borrow_mut().cas_conflicts = n;
    }

    pub fn advance(&self, ms: u64) {
        self.state.borrow_mut().now_ms += ms;
    }

    pub fn stream(&self, id: u32) -> Stream {
        self.state.borrow().streams.get(&id).cloned().unwrap_or_default()
    }

    pub fn dispatched(&self) -> Vec<Dispatched> {
        self.state.borrow().dispatched.clone()
    }

    pub fn call(&self, token: u32) -> Option<Dispatched> {
        self.state.borrow().dispatched.iter().find(|d| d.token == token).cloned()
    }

    pub fn tick_period(&self) -> Option<Duration> {
        self.state.borrow().tick_period
    }

    /// What the counters were handed (flushed), by name.
    pub fn counter(&self, name: &str) -> u64 {
        self.state.borrow().counters.iter().filter(|(n, _)| n == name).map(|(_, v)| *v).sum()
    }

    /// The samples recorded in the histogram `name`.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.state.borrow().histograms.iter().filter(|(n, _)| n == name).flat_map(|(_, v)| v.clone()).collect()
    }

    /// The host calls made while `id` was the effective context.
    pub fn calls_in(&self, id: u32) -> Vec<&'static str> {
        self.state.borrow().log.iter().filter(|(c, _)| *c == id).map(|(_, call)| *call).collect()
    }

    fn map_of(stream: &mut Stream, map: Map) -> Option<&mut Pairs> {
        match map {
            Map::RequestHeaders => Some(&mut stream.request),
            Map::RequestTrailers => Some(&mut stream.trailers),
            Map::ResponseHeaders => Some(&mut stream.response),
            Map::CalloutAnswer => None,
        }
    }

    fn with_map<T>(&self, map: Map, f: impl FnOnce(&mut Pairs) -> T) -> Option<T> {
        let mut state = self.state.borrow_mut();
        let effective = state.effective;
        if map == Map::CalloutAnswer {
            return state.answer.as_mut().map(|(headers, _)| f(headers));
        }
        let stream = state.streams.get_mut(&effective)?;
        Self::map_of(stream, map).map(f)
    }
}

impl Host for MockHost {
    fn header_map(&self, map: Map) -> Option<Vec<u8>> {
        self.record("header_map");
        if self.failing(Fails::HeaderMap(map)) {
            return None;
        }
        if map == Map::CalloutAnswer && self.state.borrow().answer.is_none() {
            // Envoy reports a reset callout with no headers at all.
            return Some(Vec::new());
        }
        self.with_map(map, |pairs| serialize(pairs))
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.record("header");
        self.with_map(map, |pairs| pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()))
            .flatten()
    }

    fn add_header(&self, map: Map, name: &str, value: &[u8]) -> Result<(), Refused> {
        self.record("add_header");
        if self.failing(Fails::AddHeader) {
            return Err(Refused::InternalFailure);
        }
        self.with_map(map, |pairs| pairs.push((name.to_ascii_lowercase(), value.to_vec()))).ok_or(Refused::NotFound)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&[u8]>) -> Result<(), Refused> {
        self.record("set_header");
        if self.failing(Fails::SetHeader) {
            return Err(Refused::InternalFailure);
        }
        self.with_map(map, |pairs| {
            let at = pairs.iter().position(|(n, _)| n.eq_ignore_ascii_case(name));
            pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            if let Some(value) = value {
                let entry = (name.to_ascii_lowercase(), value.to_vec());
                match at {
                    Some(at) => pairs.insert(at.min(pairs.len()), entry),
                    None => pairs.push(entry),
                }
            }
        })
        .ok_or(Refused::NotFound)
    }

    fn remove_header(&self, map: Map, name: &str) -> Result<(), Refused> {
        self.record("remove_header");
        if self.failing(Fails::RemoveHeader(map)) {
            return Err(Refused::InternalFailure);
        }
        self.with_map(map, |pairs| pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name))).ok_or(Refused::NotFound)
    }

    fn body(&self, body: Body, len: usize) -> Result<Vec<u8>, Refused> {
        self.record("body");
        if self.failing(Fails::Body) {
            return Err(Refused::InternalFailure);
        }
        let state = self.state.borrow();
        let bytes = match body {
            Body::Request => state.streams.get(&state.effective).map(|s| s.body.clone()).unwrap_or_default(),
            Body::CalloutAnswer => state.answer.as_ref().map(|(_, b)| b.clone()).unwrap_or_default(),
        };
        Ok(bytes[..len.min(bytes.len())].to_vec())
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Refused> {
        self.record("dispatch");
        if self.failing(Fails::Dispatch) {
            return Err(Refused::BadArgument);
        }
        let mut state = self.state.borrow_mut();
        let token = state.next_token;
        state.next_token += 1;
        let context = state.effective;
        state.dispatched.push(Dispatched {
            token,
            context,
            cluster: cluster.to_string(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn reply(&self, status: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Refused> {
        self.record("reply");
        if self.failing(Fails::Reply) {
            return Err(Refused::InternalFailure);
        }
        let mut state = self.state.borrow_mut();
        let effective = state.effective;
        let stream = state.streams.get_mut(&effective).ok_or(Refused::NotFound)?;
        stream.ends.push(End::Reply {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.map(<[u8]>::to_vec),
        });
        Ok(())
    }

    fn resume(&self) -> Result<(), Refused> {
        self.record("resume");
        if self.failing(Fails::Resume) {
            return Err(Refused::InternalFailure);
        }
        let mut state = self.state.borrow_mut();
        let effective = state.effective;
        let stream = state.streams.get_mut(&effective).ok_or(Refused::NotFound)?;
        stream.ends.push(End::Resume);
        Ok(())
    }

    fn enter(&self, context: u32) -> Result<(), Refused> {
        self.record("enter");
        let mut state = self.state.borrow_mut();
        // Root contexts (no stream) can always be entered.
        match state.streams.get(&context) {
            Some(stream) if stream.gone => Err(Refused::NotFound),
            _ => {
                state.effective = context;
                Ok(())
            }
        }
    }

    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Refused> {
        self.record("shared_get");
        let state = self.state.borrow();
        Ok(match state.shared.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Refused> {
        self.record("shared_set");
        let mut state = self.state.borrow_mut();
        if let Some(cas) = cas {
            if state.cas_conflicts > 0 {
                state.cas_conflicts -= 1;
                return Err(Refused::CasMismatch);
            }
            if state.shared.get(key).is_some_and(|(_, current)| *current != cas) {
                return Err(Refused::CasMismatch);
            }
        }
        state.next_cas += 1;
        let next = state.next_cas;
        state.shared.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }

    fn read_property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Refused> {
        self.record("property");
        if self.failing(Fails::Property) {
            return Err(Refused::InternalFailure);
        }
        let state = self.state.borrow();
        Ok(state.streams.get(&state.effective).and_then(|s| s.properties.get(&path.join(".")).cloned()))
    }

    fn now_ms(&self) -> u64 {
        self.state.borrow().now_ms
    }

    fn now_us(&self) -> u64 {
        self.record("now_us");
        self.state.borrow().now_ms * 1000
    }

    fn set_filter_state(&self, name: &str, value: &[u8]) -> Result<(), Refused> {
        self.record("set_filter_state");
        let mut state = self.state.borrow_mut();
        let effective = state.effective;
        let stream = state.streams.get_mut(&effective).ok_or(Refused::NotFound)?;
        stream.filter_state.push((name.to_string(), value.to_vec()));
        Ok(())
    }

    fn set_tick_period(&self, period: Duration) -> Result<(), Refused> {
        self.record("set_tick_period");
        if self.failing(Fails::TickPeriod) {
            return Err(Refused::InternalFailure);
        }
        self.state.borrow_mut().tick_period = Some(period);
        Ok(())
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        let mut state = self.state.borrow_mut();
        state.counters.push((name.to_string(), 0));
        Some(state.counters.len() as u32 - 1)
    }

    fn add_to_counter(&self, id: u32, n: u64) {
        if let Some((_, value)) = self.state.borrow_mut().counters.get_mut(id as usize) {
            *value += n;
        }
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        let mut state = self.state.borrow_mut();
        state.histograms.push((name.to_string(), Vec::new()));
        Some(state.histograms.len() as u32 - 1)
    }

    fn record_histogram(&self, id: u32, value: u64) {
        self.record("record_histogram");
        if let Some((_, samples)) = self.state.borrow_mut().histograms.get_mut(id as usize) {
            samples.push(value);
        }
    }
}
