//! The app-consistency flags of `run` and `sync` (hooks around the point's seal).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::replicate::app::{AppHooks, DEFAULT_HOOK_TIMEOUT};
use crate::retain::policy::parse_duration;

#[derive(Args, Clone, Default)]
pub struct AppArgs {
    /// Shell command run just before the seal of an app-consistent point (a guest freeze:
    /// `virsh domfsfreeze NAME`, `fsfreeze -f MNT`); the point is app-consistent when it
    /// succeeds.
    #[arg(long, requires = "post_seal")]
    pub pre_seal: Option<String>,
    /// Shell command run just after that seal (the thaw), always once the pre hook started.
    #[arg(long, requires = "pre_seal")]
    pub post_seal: Option<String>,
    /// An app-consistent point at most this often (`run`; `sync` makes one every time).
    #[arg(long)]
    pub app_consistent_every: Option<String>,
    /// A hook running longer is killed (the point is then crash-consistent).
    #[arg(long)]
    pub hook_timeout: Option<String>,
}

/// The raw hook settings, from flags or a config file's `[[dir]]`.
#[derive(Debug, Clone, Default)]
pub struct HookSettings {
    pub pre_seal: Option<String>,
    pub post_seal: Option<String>,
    pub every: Option<String>,
    pub timeout: Option<String>,
}

impl AppArgs {
    /// The flags as settings, each given flag over `base` (a config's).
    pub fn over(&self, base: HookSettings) -> HookSettings {
        HookSettings {
            pre_seal: self.pre_seal.clone().or(base.pre_seal),
            post_seal: self.post_seal.clone().or(base.post_seal),
            every: self.app_consistent_every.clone().or(base.every),
            timeout: self.hook_timeout.clone().or(base.timeout),
        }
    }
}

impl HookSettings {
    /// The hooks (`None` without a pre and post hook); `default_every` when no interval
    /// is given. A bad value is an error naming its key.
    pub fn hooks(&self, default_every: Duration) -> Result<Option<AppHooks>> {
        let (pre, post) = match (&self.pre_seal, &self.post_seal) {
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            (None, None) => {
                if self.every.is_some() {
                    bail!("app_consistent_every needs pre_seal and post_seal hooks");
                }
                return Ok(None);
            }
            _ => bail!(
                "pre_seal and post_seal go together: give both (the post hook undoes the pre hook)"
            ),
        };
        let every = match &self.every {
            Some(e) => parse_duration("app_consistent_every", e)?,
            None => default_every,
        };
        let timeout = match &self.timeout {
            Some(t) => parse_duration("hook_timeout", t)?,
            None => DEFAULT_HOOK_TIMEOUT,
        };
        if timeout.is_zero() {
            bail!("hook_timeout must be above zero (default 30s)");
        }
        Ok(Some(AppHooks {
            every,
            pre_seal: pre,
            post_seal: post,
            timeout,
        }))
    }
}
