//! Python's `random.Random(seed)` for a non-negative integer seed, as far as
//! webdataset's buffered shuffle draws from it (`randint(0, n - 1)`): the
//! MT19937 generator, seeded as CPython seeds it from an int
//! (`init_by_array` over the seed's 32-bit words), and CPython's
//! `_randbelow` by rejection from `getrandbits`. OpenCLIP shuffles the shard
//! list of each epoch with it (`detshuffle2`, seeded with `seed + epoch`),
//! and which rank reads which shard follows from that order.

const N: usize = 624;
const M: usize = 397;

/// One `random.Random` instance.
pub struct PythonRandom {
    state: [u32; N],
    index: usize,
}

impl PythonRandom {
    /// `random.Random(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        let mut rng = PythonRandom {
            state: [0; N],
            index: N,
        };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..N {
            let previous = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(previous ^ (previous >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let previous = mt[i - 1];
            mt[i] = (mt[i] ^ (previous ^ (previous >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let previous = mt[i - 1];
            mt[i] = (mt[i] ^ (previous ^ (previous >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            let mt = &mut self.state;
            for k in 0..N {
                let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % N] & 0x7fff_ffff);
                let mut next = mt[(k + M) % N] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_b0df;
                }
                mt[k] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(bits)` for `bits <= 32`.
    fn getrandbits(&mut self, bits: u32) -> u32 {
        if bits == 0 {
            0
        } else {
            self.next_u32() >> (32 - bits)
        }
    }

    /// `randrange(n)` (so `randint(0, n - 1)`), for `1 <= n <= 2^32`.
    pub fn below(&mut self, n: usize) -> usize {
        let bits = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(bits.min(32)) as usize;
            if r < n {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outputs_of_seed_zero_are_cpythons() {
        // random.Random(0).getrandbits(32), five times, in CPython 3.11.
        let mut rng = PythonRandom::new(0);
        let got: Vec<u32> = (0..5).map(|_| rng.next_u32()).collect();
        assert_eq!(
            got,
            [
                3_626_764_237,
                1_654_615_998,
                3_255_389_356,
                3_823_568_514,
                1_806_341_205
            ]
        );
        // A seed of two 32-bit words: random.Random(2**40 + 7).
        let mut rng = PythonRandom::new((1 << 40) + 7);
        let got: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(got, [2_635_837_658, 3_209_733_218, 3_500_038_837]);
    }
}
