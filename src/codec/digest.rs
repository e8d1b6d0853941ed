//! MD5 of several aggregates at once, for their KPL trailers.
//!
//! The MD5 trailer over every aggregate is the producer's largest per-byte cost: MD5 is one
//! long chain of dependent 32-bit steps, so one message keeps most of a core idle. Here
//! [`LANES`] messages go side by side, one in each 32-bit lane of the same vector arithmetic
//! (`wide::u32x8`: two SSE2 registers on a baseline x86-64, so two independent chains; NEON on
//! aarch64; no `unsafe` here, no CPU detection), which digests four to five times the bytes per
//! second of the one-message `md-5` crate on this project's machine (`cargo bench --bench
//! codec`, `md5_trailers`). The pipeline seals the aggregates of a PutRecords call together,
//! just before it is sent.
//!
//! Messages of different lengths run side by side while two or more still have blocks; the
//! longest finishes alone. Written from RFC 1321 and checked against `md-5` (unit and property tests).

use std::ops::{BitAnd, BitOr, BitXor, Not};

use wide::u32x8;

/// Messages digested side by side.
pub const LANES: usize = 8;

/// Bytes of an MD5 digest.
pub const MD5_LEN: usize = 16;

/// The RFC 1321 sine table: `floor(abs(sin(i + 1)) * 2^32)`.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// Left-rotation amounts, per round and step within a group of four.
const SHIFTS: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// One message's blocks: its whole 64-byte blocks, then one or two blocks of padding.
struct Blocks<'a> {
    message: &'a [u8],
    tail: [u8; 128],
    /// Whole blocks of the message.
    full: usize,
    /// All blocks, padding included.
    total: usize,
}

impl<'a> Blocks<'a> {
    fn new(message: &'a [u8]) -> Self {
        let full = message.len() / 64;
        let rest = &message[full * 64..];
        // 0x80, zeros, then the length in bits: one block if 8 bytes still fit after the rest.
        let padding_blocks = if rest.len() < 56 { 1 } else { 2 };
        let mut tail = [0u8; 128];
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()] = 0x80;
        let end = padding_blocks * 64;
        let bits = (message.len() as u64).wrapping_mul(8);
        tail[end - 8..end].copy_from_slice(&bits.to_le_bytes());
        Blocks {
            message,
            tail,
            full,
            total: full + padding_blocks,
        }
    }

    fn block(&self, i: usize) -> &[u8; 64] {
        let block = if i < self.full {
            &self.message[i * 64..i * 64 + 64]
        } else {
            let at = (i - self.full) * 64;
            &self.tail[at..at + 64]
        };
        block.try_into().expect("a block is 64 bytes")
    }
}

/// One 32-bit MD5 word, or [`LANES`] of them side by side: what a compression step needs.
trait Word:
    Copy + BitAnd<Output = Self> + BitOr<Output = Self> + BitXor<Output = Self> + Not<Output = Self>
{
    fn splat(word: u32) -> Self;
    /// Addition modulo 2^32 (in each lane).
    fn add(self, other: Self) -> Self;
    fn rotate_left(self, bits: u32) -> Self;
}

impl Word for u32 {
    #[inline(always)]
    fn splat(word: u32) -> Self {
        word
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    #[inline(always)]
    fn rotate_left(self, bits: u32) -> Self {
        u32::rotate_left(self, bits)
    }
}

impl Word for u32x8 {
    #[inline(always)]
    fn splat(word: u32) -> Self {
        u32x8::splat(word)
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }
    #[inline(always)]
    fn rotate_left(self, bits: u32) -> Self {
        (self << bits) | (self >> (32 - bits))
    }
}

/// Message word `j` of a 64-byte block.
#[inline(always)]
fn word(block: &[u8; 64], j: usize) -> u32 {
    u32::from_le_bytes([
        block[j * 4],
        block[j * 4 + 1],
        block[j * 4 + 2],
        block[j * 4 + 3],
    ])
}

/// The MD5 compression function on one state (of one message or of [`LANES`] side by side)
/// and its message words.
#[inline(always)]
fn compress<W: Word>(state: &mut [W; 4], m: [W; 16]) {
    let [mut a, mut b, mut c, mut d] = *state;
    // One step: a = b + rotl(a + f(b, c, d) + K[i] + m[g], s); then the registers rotate.
    macro_rules! step {
        ($f:ident, $i:expr, $g:expr, $s:expr) => {{
            let sum = $f(b, c, d).add(a).add(W::splat(K[$i])).add(m[$g]);
            let next = b.add(sum.rotate_left($s));
            a = d;
            d = c;
            c = b;
            b = next;
        }};
    }
    macro_rules! round {
        ($f:ident, $r:expr, $g:expr) => {
            step!($f, $r * 16, $g(0), SHIFTS[$r][0]);
            step!($f, $r * 16 + 1, $g(1), SHIFTS[$r][1]);
            step!($f, $r * 16 + 2, $g(2), SHIFTS[$r][2]);
            step!($f, $r * 16 + 3, $g(3), SHIFTS[$r][3]);
            step!($f, $r * 16 + 4, $g(4), SHIFTS[$r][0]);
            step!($f, $r * 16 + 5, $g(5), SHIFTS[$r][1]);
            step!($f, $r * 16 + 6, $g(6), SHIFTS[$r][2]);
            step!($f, $r * 16 + 7, $g(7), SHIFTS[$r][3]);
            step!($f, $r * 16 + 8, $g(8), SHIFTS[$r][0]);
            step!($f, $r * 16 + 9, $g(9), SHIFTS[$r][1]);
            step!($f, $r * 16 + 10, $g(10), SHIFTS[$r][2]);
            step!($f, $r * 16 + 11, $g(11), SHIFTS[$r][3]);
            step!($f, $r * 16 + 12, $g(12), SHIFTS[$r][0]);
            step!($f, $r * 16 + 13, $g(13), SHIFTS[$r][1]);
            step!($f, $r * 16 + 14, $g(14), SHIFTS[$r][2]);
            step!($f, $r * 16 + 15, $g(15), SHIFTS[$r][3]);
        };
    }
    round!(f1, 0, g1);
    round!(f2, 1, g2);
    round!(f3, 2, g3);
    round!(f4, 3, g4);
    for (s, x) in state.iter_mut().zip([a, b, c, d]) {
        *s = s.add(x);
    }
}

/// One message's `block` compressed into `state`.
fn compress_one(state: &mut [u32; 4], block: &[u8; 64]) {
    compress(state, std::array::from_fn(|j| word(block, j)));
}

/// [`LANES`] messages' blocks compressed into their states, side by side.
fn compress_lanes(state: &mut [u32x8; 4], blocks: [&[u8; 64]; LANES]) {
    compress(
        state,
        std::array::from_fn(|j| u32x8::new(blocks.map(|block| word(block, j)))),
    );
}

// The four rounds' functions and message word orders (RFC 1321, 3.4).
#[inline(always)]
fn f1<W: Word>(x: W, y: W, z: W) -> W {
    z ^ (x & (y ^ z))
}
#[inline(always)]
fn f2<W: Word>(x: W, y: W, z: W) -> W {
    y ^ (z & (x ^ y))
}
#[inline(always)]
fn f3<W: Word>(x: W, y: W, z: W) -> W {
    x ^ y ^ z
}
#[inline(always)]
fn f4<W: Word>(x: W, y: W, z: W) -> W {
    y ^ (x | !z)
}
const fn g1(i: usize) -> usize {
    i
}
const fn g2(i: usize) -> usize {
    (5 * i + 1) % 16
}
const fn g3(i: usize) -> usize {
    (3 * i + 5) % 16
}
const fn g4(i: usize) -> usize {
    (7 * i) % 16
}

fn digest_of(state: [u32; 4]) -> [u8; MD5_LEN] {
    let mut out = [0u8; MD5_LEN];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Finishes one message alone from block `from` on.
fn finish_one(mut state: [u32; 4], blocks: &Blocks<'_>, from: usize) -> [u8; MD5_LEN] {
    for i in from..blocks.total {
        compress_one(&mut state, blocks.block(i));
    }
    digest_of(state)
}

/// MD5 of each of [`LANES`] messages, side by side. The lanes run while two or more messages
/// still have blocks (a lane whose message has ended digests a copy of its last block, and
/// its state was taken when it ended); the longest message finishes alone.
pub fn md5_lanes(messages: [&[u8]; LANES]) -> [[u8; MD5_LEN]; LANES] {
    let blocks = messages.map(Blocks::new);
    let lane_state = |state: &[u32x8; 4], lane: usize| state.map(|v| v.to_array()[lane]);
    let mut state = INIT.map(u32x8::splat);
    let mut ended: [Option<[u32; 4]>; LANES] = [None; LANES];
    // Every lane has blocks up to the shortest message's end; then until the second longest
    // one's, some lanes idle.
    let mut totals = blocks.each_ref().map(|b| b.total);
    totals.sort_unstable();
    let (common, second_longest) = (totals[0], totals[LANES - 2]);
    for i in 0..common {
        compress_lanes(
            &mut state,
            std::array::from_fn(|lane| blocks[lane].block(i)),
        );
    }
    // A lane's state is taken when its message has no block left: at the top of step `i`.
    for i in common..=second_longest {
        for (lane, b) in blocks.iter().enumerate() {
            if b.total == i {
                ended[lane] = Some(lane_state(&state, lane));
            }
        }
        if i == second_longest {
            break;
        }
        compress_lanes(
            &mut state,
            std::array::from_fn(|lane| blocks[lane].block(i.min(blocks[lane].total - 1))),
        );
    }
    std::array::from_fn(|lane| match ended[lane] {
        Some(done) => digest_of(done),
        None => finish_one(lane_state(&state, lane), &blocks[lane], second_longest),
    })
}

/// MD5 of one message alone (the `md-5` crate).
pub fn md5(message: &[u8]) -> [u8; MD5_LEN] {
    use md5::Digest;
    md5::Md5::digest(message).into()
}

/// Fewest messages left over that still go side by side (the empty lanes digest a copy):
/// [`LANES`] side by side cost about what three one by one do.
const MIN_SIDE_BY_SIDE: usize = 3;

/// Calls `each(i, digest)` with the MD5 of `messages[i]`, for every message: [`LANES`] at a
/// time, the last few one by one.
pub fn md5_each(messages: &[&[u8]], mut each: impl FnMut(usize, [u8; MD5_LEN])) {
    let mut at = 0;
    for group in messages.chunks(LANES) {
        if group.len() < MIN_SIDE_BY_SIDE {
            for message in group {
                each(at, md5(message));
                at += 1;
            }
            continue;
        }
        let lanes: [&[u8]; LANES] = std::array::from_fn(|lane| group[lane.min(group.len() - 1)]);
        for digest in md5_lanes(lanes).into_iter().take(group.len()) {
            each(at, digest);
            at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use md5::{Digest, Md5};
    use proptest::prelude::*;

    use super::*;

    fn reference(message: &[u8]) -> [u8; MD5_LEN] {
        Md5::digest(message).into()
    }

    #[test]
    fn rfc_1321_test_suite() {
        let cases: [(&str, &str); 7] = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        let hex = |d: [u8; MD5_LEN]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        for (message, expected) in cases {
            // One lane alone, as a lane finishes a longer message than its neighbours.
            let alone = finish_one(INIT, &Blocks::new(message.as_bytes()), 0);
            assert_eq!(hex(alone), expected, "{message:?}");
        }
        let messages: Vec<&[u8]> = cases.iter().map(|(m, _)| m.as_bytes()).collect();
        md5_each(&messages, |i, d| {
            assert_eq!(hex(d), cases[i].1, "{:?}", cases[i].0)
        });
    }

    #[test]
    fn every_padding_boundary_side_by_side() {
        // Lengths around the one/two padding block edge (55, 56, 63, 64) and block multiples,
        // in lanes of different lengths.
        let data: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for base in [0usize, 50, 55, 56, 57, 63, 64, 65, 119, 120, 128, 200] {
            let lens: [usize; LANES] =
                std::array::from_fn(|lane| base + [0, 1, 9, 64][lane % 4] + lane / 4 * 3);
            let messages: [&[u8]; LANES] = lens.map(|n| &data[..n]);
            let digests = md5_lanes(messages);
            for (message, digest) in messages.iter().zip(digests) {
                assert_eq!(digest, reference(message), "length {}", message.len());
            }
        }
    }

    proptest! {
        #[test]
        fn matches_md5_crate(messages in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..700), 0..11)
        ) {
            let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let mut seen = 0;
            md5_each(&slices, |i, digest| {
                assert_eq!(i, seen);
                seen += 1;
                assert_eq!(digest, reference(slices[i]), "message {i} of {} bytes", slices[i].len());
            });
            prop_assert_eq!(seen, slices.len());
        }
    }
}
