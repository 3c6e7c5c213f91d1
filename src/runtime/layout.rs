//! How a server's connections are laid out over direct-descriptor tables.
//!
//! The kernel caps each ring's table at the process's RLIMIT_NOFILE, so a shard that must
//! hold more connections than that keeps several rings on its one thread, each with a table
//! of its own. The tables are sized alike, as small as the count allows, so every ring
//! holds about the same share.

use std::fmt;

/// Rings per shard and descriptors per ring, for a wanted number of connections per shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shards: usize,
    /// Rings (each with its own descriptor table) per shard.
    pub rings: usize,
    /// Direct descriptors per ring.
    pub table: u32,
}

impl Layout {
    /// The fewest rings of at most `cap` descriptors that hold `per_shard` connections, in
    /// tables as even as can be.
    pub fn plan(shards: usize, per_shard: usize, cap: usize) -> Self {
        let per_shard = per_shard.max(1);
        let cap = cap.clamp(1, u32::MAX as usize);
        let rings = per_shard.div_ceil(cap);
        let table = per_shard.div_ceil(rings);
        Self {
            shards,
            rings,
            table: u32::try_from(table).unwrap_or(u32::MAX),
        }
    }

    /// Connections the process can hold at once (every table full).
    pub fn capacity(&self) -> usize {
        self.shards * self.per_shard()
    }

    /// Connections one shard can hold at once.
    pub fn per_shard(&self) -> usize {
        self.rings * self.table as usize
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} shard{} x {} ring{} x {} direct descriptors",
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            self.rings,
            if self.rings == 1 { "" } else { "s" },
            self.table
        )
    }
}

/// The process's open-file limit, which caps each ring's descriptor table.
pub(crate) fn descriptor_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live struct we pass.
    let cap = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ring_while_the_limit_allows() {
        let layout = Layout::plan(2, 5_000, 20_000);
        assert_eq!((layout.rings, layout.table), (1, 5_000));
        assert_eq!(layout.capacity(), 10_000);
    }

    #[test]
    fn several_even_rings_past_the_limit() {
        // 250,000 over two shards, with the server's eighth and reserve on top.
        let per_shard = 125_000 + 125_000 / 8 + 64;
        let layout = Layout::plan(2, per_shard, 20_000);
        assert_eq!(layout.rings, 8);
        assert_eq!(layout.table, 17_587);
        assert!(layout.per_shard() >= per_shard);
        assert!(layout.table <= 20_000);
        assert_eq!(
            layout.to_string(),
            "2 shards x 8 rings x 17587 direct descriptors"
        );
    }

    #[test]
    fn exact_multiples_fill_every_table() {
        let layout = Layout::plan(1, 60_000, 20_000);
        assert_eq!((layout.rings, layout.table), (3, 20_000));
        assert_eq!(Layout::plan(1, 0, 0).per_shard(), 1);
    }
}
