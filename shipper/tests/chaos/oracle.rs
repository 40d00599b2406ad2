//! The oracle: what a recovery point must restore to. With writers quiesced around a sync the
//! disks do not change while it seals, so a copy taken right after it returns is the disks at
//! the seal instant ([`Reference::Exact`]). With a writer running during the sync the seal
//! cut its write sequence somewhere: the point must equal the disks before the sync plus a
//! prefix of the writes, the write at the cut possibly in part ([`Reference::Prefix`]).

use std::collections::BTreeMap;
use std::path::Path;

/// Every disk's bytes, by file name.
pub type Disks = BTreeMap<String, Vec<u8>>;

/// One write of a writer that ran during a sync (the offset may grow the disk).
#[derive(Clone, Debug)]
pub struct Write {
    pub disk: String,
    pub off: u64,
    pub data: Vec<u8>,
}

pub enum Reference {
    Exact(Disks),
    Prefix { before: Disks, writes: Vec<Write> },
}

/// A disk file name as the tracker's default globs see it (`*.img`, `*.qcow2`, ...).
pub fn is_disk_name(name: &str) -> bool {
    [".img", ".raw", ".qcow2", ".vhd", ".vhdx"]
        .iter()
        .any(|s| name.ends_with(s))
        && !name.starts_with('.')
}

/// Reads every disk in `dir` (through the mount, or a restore directory).
pub fn read_disks(dir: &Path) -> std::io::Result<Disks> {
    let mut out = Disks::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        // A name that is not UTF-8 is never tracked (status says so; `odd_names`).
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if is_disk_name(&name) && e.file_type()?.is_file() {
            out.insert(name, std::fs::read(e.path())?);
        }
    }
    Ok(out)
}

/// blake3 of each disk, to re-check a point later without keeping its bytes.
pub fn digests(d: &Disks) -> BTreeMap<String, (usize, String)> {
    d.iter()
        .map(|(k, v)| (k.clone(), (v.len(), blake3::hash(v).to_hex().to_string())))
        .collect()
}

/// The reference without the disks in `names` (and the writes to them).
pub fn without(r: &Reference, names: &[String]) -> Reference {
    let keep = |d: &Disks| -> Disks {
        d.iter()
            .filter(|(k, _)| !names.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    match r {
        Reference::Exact(d) => Reference::Exact(keep(d)),
        Reference::Prefix { before, writes } => Reference::Prefix {
            before: keep(before),
            writes: writes
                .iter()
                .filter(|w| !names.contains(&w.disk))
                .cloned()
                .collect(),
        },
    }
}

/// `Ok` when `restored` is what the reference allows, else what differs.
pub fn check(reference: &Reference, restored: &Disks) -> Result<(), String> {
    match reference {
        Reference::Exact(want) => exact(want, restored),
        Reference::Prefix { before, writes } => prefix(before, writes, restored),
    }
}

fn exact(want: &Disks, got: &Disks) -> Result<(), String> {
    let wn: Vec<&String> = want.keys().collect();
    let gn: Vec<&String> = got.keys().collect();
    if wn != gn {
        return Err(format!(
            "restored disks {gn:?}, the disks at the seal were {wn:?}"
        ));
    }
    for (name, w) in want {
        let g = &got[name];
        if g.len() != w.len() {
            return Err(format!(
                "{name}: restored {} bytes, the disk at the seal had {}",
                g.len(),
                w.len()
            ));
        }
        if let Some(i) = first_diff(w, g) {
            return Err(format!(
                "{name}: restored differs from the disk at the seal first at byte {i} (0x{i:x})"
            ));
        }
    }
    Ok(())
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    const STEP: usize = 64 << 10;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i < n {
        let j = (i + STEP).min(n);
        if a[i..j] != b[i..j] {
            return a[i..j]
                .iter()
                .zip(&b[i..j])
                .position(|(x, y)| x != y)
                .map(|p| i + p);
        }
        i = j;
    }
    (a.len() != b.len()).then_some(n)
}

/// The restored disks equal `before` + writes[..k] for some k, with writes[k] possibly
/// applied in part (each byte of its range old or new; a growing write may have grown the
/// disk to anywhere between the old and new size).
fn prefix(before: &Disks, writes: &[Write], got: &Disks) -> Result<(), String> {
    let names: Vec<&String> = before.keys().collect();
    let gn: Vec<&String> = got.keys().collect();
    if names != gn {
        return Err(format!(
            "restored disks {gn:?}, the disks during the sync were {names:?}"
        ));
    }
    let mut state = before.clone();
    let mut closest = String::new();
    for k in 0..=writes.len() {
        match matches_with_partial(&state, writes.get(k), got) {
            Ok(()) => return Ok(()),
            Err(e) if k == 0 => closest = e,
            Err(_) => {}
        }
        if let Some(w) = writes.get(k) {
            apply(&mut state, w);
        }
    }
    Err(format!(
        "restored disks are not the disks before the sync plus any prefix of the {} writes made during it (vs. before: {closest})",
        writes.len()
    ))
}

fn apply(state: &mut Disks, w: &Write) {
    let d = state
        .get_mut(&w.disk)
        .expect("writer writes existing disks");
    let end = w.off as usize + w.data.len();
    if d.len() < end {
        d.resize(end, 0);
    }
    d[w.off as usize..end].copy_from_slice(&w.data);
}

fn matches_with_partial(state: &Disks, partial: Option<&Write>, got: &Disks) -> Result<(), String> {
    for (name, s) in state {
        let g = &got[name];
        let p = partial.filter(|w| &w.disk == name);
        let Some(w) = p else {
            return exact_one(name, s, g);
        };
        let (lo, hi) = (w.off as usize, w.off as usize + w.data.len());
        let max_len = s.len().max(hi);
        if g.len() < s.len() || g.len() > max_len {
            return Err(format!(
                "{name}: {} bytes, expected {}..={max_len}",
                g.len(),
                s.len()
            ));
        }
        let head = lo.min(g.len());
        if let Some(i) = first_diff(&s[..head.min(s.len())], &g[..head.min(s.len())]) {
            return Err(format!("{name}: differs at byte {i}"));
        }
        let end = hi.min(g.len());
        for (i, (&b, &new)) in (lo..end).zip(g[lo.min(end)..end].iter().zip(&w.data)) {
            if b != s.get(i).copied().unwrap_or(0) && b != new {
                return Err(format!("{name}: byte {i} is neither old nor new"));
            }
        }
        if hi < g.len() && first_diff(&s[hi..g.len()], &g[hi..]).is_some() {
            return Err(format!("{name}: differs after byte {hi}"));
        }
    }
    Ok(())
}

fn exact_one(name: &str, want: &[u8], got: &[u8]) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!(
            "{name}: {} bytes, expected {}",
            got.len(),
            want.len()
        ));
    }
    match first_diff(want, got) {
        Some(i) => Err(format!("{name}: differs first at byte {i} (0x{i:x})")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disks(v: &[u8]) -> Disks {
        [("a.img".to_string(), v.to_vec())].into_iter().collect()
    }

    #[test]
    fn prefix_accepts_a_cut_and_refuses_a_lost_write() {
        let w = |off, data: &[u8]| Write {
            disk: "a.img".into(),
            off,
            data: data.to_vec(),
        };
        let writes = vec![w(0, b"xx"), w(4, b"yyyy"), w(1, b"z")];
        let before = disks(b"aaaa");
        let r = Reference::Prefix {
            before: before.clone(),
            writes,
        };
        assert!(check(&r, &disks(b"aaaa")).is_ok());
        assert!(check(&r, &disks(b"xxaa")).is_ok());
        assert!(
            check(&r, &disks(b"xxaayy")).is_ok(),
            "a growing write cut in part"
        );
        assert!(check(&r, &disks(b"xzaayyyy")).is_ok());
        assert!(
            check(&r, &disks(b"azaayyyy")).is_err(),
            "write 0 lost under write 2"
        );
        assert!(check(&r, &disks(b"aaaayyyy")).is_err(), "write 0 lost");
    }
}
