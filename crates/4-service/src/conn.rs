//! Bounds on what clients can hold (issue 9, defects 4 and 5).
//!
//! - **Slots.** At most `CONNECTIONS_MAX` connections; `ROOT_RESERVED` of
//!   them only for root. When the table is full, the connection idle the
//!   longest (waiting for its next request) is closed to make room: idle
//!   clients never lock others out.
//! - **Deadlines, not per-read timeouts.** A connection may wait at most
//!   `IDLE_MAX` for its next request, a request must arrive whole within
//!   `REQUEST_DEADLINE` of its first byte, and an answer must be taken by
//!   the client within `ANSWER_DEADLINE`, with no pause longer than
//!   `WRITE_STALL_MAX`: a client that sends or reads a byte now and then
//!   cannot hold a slot, a thread or memory for good.
//! - **Answer memory.** At most `ANSWERS_BUILDING_MAX` answers are built at
//!   once (each bounded by `query::QUERY_PATHS_MAX` paths), and encoded
//!   answers waiting to be written hold at most `ANSWER_BYTES_MAX` in all
//!   (one bigger answer goes alone).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Concurrent client connections, in all.
pub const CONNECTIONS_MAX: usize = 64;
/// Slots only root may take.
pub const ROOT_RESERVED: usize = 8;
/// Longest wait for the next request on an open connection.
pub const IDLE_MAX: Duration = Duration::from_secs(60);
/// A request must arrive whole within this long after its first byte.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// A client must take a whole answer within this long.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// ... and must take some of it at least this often: a client that stops
/// reading frees its answer's memory for others after this long.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(2);
/// Answers built at once (the rest wait their turn).
pub const ANSWERS_BUILDING_MAX: usize = 2;
/// Encoded answer bytes held for all clients at once.
pub const ANSWER_BYTES_MAX: usize = 64 << 20;
/// How long a request waits for its turn to build or send an answer.
pub const TURN_WAIT_MAX: Duration = Duration::from_secs(60);

struct Slot {
    id: u64,
    stream: UnixStream,
    root: bool,
    /// Waiting for a request since then; `None` while a request runs.
    idle_since: Option<Instant>,
}

#[derive(Default)]
pub struct Slots {
    table: Mutex<(u64, Vec<Slot>)>,
}

/// Why a connection was refused.
pub enum Refused {
    Busy,
}

impl Slots {
    /// Takes a slot for a new connection, closing the longest-idle one if
    /// the table is full. Returns the slot id.
    pub fn admit(&self, stream: &UnixStream, root: bool) -> Result<u64, Refused> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        // The last ROOT_RESERVED slots are root's.
        let limit = if root {
            CONNECTIONS_MAX
        } else {
            CONNECTIONS_MAX - ROOT_RESERVED
        };
        if t.1.len() >= limit {
            let idle =
                t.1.iter()
                    .enumerate()
                    .filter(|(_, s)| root || !s.root)
                    .filter_map(|(i, s)| s.idle_since.map(|at| (at, i)))
                    .min();
            let Some((_, i)) = idle else {
                return Err(Refused::Busy);
            };
            let victim = t.1.swap_remove(i);
            // Its thread sees end of input and leaves.
            let _ = victim.stream.shutdown(std::net::Shutdown::Both);
        }
        let stream = stream.try_clone().map_err(|_| Refused::Busy)?;
        t.0 += 1;
        let id = t.0;
        t.1.push(Slot {
            id,
            stream,
            root,
            idle_since: Some(Instant::now()),
        });
        Ok(id)
    }

    pub fn set_idle(&self, id: u64, idle: bool) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = t.1.iter_mut().find(|s| s.id == id) {
            s.idle_since = idle.then(Instant::now);
        }
    }

    pub fn release(&self, id: u64) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.1.retain(|s| s.id != id);
    }

    pub fn count(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }
}

/// What reading a request gave.
pub enum Request {
    Line,
    End,
    TooLong,
}

/// Reads one request line into `line` under the deadlines above. The slot
/// counts as busy from the first byte on.
pub fn read_request(
    input: &mut BufReader<UnixStream>,
    line: &mut Vec<u8>,
    limit: usize,
    mut first_byte: impl FnMut(),
) -> io::Result<Request> {
    line.clear();
    let idle_deadline = Instant::now() + IDLE_MAX;
    let mut deadline = idle_deadline;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"));
        }
        input.get_ref().set_read_timeout(Some(deadline - now))?;
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(Request::End);
        }
        if line.is_empty() {
            first_byte();
            deadline = Instant::now() + REQUEST_DEADLINE;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        input.consume(take);
        if line.len() > limit {
            return Ok(Request::TooLong);
        }
        if done {
            return Ok(Request::Line);
        }
    }
}

/// Input read and dropped after refusing a request, at most.
const DRAIN_BYTES_MAX: usize = 4 << 20;
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Ends our side and discards what the client is still sending (bounded
/// in bytes and time), so that closing does not reset the connection
/// before the client has read our last answer.
pub fn drain(input: &mut BufReader<UnixStream>) {
    use std::io::Read;
    let _ = input.get_ref().shutdown(std::net::Shutdown::Write);
    let _ = input.get_ref().set_read_timeout(Some(DRAIN_WAIT));
    let mut sink = [0u8; 64 * 1024];
    let mut total = 0;
    while total < DRAIN_BYTES_MAX {
        match input.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// A socket writer that fails once `deadline` has passed, however the
/// client paces its reads.
pub struct DeadlineWriter {
    stream: UnixStream,
    deadline: Instant,
}

impl DeadlineWriter {
    pub fn new(stream: UnixStream) -> DeadlineWriter {
        DeadlineWriter {
            stream,
            deadline: Instant::now() + ANSWER_DEADLINE,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Starts the clock for the next answer.
    pub fn restart(&mut self) {
        self.deadline = Instant::now() + ANSWER_DEADLINE;
    }
}

impl Write for DeadlineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client did not take its answer in time",
            ));
        }
        self.stream
            .set_write_timeout(Some((self.deadline - now).min(WRITE_STALL_MAX)))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// A counted budget with waiting (a semaphore over units).
pub struct Budget {
    capacity: usize,
    used: Mutex<usize>,
    cv: Condvar,
}

pub struct Permit<'a> {
    budget: &'a Budget,
    units: usize,
}

impl Budget {
    pub const fn new(capacity: usize) -> Budget {
        Budget {
            capacity,
            used: Mutex::new(0),
            cv: Condvar::new(),
        }
    }

    /// Takes `units` (a request for more than the capacity gets the whole
    /// budget once it is free). `None` after `TURN_WAIT_MAX`.
    pub fn take(&self, units: usize) -> Option<Permit<'_>> {
        let units = units.min(self.capacity);
        let deadline = Instant::now() + TURN_WAIT_MAX;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + units > self.capacity {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            used = self
                .cv
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += units;
        Some(Permit {
            budget: self,
            units,
        })
    }
}

impl Budget {
    /// Takes `units` now, or `None` if they are not free.
    pub fn try_take(&self, units: usize) -> Option<Permit<'_>> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if *used + units > self.capacity {
            return None;
        }
        *used += units;
        Some(Permit {
            budget: self,
            units,
        })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.units;
        self.budget.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_evicts_the_longest_idle_and_keeps_room_for_root() {
        let slots = Slots::default();
        let mut pairs = Vec::new();
        for _ in 0..CONNECTIONS_MAX - ROOT_RESERVED {
            let (a, b) = UnixStream::pair().unwrap();
            let id = slots.admit(&a, false).ok().unwrap();
            slots.set_idle(id, false); // busy
            pairs.push((a, b, id));
        }
        let (x, _y) = UnixStream::pair().unwrap();
        assert!(slots.admit(&x, false).is_err(), "non-root past its share");
        let root = slots.admit(&x, true).ok().expect("root gets through");
        slots.set_idle(root, false);
        // One idle non-root connection: the next one takes its slot.
        slots.set_idle(pairs[3].2, true);
        let (z, _w) = UnixStream::pair().unwrap();
        assert!(slots.admit(&z, false).is_ok());
        // The evicted connection was shut down: its peer reads end of input.
        let mut b = [0u8; 1];
        use std::io::Read;
        assert_eq!((&pairs[3].1).read(&mut b).unwrap(), 0);
        assert_eq!(slots.count(), CONNECTIONS_MAX - ROOT_RESERVED + 1);
    }

    #[test]
    fn a_budget_waits_and_caps_big_requests() {
        let b = Budget::new(10);
        let p = b.take(7).unwrap();
        assert_eq!(p.units, 7);
        drop(p);
        let whole = b.take(100).unwrap();
        assert_eq!(whole.units, 10);
    }
}
