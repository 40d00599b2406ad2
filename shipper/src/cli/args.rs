//! Arguments several commands share, and the one place each of them is turned into what the
//! commands use: a store of a group, a protected directory's group, a cycle's setup. A new
//! option of the store (a key, a bandwidth limit) is added here once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::replicate::{copy as initial, cycle, owner};
use crate::service::status;
use crate::store::{self, bandwidth, target};

/// The group's key (encryption at rest, docs/encryption.md): every command that reads or
/// writes a store takes it through [`StoreArgs`] or [`Common`].
#[derive(Args, Clone, Default)]
pub struct KeyArgs {
    /// Key file of an encrypted group (`hrl-shipper key create`). A group is encrypted or not
    /// from its first point: a new group given a key is encrypted; an encrypted group needs
    /// its key; a plain group refuses one.
    #[arg(long, env = "HRL_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// File whose first line is the passphrase of a passphrase-protected key file.
    #[arg(
        long,
        env = "HRL_PASSPHRASE_FILE",
        value_name = "FILE",
        requires = "key"
    )]
    pub passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The master key, if one is given.
    pub fn load(&self) -> Result<Option<hrl::crypto::MasterKey>> {
        let Some(path) = &self.key else {
            return Ok(None);
        };
        let pass = match &self.passphrase_file {
            Some(f) => Some(super::key_cmd::read_passphrase(f)?),
            None => None,
        };
        let key = hrl::crypto::MasterKey::load(path, pass.as_ref().map(|p| p.as_slice()))?;
        Ok(Some(key))
    }

    /// `store` with this key (none: a plain group).
    pub fn apply(&self, store: store::GroupStore) -> Result<store::GroupStore> {
        Ok(store.with_key(self.load()?.as_ref()))
    }
}

/// Where the shipper keeps its state, and how it cuts base copies.
#[derive(Args, Clone)]
pub struct Common {
    /// State directory (status files, scratch space).
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Chunk size in bytes for base copies (power of two, 4 KiB..64 MiB).
    #[arg(long, default_value_t = initial::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Limits every command that moves bytes to or from a store shares.
#[derive(Args, Clone, Default)]
pub struct NetArgs {
    /// Bandwidth limit shared by every upload and download of this process: 50MiB/s,
    /// 100Mbit/s, 500KB/s or unlimited. Replaces the config's bandwidth and
    /// bandwidth_schedule.
    #[arg(long, value_name = "RATE")]
    pub bandwidth: Option<String>,
}

impl NetArgs {
    /// Installs `--bandwidth` as the process's limit (nothing when it is not given: the
    /// config's schedule, or unlimited, stays).
    pub fn apply(&self) -> Result<()> {
        if let Some(r) = &self.bandwidth {
            let rate = bandwidth::parse_rate(r).map_err(|e| anyhow::anyhow!("--bandwidth: {e}"))?;
            bandwidth::set_schedule(bandwidth::Schedule::fixed(rate));
        }
        Ok(())
    }
}

/// A group in a store, for the commands that read the store without a protected directory
/// (points, verify, restore).
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Store URL: a path, file:///path, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    pub target: String,
    /// Group name in the store (`hrl-shipper status` shows a directory's group).
    #[arg(long)]
    pub group: String,
    #[command(flatten)]
    pub key: KeyArgs,
}

impl StoreArgs {
    /// The group's store, with its key if given (checked against the group's record before
    /// the first object is read or written).
    pub fn open(&self) -> Result<store::GroupStore> {
        let s = store::GroupStore::new(target::open(&self.target)?, &self.group)?;
        self.key.apply(s)
    }
}

/// A protected directory and where it replicates to (sync, resync).
#[derive(Args, Clone)]
pub struct DirArgs {
    /// Protected directory (the tracker's mount).
    #[arg(long)]
    pub dir: PathBuf,
    /// Store URL: a path, file:///path, s3://bucket/prefix, az://container/prefix,
    /// gs://bucket/prefix. Default: the target the directory replicates to (its state file
    /// records it), else /var/lib/hrl/store. Another one is refused without --retarget.
    #[arg(long)]
    pub target: Option<String>,
    /// Move the directory to the --target given: a new base copy starts there (the points in
    /// the old target stay, but its chain ends).
    #[arg(long, requires = "target")]
    pub retarget: bool,
    #[command(flatten)]
    pub net: NetArgs,
    /// Group name in the store (default: <host>-<directory path>, unique per host and
    /// directory; a directory that shipped before keeps the group its state file records).
    #[arg(long)]
    pub group: Option<String>,
}

impl DirArgs {
    /// The target of the directory (see [`target_for`]); installs `--bandwidth` too.
    pub fn target(&self, state_dir: &Path) -> Result<String> {
        self.net.apply()?;
        target_for(&self.dir, self.target.as_deref(), self.retarget, state_dir)
    }
}

/// The target `dir` replicates to. Without `given`: the one its state file records, else the
/// default. A `given` target other than the recorded one is refused (shipping a base there
/// would ack the tracker's logs and break the recorded target's chain) unless `retarget`,
/// which moves the state file aside (kept) so that the next cycle starts a new base there.
pub fn target_for(
    dir: &Path,
    given: Option<&str>,
    retarget: bool,
    state_dir: &Path,
) -> Result<String> {
    let recorded = match status::load(state_dir, dir) {
        Ok(Some(s)) if !s.target.is_empty() => Some(s.target),
        _ => None,
    };
    let (Some(given), Some(recorded)) = (given, recorded.as_deref()) else {
        return Ok(given
            .map(str::to_string)
            .or(recorded)
            .unwrap_or_else(|| target::DEFAULT_TARGET.to_string()));
    };
    if same_target(given, recorded) {
        return Ok(given.to_string());
    }
    if !retarget {
        bail!(
            "{} replicates to {recorded} (its state file says so), not to {given}: drop --target to \
             keep replicating there, or add --retarget to start a new base copy in {given} (the \
             points in {recorded} stay, but its chain ends)",
            dir.display()
        );
    }
    let file = status::state_file(state_dir, dir);
    let aside = file.with_extension(format!("json.retargeted-{}", hrl::now_ns()));
    std::fs::rename(&file, &aside)
        .with_context(|| format!("move {} aside to {}", file.display(), aside.display()))?;
    tracing::warn!(dir = %dir.display(), from = recorded, to = given, "retargeted: a new base copy starts in the new target; the old state is kept as {}", aside.display());
    Ok(given.to_string())
}

/// Whether two target URLs name the same store (a path and its file:// URL do).
fn same_target(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        let u = u.trim();
        let u = u.strip_prefix("file://").unwrap_or(u);
        u.trim_end_matches('/').to_string()
    };
    norm(a) == norm(b)
}

/// The group of `dir`: the one given; else the one its state file recorded (installs from
/// before the per-host default keep their group); else the default, unique per host and
/// directory (`owner::default_group`).
pub fn group_for(dir: &Path, group: Option<String>, state_dir: &Path) -> Result<String> {
    if let Some(g) = group {
        return Ok(g);
    }
    if let Ok(Some(s)) = status::load(state_dir, dir) {
        if !s.group.is_empty() {
            return Ok(s.group);
        }
    }
    owner::default_group(dir)
}

/// Refuses a `--dir` that is not a directory.
pub fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; pass the tracker's mount directory with --dir",
            dir.display()
        );
    }
    Ok(())
}

/// A cycle's setup for `dir` replicating into `group` of `target`.
pub fn protected(
    dir: &Path,
    target: &str,
    group: &str,
    common: &Common,
    force_resync: bool,
) -> Result<cycle::Protected> {
    hrl::chunk::check_block_size(common.chunk_size).context("--chunk-size")?;
    let t = target::open(target)?;
    Ok(cycle::Protected {
        dir: dir.to_path_buf(),
        store: common.key.apply(store::GroupStore::new(t, group)?)?,
        chunk_size: common.chunk_size,
        state_dir: common.state_dir.clone(),
        force_resync,
        resync_now: false,
        resync_window: None,
        progress_bar: std::io::stderr().is_terminal(),
        reconcile: false,
        app: None,
    })
}
