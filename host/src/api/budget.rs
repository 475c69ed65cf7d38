//! Request bodies in flight: how many are being received at once and how
//! many of their bytes the server holds, per tenant and over every tenant.
//!
//! A body is admitted only when both its tenant's budget and the server's
//! have room: a slot is taken before the first byte is read, and bytes are
//! claimed before they are kept (the declared `Content-Length` at once, so a
//! body that can never fit is refused before it is read; chunk by chunk for
//! a body of unknown length). A [`BodyPermit`] gives everything back when it
//! is dropped, which is after the handler is done with the bytes. So a crowd
//! of clients each sending most of a large body and never the rest holds at
//! most the budget, not the crowd's sum, and the body deadline
//! (`body_read_timeout_ms`) frees their slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One budget: bodies and bytes in flight, with their limits.
#[derive(Debug)]
pub struct BodyBudget {
    /// Whose budget, for messages ("tenant `acme`", "the server").
    owner: String,
    /// The config keys that set the limits, for messages.
    keys: (&'static str, &'static str),
    max_bodies: usize,
    max_bytes: u64,
    bodies: AtomicUsize,
    bytes: AtomicU64,
}

/// A budget had no room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExceeded {
    /// Every body slot is taken.
    #[error("{owner} is already receiving {limit} request bodies, its limit (`{key}`); retry later")]
    Bodies {
        /// Whose budget.
        owner: String,
        /// The config key.
        key: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The bytes would not fit now.
    #[error(
        "{owner} holds {held} bytes of request bodies and this one needs {wanted} more; its limit is {limit} bytes (`{key}`); retry later"
    )]
    Bytes {
        /// Whose budget.
        owner: String,
        /// The config key.
        key: &'static str,
        /// Bytes held by other bodies.
        held: u64,
        /// Bytes this body asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// The body is larger than the whole budget: it can never fit.
    #[error("the request body of {wanted} bytes is larger than all {owner} may hold at once, {limit} bytes (`{key}`)")]
    Never {
        /// Whose budget.
        owner: String,
        /// The config key.
        key: &'static str,
        /// Bytes this body asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
}

impl BudgetExceeded {
    /// True when the tenant's own budget refused (not the server's).
    pub fn is_tenant(&self) -> bool {
        let owner = match self {
            BudgetExceeded::Bodies { owner, .. } | BudgetExceeded::Bytes { owner, .. } | BudgetExceeded::Never { owner, .. } => owner,
        };
        owner.starts_with("tenant")
    }
}

impl BodyBudget {
    /// A budget of `max_bodies` bodies and `max_bytes` bytes; `keys` name
    /// the config keys of the two limits.
    pub fn new(owner: impl Into<String>, keys: (&'static str, &'static str), max_bodies: usize, max_bytes: u64) -> Arc<Self> {
        Arc::new(BodyBudget {
            owner: owner.into(),
            keys,
            max_bodies,
            max_bytes,
            bodies: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// Bodies and bytes in flight now.
    #[cfg(test)]
    fn in_flight(&self) -> (usize, u64) {
        (self.bodies.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    fn take_slot(&self) -> Result<(), BudgetExceeded> {
        self.bodies
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_bodies).then_some(n + 1))
            .map(drop)
            .map_err(|_| BudgetExceeded::Bodies {
                owner: self.owner.clone(),
                key: self.keys.0,
                limit: self.max_bodies,
            })
    }

    fn take_bytes(&self, wanted: u64) -> Result<(), BudgetExceeded> {
        if wanted > self.max_bytes {
            return Err(BudgetExceeded::Never {
                owner: self.owner.clone(),
                key: self.keys.1,
                wanted,
                limit: self.max_bytes,
            });
        }
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(wanted).filter(|&after| after <= self.max_bytes)
            })
            .map(drop)
            .map_err(|held| BudgetExceeded::Bytes {
                owner: self.owner.clone(),
                key: self.keys.1,
                held,
                wanted,
                limit: self.max_bytes,
            })
    }
}

/// One body's slot and bytes in every budget it was admitted by.
#[derive(Debug)]
pub struct BodyPermit {
    budgets: Vec<Arc<BodyBudget>>,
    bytes: u64,
}

impl BodyPermit {
    /// Take a slot in each of `budgets`, or none.
    pub fn acquire(budgets: &[&Arc<BodyBudget>]) -> Result<Self, BudgetExceeded> {
        let mut permit = BodyPermit {
            budgets: Vec::with_capacity(budgets.len()),
            bytes: 0,
        };
        for b in budgets {
            b.take_slot()?;
            // Pushed only once its slot is taken: dropping the permit gives
            // back exactly what it holds.
            permit.budgets.push(Arc::clone(b));
        }
        Ok(permit)
    }

    /// Claim `n` more bytes in every budget, or none.
    pub fn grow(&mut self, n: u64) -> Result<(), BudgetExceeded> {
        if n == 0 {
            return Ok(());
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if let Err(e) = b.take_bytes(n) {
                for earlier in &self.budgets[..i] {
                    earlier.bytes.fetch_sub(n, Ordering::AcqRel);
                }
                return Err(e);
            }
        }
        self.bytes += n;
        Ok(())
    }

    /// Bytes claimed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        for b in &self.budgets {
            b.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
            b.bodies.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> (Arc<BodyBudget>, Arc<BodyBudget>) {
        (
            BodyBudget::new("tenant `a`", ("max_bodies_in_flight", "max_body_mb_in_flight"), 2, 100),
            BodyBudget::new("the server", ("max_bodies_in_flight", "max_body_mb_in_flight"), 3, 150),
        )
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let (t, s) = budgets();
        let a = BodyPermit::acquire(&[&t, &s]).unwrap();
        let b = BodyPermit::acquire(&[&t, &s]).unwrap();
        let e = BodyPermit::acquire(&[&t, &s]).unwrap_err();
        assert!(e.is_tenant() && e.to_string().contains("2 request bodies"), "{e}");
        // The refused permit took nothing from the server's budget.
        assert_eq!(s.in_flight(), (2, 0));
        drop((a, b));
        assert_eq!((t.in_flight(), s.in_flight()), ((0, 0), (0, 0)));
    }

    #[test]
    fn bytes_are_bounded_all_or_nothing() {
        let (t, s) = budgets();
        let mut a = BodyPermit::acquire(&[&t, &s]).unwrap();
        a.grow(60).unwrap();
        let mut b = BodyPermit::acquire(&[&t, &s]).unwrap();
        let e = b.grow(50).unwrap_err();
        assert_eq!(
            e,
            BudgetExceeded::Bytes {
                owner: "tenant `a`".into(),
                key: "max_body_mb_in_flight",
                held: 60,
                wanted: 50,
                limit: 100
            }
        );
        b.grow(40).unwrap();
        assert_eq!((t.in_flight().1, s.in_flight().1), (100, 100));
        // Another tenant fills the server's budget: the server refuses, and
        // the first budget keeps nothing of the refused claim.
        let other = BodyBudget::new("tenant `b`", ("x", "y"), 5, 1000);
        let mut c = BodyPermit::acquire(&[&other, &s]).unwrap();
        let e = c.grow(51).unwrap_err();
        assert!(!e.is_tenant(), "{e}");
        assert_eq!(other.in_flight().1, 0);
        assert!(matches!(t.take_bytes(101), Err(BudgetExceeded::Never { .. })));
        drop((a, b, c));
        assert_eq!((t.in_flight(), s.in_flight(), other.in_flight()), ((0, 0), (0, 0), (0, 0)));
    }
}
