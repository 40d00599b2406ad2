//! The service around the cycle: the loop per directory (`run`), the retry schedule and
//! error classes (`retry`), the resync window (`window`), the config file (`config`), the
//! one-cycle-at-a-time lock (`lock`), the status operators see (`status`), the prunes
//! after cycles (`retention`) and the same state as Prometheus metrics (`metrics`).

pub mod config;
pub mod lock;
pub mod metrics;
pub mod retention;
pub mod retry;
pub mod run;
pub mod status;
pub mod systemd;
pub mod window;
