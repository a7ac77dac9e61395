//! Admission: the connection limit and the per-IP limit, checked before any byte is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::options::Options;

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    ConnectionLimit,
    PerIpLimit,
}

/// The group an address is limited by: an IPv4 address, or an IPv6 /56.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6((u128::from(v6) >> 72) as u64),
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct Admission {
    connection_limit: usize,
    per_ip_limit: usize,
    limit_loopback: bool,
    active: AtomicUsize,
    per_ip: Mutex<HashMap<IpKey, usize>>,
    /// Woken whenever the last slot is given back.
    idle: Notify,
}

impl Admission {
    pub(crate) fn new(options: &Options) -> Arc<Admission> {
        Arc::new(Admission {
            connection_limit: options.connection_limit(),
            per_ip_limit: options.connections_per_ip(),
            limit_loopback: options.per_ip_limit_on_loopback(),
            active: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            idle: Notify::new(),
        })
    }

    /// Connections holding a slot now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn release(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no slot is held: every client closed, no handshake in progress.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Applies the per-IP limit to a slot admitted without an address (a connection from a
    /// trusted proxy), now that the original client's address is known.
    pub(crate) fn limit_ip(&self, slot: &mut Slot, ip: IpAddr) -> Result<(), Rejection> {
        if slot.key.is_some() || (!self.limit_loopback && ip.is_loopback()) {
            return Ok(());
        }
        let key = IpKey::of(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_ip.entry(key).or_insert(0);
        if *count >= self.per_ip_limit {
            if *count == 0 {
                per_ip.remove(&key);
            }
            return Err(Rejection::PerIpLimit);
        }
        *count += 1;
        slot.key = Some(key);
        Ok(())
    }

    /// A slot for a connection from `ip` (`None`: a unix socket) over `transport`, or why there
    /// is none.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        transport: Transport,
    ) -> Result<Slot, Rejection> {
        let reserved = self.active.fetch_add(1, Ordering::AcqRel);
        if reserved >= self.connection_limit {
            self.release();
            return Err(Rejection::ConnectionLimit);
        }
        let key = ip
            .filter(|ip| self.limit_loopback || !ip.is_loopback())
            .map(IpKey::of);
        if let Some(key) = key {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = per_ip.entry(key).or_insert(0);
            if *count >= self.per_ip_limit {
                if *count == 0 {
                    per_ip.remove(&key);
                }
                drop(per_ip);
                self.release();
                return Err(Rejection::PerIpLimit);
            }
            *count += 1;
        }
        #[cfg(feature = "metrics")]
        metrics::gauge!(crate::telemetry::ACTIVE_CONNECTIONS, "network.transport" => transport.label())
            .increment(1.0);
        #[cfg(not(feature = "metrics"))]
        let _ = transport;
        Ok(Slot {
            admission: self.clone(),
            key,
            #[cfg(feature = "metrics")]
            admitted: std::time::Instant::now(),
            #[cfg(feature = "metrics")]
            transport,
        })
    }
}

/// What a connection came over: the `network.transport` label of the connection metrics
/// (OpenTelemetry's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Unix,
    #[cfg_attr(not(feature = "http3"), allow(dead_code))]
    Quic,
}

impl Transport {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
            Transport::Quic => "quic",
        }
    }
}

/// A connection's place under the limits; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    key: Option<IpKey>,
    #[cfg(feature = "metrics")]
    admitted: std::time::Instant,
    #[cfg(feature = "metrics")]
    transport: Transport,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_ip = self
                .admission
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.admission.release();
        #[cfg(feature = "metrics")]
        {
            use crate::telemetry::{ACTIVE_CONNECTIONS, CONNECTION_DURATION};
            let transport = self.transport.label();
            metrics::gauge!(ACTIVE_CONNECTIONS, "network.transport" => transport).decrement(1.0);
            metrics::histogram!(CONNECTION_DURATION, "network.transport" => transport)
                .record(self.admitted.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(limit: usize, per_ip: usize, loopback: bool) -> Arc<Admission> {
        Admission::new(
            &Options::default()
                .with_connection_limit(limit)
                .with_connections_per_ip(per_ip)
                .with_per_ip_limit_on_loopback(loopback),
        )
    }

    #[test]
    fn ipv6_is_limited_by_slash_56_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:0:ff00::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:ffff::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:fe00::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::of("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn limits_and_slots_given_back() {
        let admission = admission(3, 2, false);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = admission.admit(Some(ip), Transport::Tcp).unwrap();
        let _second = admission.admit(Some(ip), Transport::Tcp).unwrap();
        assert_eq!(
            admission.admit(Some(ip), Transport::Tcp).unwrap_err(),
            Rejection::PerIpLimit
        );
        let _other = admission
            .admit(Some("192.0.2.2".parse().unwrap()), Transport::Tcp)
            .unwrap();
        assert_eq!(
            admission.admit(None, Transport::Unix).unwrap_err(),
            Rejection::ConnectionLimit
        );
        assert_eq!(admission.active(), 3);
        drop(first);
        assert_eq!(admission.active(), 2);
        let _again = admission.admit(Some(ip), Transport::Tcp).unwrap();
    }

    #[test]
    fn loopback_and_unix_are_exempt_unless_configured() {
        let exempt = admission(100, 1, false);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let _slots: Vec<_> = (0..5)
            .map(|_| exempt.admit(Some(lo), Transport::Tcp).unwrap())
            .collect();
        let _unix: Vec<_> = (0..5)
            .map(|_| exempt.admit(None, Transport::Unix).unwrap())
            .collect();
        let limited = admission(100, 1, true);
        let _one = limited.admit(Some(lo), Transport::Tcp).unwrap();
        assert_eq!(
            limited.admit(Some(lo), Transport::Tcp).unwrap_err(),
            Rejection::PerIpLimit
        );
    }
}
