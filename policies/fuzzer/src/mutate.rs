//! The fuzzer's randomness and its byte-level mutations.
//!
//! Everything random comes from one [`Rng`] seeded from the `seed`
//! config key, so a run is reproducible: the same seed, seeds and guest
//! behaviour give the same inputs in the same order.

/// The byte values an "interesting value" mutation writes: the extremes
/// and the sign boundary of a byte.
pub const INTERESTING: [u8; 4] = [0x00, 0xff, 0x7f, 0x80];
/// The largest step of an arithmetic mutation.
const MAX_DELTA: u8 = 16;
/// The most mutations stacked on one input.
const MAX_STACK: usize = 4;

/// xorshift64* (Vigna), seeded through splitmix64 so that nearby seeds
/// (1, 2, 3...) give unrelated streams and seed 0 is as good as any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        // splitmix64's finaliser; xorshift needs a non-zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng {
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0, "Rng::below(0)");
        // The high half of a 64x64 product: unbiased enough for fuzzing,
        // with no division.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

/// One byte-level mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Flip one bit.
    FlipBit,
    /// Set a byte to a random value.
    RandomByte,
    /// Set a byte to one of [`INTERESTING`].
    Interesting,
    /// Add or subtract 1 to [`MAX_DELTA`] from a byte, wrapping.
    Arith,
    /// Insert a random or interesting byte.
    Insert,
    /// Delete a byte.
    Delete,
    /// Keep a prefix, then the tail of another corpus entry.
    Splice,
}

const OPS: [Op; 7] = [
    Op::FlipBit,
    Op::RandomByte,
    Op::Interesting,
    Op::Arith,
    Op::Insert,
    Op::Delete,
    Op::Splice,
];

/// Applies `op` to `data`, which never grows past `cap`; false when it
/// cannot apply (an empty input has no byte to change, a full one no
/// room to insert).
fn apply(op: Op, data: &mut Vec<u8>, other: &[u8], cap: usize, rng: &mut Rng) -> bool {
    let len = data.len();
    match op {
        Op::FlipBit | Op::RandomByte | Op::Interesting | Op::Arith | Op::Delete if len == 0 => {
            return false
        }
        Op::FlipBit => data[rng.below(len)] ^= 1 << rng.below(8),
        Op::RandomByte => data[rng.below(len)] = rng.byte(),
        Op::Interesting => data[rng.below(len)] = INTERESTING[rng.below(INTERESTING.len())],
        Op::Arith => {
            let at = rng.below(len);
            let delta = 1 + rng.below(usize::from(MAX_DELTA)) as u8;
            data[at] = if rng.below(2) == 0 {
                data[at].wrapping_add(delta)
            } else {
                data[at].wrapping_sub(delta)
            };
        }
        Op::Insert if len >= cap => return false,
        Op::Insert => {
            let value = if rng.below(2) == 0 {
                rng.byte()
            } else {
                INTERESTING[rng.below(INTERESTING.len())]
            };
            data.insert(rng.below(len + 1), value);
        }
        Op::Delete => {
            data.remove(rng.below(len));
        }
        Op::Splice if other.is_empty() => return false,
        Op::Splice => {
            let keep = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(keep);
            data.extend_from_slice(&other[from..]);
            data.truncate(cap);
        }
    }
    true
}

/// A mutant of `base`: 1 to 4 stacked mutations, splicing from `other`
/// (another corpus entry) among them. The result holds at most `cap`
/// bytes: a longer `base` is cut first.
pub fn mutate(base: &[u8], other: &[u8], cap: usize, rng: &mut Rng) -> Vec<u8> {
    let mut data = base[..base.len().min(cap)].to_vec();
    let stack = 1 + rng.below(MAX_STACK);
    let mut applied = 0;
    // A mutation that cannot apply is drawn again, a bounded number of
    // times: with `cap` 0 and an empty input nothing ever applies.
    for _ in 0..stack * 8 {
        if applied == stack {
            break;
        }
        let op = OPS[rng.below(OPS.len())];
        if apply(op, &mut data, other, cap, rng) {
            applied += 1;
        }
    }
    debug_assert!(data.len() <= cap);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_seed_dependent() {
        let take = |seed| {
            let mut r = Rng::new(seed);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(take(1), take(1));
        assert_ne!(take(1), take(2));
        assert_ne!(take(0), take(1));
        // Seed 0 is usable: the state is never 0.
        let mut r = Rng::new(0);
        assert_ne!(r.next_u64(), 0);
    }

    #[test]
    fn below_stays_in_bounds_and_covers_them() {
        let mut r = Rng::new(7);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let v = r.below(5);
            assert!(v < 5);
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn mutants_respect_the_cap() {
        let mut r = Rng::new(3);
        let base = [0x41u8; 32];
        let other = [0x42u8; 64];
        for cap in [0, 1, 2, 7, 31, 32, 33, 100] {
            for _ in 0..500 {
                let m = mutate(&base, &other, cap, &mut r);
                assert!(m.len() <= cap, "cap {cap}: {} bytes", m.len());
            }
        }
        // Nothing to work on: an empty input with no room stays empty.
        assert!(mutate(&[], &[], 0, &mut r).is_empty());
        // From nothing, insertion and splicing still make inputs.
        let grown = (0..50).any(|_| !mutate(&[], &other, 8, &mut r).is_empty());
        assert!(grown);
    }

    #[test]
    fn mutants_change_the_input() {
        let mut r = Rng::new(11);
        let base = b"hello fuzzer".to_vec();
        let changed = (0..100)
            .filter(|_| mutate(&base, &base, 64, &mut r) != base)
            .count();
        assert!(changed > 90, "{changed}");
    }

    #[test]
    fn every_mutation_can_apply() {
        let mut r = Rng::new(5);
        for op in OPS {
            let mut data = vec![1, 2, 3, 4];
            assert!(apply(op, &mut data, &[9, 9], 8, &mut r), "{op:?}");
            assert!(data.len() <= 8);
            let mut empty = Vec::new();
            let grows = matches!(op, Op::Insert | Op::Splice);
            assert_eq!(apply(op, &mut empty, &[9], 8, &mut r), grows, "{op:?}");
        }
        let mut full = vec![0; 4];
        assert!(!apply(Op::Insert, &mut full, &[], 4, &mut r));
        assert!(!apply(Op::Splice, &mut full, &[], 4, &mut r));
        // Interesting values come from the table.
        let mut one = vec![0x55];
        apply(Op::Interesting, &mut one, &[], 1, &mut r);
        assert!(INTERESTING.contains(&one[0]));
    }
}
