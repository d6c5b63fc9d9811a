//! EAL-style core selection: `-l 0-3,6` (a list) or `-c 0xf` (a mask), checked against the
//! cores this process may run on, and the role of each (control plane, data-plane workers).

use std::collections::BTreeSet;

/// A core-list error, naming the argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The list or mask does not parse.
    #[error("invalid core {what} `{arg}`: {why}")]
    Syntax {
        /// "list" or "mask".
        what: &'static str,
        /// The argument.
        arg: String,
        /// What is wrong.
        why: String,
    },
    /// A core that this machine (or this process's affinity) does not have.
    #[error("core {core} does not exist or is not available to this process (available: {available})")]
    NoSuchCore {
        /// The core.
        core: usize,
        /// The available cores, as a list.
        available: String,
    },
    /// Nothing selected.
    #[error("the core list is empty")]
    Empty,
}

/// Parse a DPDK EAL core list: comma-separated numbers and ranges (`0-3,6`).
pub fn parse_list(arg: &str) -> Result<Vec<usize>, CoreError> {
    let err = |why: &str| CoreError::Syntax { what: "list", arg: arg.to_string(), why: why.to_string() };
    let mut set = BTreeSet::new();
    for part in arg.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(err("empty element"));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| err(&format!("`{a}` is not a core number")))?;
        let b: usize = b.trim().parse().map_err(|_| err(&format!("`{b}` is not a core number")))?;
        if a > b || b > 4095 {
            return Err(err(&format!("bad range {a}-{b}")));
        }
        set.extend(a..=b);
    }
    Ok(set.into_iter().collect())
}

/// Parse a DPDK EAL core mask (`0xf` or `f`).
pub fn parse_mask(arg: &str) -> Result<Vec<usize>, CoreError> {
    let hex = arg.trim().trim_start_matches("0x").trim_start_matches("0X");
    let v = u128::from_str_radix(hex, 16).map_err(|_| CoreError::Syntax {
        what: "mask",
        arg: arg.to_string(),
        why: "not a hexadecimal number".into(),
    })?;
    Ok((0..128).filter(|i| v >> i & 1 == 1).collect())
}

/// The cores this process may run on.
pub fn available() -> Vec<usize> {
    let mut v: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if v.is_empty() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        v = (0..n).collect();
    }
    v.sort_unstable();
    v
}

/// Where each thread runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The control plane's core.
    pub control: usize,
    /// One data-plane worker per core, in order.
    pub workers: Vec<usize>,
}

/// Lay out threads on `cores` (checked against `available`): the first core runs the control
/// plane and the others run workers; with one core, or when `control_shares_core`, the control
/// plane shares the first worker's core.
pub fn layout(cores: &[usize], available: &[usize], control_shares_core: bool) -> Result<Layout, CoreError> {
    let first = *cores.first().ok_or(CoreError::Empty)?;
    for &c in cores {
        if !available.contains(&c) {
            let list = available.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            return Err(CoreError::NoSuchCore { core: c, available: list });
        }
    }
    if cores.len() == 1 || control_shares_core {
        Ok(Layout { control: first, workers: cores.to_vec() })
    } else {
        Ok(Layout { control: first, workers: cores[1..].to_vec() })
    }
}

/// Pin the calling thread to `core` (best effort: a failure is logged, not fatal).
pub fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        tracing::warn!("could not pin thread to core {core}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_masks() {
        assert_eq!(parse_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_list("1").unwrap(), vec![1]);
        assert_eq!(parse_list("3,1-2,2").unwrap(), vec![1, 2, 3]);
        assert!(parse_list("").is_err());
        assert!(parse_list("2-1").is_err());
        assert!(parse_list("a").unwrap_err().to_string().contains("`a` is not a core number"));
        assert_eq!(parse_mask("0xf").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_mask("5").unwrap(), vec![0, 2]);
        assert!(parse_mask("0xg").is_err());
    }

    #[test]
    fn layouts() {
        let avail = [0, 1];
        assert_eq!(layout(&[0, 1], &avail, false).unwrap(), Layout { control: 0, workers: vec![1] });
        assert_eq!(layout(&[0, 1], &avail, true).unwrap(), Layout { control: 0, workers: vec![0, 1] });
        assert_eq!(layout(&[1], &avail, false).unwrap(), Layout { control: 1, workers: vec![1] });
        let e = layout(&[0, 7], &avail, false).unwrap_err();
        assert_eq!(e.to_string(), "core 7 does not exist or is not available to this process (available: 0,1)");
        assert_eq!(layout(&[], &avail, false), Err(CoreError::Empty));
    }
}
