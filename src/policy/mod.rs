//! Route policy.
