//! How many receive buffers to keep posted to the kernel.
//!
//! The kernel takes provided buffers in the order they were posted, so a buffer given back
//! now is filled again only after every buffer posted before it. With all of them posted, a
//! receive writes into the buffer used longest ago: at 1 KiB messages, 256 buffers of which
//! each receive fills about 18 KiB is 4.5 MiB cycled through, far past the core's cache, and
//! the kernel's copy into them was the largest single cost in the profile. Posting only as
//! many as recent turns took keeps the cycle short, so receives land in memory still cached;
//! the rest wait, last returned on top, until a busier turn needs them.

/// Never fewer posted than this (or the whole ring, when it is smaller).
const MIN_POSTED: u16 = 32;
/// Turns over which the busiest one sets the window.
const EPOCH_TURNS: u16 = 128;

/// The number of buffers to keep posted, from the demand of recent turns.
#[derive(Debug)]
pub(crate) struct Window {
    /// Buffers in the ring.
    count: u16,
    /// How many to keep posted now.
    target: u16,
    /// Buffers handed out this turn, and receives refused for want of one.
    demand: u16,
    /// Whether a receive was refused this turn.
    ran_dry: bool,
    /// The busiest turn of this epoch.
    peak: u16,
    /// Turns of this epoch so far.
    turns: u16,
}

impl Window {
    /// Starts with every buffer posted, until turns show what they need.
    pub fn new(count: u16) -> Self {
        Self {
            count,
            target: count,
            demand: 0,
            ran_dry: false,
            peak: 0,
            turns: 0,
        }
    }

    /// The kernel handed out a buffer with a completion.
    pub fn handed_out(&mut self) {
        self.demand = self.demand.saturating_add(1);
    }

    /// A receive ended for want of a posted buffer.
    pub fn ran_dry(&mut self) {
        self.demand = self.demand.saturating_add(1);
        self.ran_dry = true;
    }

    /// Ends a turn; returns how many buffers should be posted for the next one.
    ///
    /// A dry turn widens the window at once, to twice what it asked for; the window narrows
    /// only at the end of an epoch, to twice the busiest turn in it, so a burst now and then
    /// costs a few receives restarted, not a cold cycle through every buffer.
    pub fn end_turn(&mut self) -> u16 {
        self.peak = self.peak.max(self.demand);
        self.turns += 1;
        if self.ran_dry {
            self.target = self.target.max(self.fit(self.peak));
        }
        if self.turns >= EPOCH_TURNS {
            self.target = self.fit(self.peak);
            self.peak = 0;
            self.turns = 0;
        }
        self.demand = 0;
        self.ran_dry = false;
        self.target
    }

    fn fit(&self, demand: u16) -> u16 {
        let wanted = u32::from(demand).max(1) * 2;
        let wanted = u16::try_from(wanted.next_power_of_two()).unwrap_or(u16::MAX);
        wanted.clamp(MIN_POSTED.min(self.count), self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(window: &mut Window, handed: u16, dry: u16) -> u16 {
        for _ in 0..handed {
            window.handed_out();
        }
        for _ in 0..dry {
            window.ran_dry();
        }
        window.end_turn()
    }

    fn epoch(window: &mut Window, handed: u16) -> u16 {
        let mut target = 0;
        for _ in 0..EPOCH_TURNS {
            target = turn(window, handed, 0);
        }
        target
    }

    #[test]
    fn starts_with_every_buffer_posted() {
        let mut window = Window::new(256);
        assert_eq!(turn(&mut window, 3, 0), 256);
    }

    #[test]
    fn narrows_to_twice_the_busiest_turn_after_an_epoch() {
        let mut window = Window::new(256);
        for _ in 0..EPOCH_TURNS - 1 {
            turn(&mut window, 5, 0);
        }
        window.handed_out();
        assert_eq!(
            turn(&mut window, 39, 0),
            128,
            "40 handed out: 80, rounded up"
        );
        assert_eq!(epoch(&mut window, 2), MIN_POSTED, "never below the minimum");
    }

    #[test]
    fn a_dry_turn_widens_at_once() {
        let mut window = Window::new(256);
        epoch(&mut window, 4);
        assert_eq!(turn(&mut window, 32, 40), 256, "72 wanted: 144, rounded up");
        assert_eq!(turn(&mut window, 1, 0), 256, "and stays wide for the epoch");
    }

    #[test]
    fn never_more_than_the_ring_nor_a_minimum_above_it() {
        let mut window = Window::new(8);
        assert_eq!(turn(&mut window, 500, 500), 8);
        assert_eq!(epoch(&mut window, 0), 8);
        let mut window = Window::new(1);
        assert_eq!(epoch(&mut window, 0), 1);
    }
}
