//! The eight governors, one per file.

pub mod billing;
pub mod compliance;
pub mod customer_account;
pub mod entitlement;
pub mod multi_tenant;
pub mod product_catalog;
pub mod quota_sla;
pub mod subscription;
