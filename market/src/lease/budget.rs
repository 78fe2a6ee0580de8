//! A buyer's spending limits, enforced before anything is signed.

use serde::{Deserialize, Serialize};

use crate::Molt;

/// A buyer's spending limits, enforced before any transaction is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most one lease may cost.
    pub max_per_lease: Option<Molt>,
    /// Most all leases started in the last 24 hours may cost together.
    pub max_per_day: Option<Molt>,
}

/// A lease the budget does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// More than one lease may cost.
    #[error("the lease costs {cost} MOLT, more than the {limit} MOLT allowed per lease")]
    PerLease {
        /// The lease's cost.
        cost: Molt,
        /// The limit.
        limit: Molt,
    },
    /// More than is left of today's allowance.
    #[error(
        "the lease costs {cost} MOLT; {spent} MOLT was committed in the last 24 h of the {limit} MOLT allowed per day"
    )]
    PerDay {
        /// The lease's cost.
        cost: Molt,
        /// Committed in the last 24 hours.
        spent: Molt,
        /// The limit.
        limit: Molt,
    },
}

impl Budget {
    /// Whether a lease costing `cost` fits, with `spent_today` already committed in the last
    /// 24 hours.
    pub fn allows(&self, cost: Molt, spent_today: Molt) -> Result<(), BudgetError> {
        if let Some(limit) = self.max_per_lease
            && cost > limit
        {
            return Err(BudgetError::PerLease { cost, limit });
        }
        if let Some(limit) = self.max_per_day
            && spent_today
                .checked_add(cost)
                .is_none_or(|total| total > limit)
        {
            return Err(BudgetError::PerDay {
                cost,
                spent: spent_today,
                limit,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refuse_before_signing() {
        let budget = Budget {
            max_per_lease: Some(Molt::from_base_units(10_000_000)),
            max_per_day: Some(Molt::from_base_units(25_000_000)),
        };
        let cost = Molt::from_base_units(9_000_000);
        budget.allows(cost, Molt::default()).unwrap();
        assert!(matches!(
            budget.allows(Molt::from_base_units(11_000_000), Molt::default()),
            Err(BudgetError::PerLease { .. })
        ));
        assert!(matches!(
            budget.allows(cost, Molt::from_base_units(18_000_000)),
            Err(BudgetError::PerDay { .. })
        ));
        Budget::default()
            .allows(Molt::from_base_units(u64::MAX), Molt::from_base_units(1))
            .unwrap();
    }
}
