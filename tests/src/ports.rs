//! Free TCP ports on 127.0.0.1.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

use rand::Rng;

/// Where ports are drawn from: below the kernel's ephemeral range (32768 and up on Linux), so
/// that no outgoing connection can take a handed-out port as its source port between this
/// check and the program's own bind (which then fails with "address in use"; the agents and
/// PostgreSQL open many connections while a cluster starts), and above the well-known ports and
/// the programs' defaults (5432, 8000, 9000, 2379, ...).
const RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A port on 127.0.0.1 that nothing listened on a moment ago and that this process has not handed
/// out before (two nodes of one test must never get the same one).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(RANGE);
        if handed_out.lock().unwrap().contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.lock().unwrap().insert(port);
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| RANGE.contains(p)), "{ports:?}");
    }
}
