//! Fixed-width integers read from bytes at an offset: the one byte decoder
//! of cj. Every read is bounds-checked and says `None` past the end; what a
//! missing field means is the caller's decision, written where it reads.
//! Persistent formats are little-endian; kernel structures are the
//! machine's own byte order.

macro_rules! reader {
    ($name:ident, $t:ty, $conv:ident) => {
        #[inline]
        pub fn $name(b: &[u8], at: usize) -> Option<$t> {
            const N: usize = std::mem::size_of::<$t>();
            let s = b.get(at..at.checked_add(N)?)?;
            Some(<$t>::$conv(s.try_into().ok()?))
        }
    };
}

reader!(le_u16, u16, from_le_bytes);
reader!(le_u32, u32, from_le_bytes);
reader!(le_u64, u64, from_le_bytes);
reader!(le_i32, i32, from_le_bytes);
reader!(ne_u16, u16, from_ne_bytes);
reader!(ne_u32, u32, from_ne_bytes);
reader!(ne_u64, u64, from_ne_bytes);
reader!(ne_i32, i32, from_ne_bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_none_past_the_end() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le_u16(&b, 0), Some(0x0201));
        assert_eq!(le_u32(&b, 1), Some(0x0504_0302));
        assert_eq!(le_u64(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(le_u64(&b, 2), None);
        assert_eq!(le_u32(&b, usize::MAX - 1), None, "no overflow");
        assert_eq!(le_i32(&[0xff; 4], 0), Some(-1));
        assert_eq!(ne_u32(&b, 0), Some(u32::from_ne_bytes([1, 2, 3, 4])));
    }
}
