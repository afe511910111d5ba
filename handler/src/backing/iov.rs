//! Scatter-gather helpers: sub-ranges of caller-owned iovec lists without
//! copying the payload, and small gathers/scatters for control data.

use std::io::{IoSlice, IoSliceMut};

/// Linux's IOV_MAX: the most segments one preadv/pwritev call accepts.
pub const IOV_MAX: usize = 1024;

/// Total bytes in a data-out list.
pub fn total_len(bufs: &[IoSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Total bytes in a data-in list.
pub fn total_len_mut(bufs: &[IoSliceMut<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Borrow `len` bytes starting at byte `start` of `bufs` as a new list.
/// Stops early if `bufs` is shorter: callers check `total_len` first.
pub fn sub_slices<'a>(bufs: &'a [IoSlice<'_>], start: usize, len: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut want = len;
    for b in bufs {
        if want == 0 {
            break;
        }
        let s: &'a [u8] = b;
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let s = &s[skip..];
        skip = 0;
        let n = s.len().min(want);
        out.push(IoSlice::new(&s[..n]));
        want -= n;
    }
    out
}

/// Mutable counterpart of [`sub_slices`].
pub fn sub_slices_mut<'a>(
    bufs: &'a mut [IoSliceMut<'_>],
    start: usize,
    len: usize,
) -> Vec<IoSliceMut<'a>> {
    let mut out = Vec::new();
    let mut skip = start;
    let mut want = len;
    for b in bufs.iter_mut() {
        if want == 0 {
            break;
        }
        let s: &'a mut [u8] = &mut b[..];
        if skip >= s.len() {
            skip -= s.len();
            continue;
        }
        let s = &mut s[skip..];
        skip = 0;
        let n = s.len().min(want);
        out.push(IoSliceMut::new(&mut s[..n]));
        want -= n;
    }
    out
}

/// Copy bytes from `bufs` starting at byte `start` into `dst`; returns how
/// many were copied (less than `dst.len()` only if `bufs` runs out).
pub fn gather(bufs: &[IoSlice<'_>], start: usize, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for s in sub_slices(bufs, start, dst.len()) {
        dst[done..done + s.len()].copy_from_slice(&s);
        done += s.len();
    }
    done
}

/// Copy `src` into `bufs` from byte `start` on; returns how many bytes fit.
pub fn scatter(bufs: &mut [IoSliceMut<'_>], start: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for mut d in sub_slices_mut(bufs, start, src.len()) {
        let n = d.len();
        d.copy_from_slice(&src[done..done + n]);
        done += n;
    }
    done
}

/// True if every segment starts at and spans a multiple of `align` bytes.
pub fn is_aligned(bufs: &[&[u8]], align: usize) -> bool {
    align <= 1
        || bufs
            .iter()
            .all(|b| b.as_ptr().align_offset(align) == 0 && b.len().is_multiple_of(align))
}

/// A heap buffer whose payload starts at an `align`-byte boundary, for
/// O_DIRECT bounce I/O. Built from a plain Vec: no unsafe, a little slack.
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (a power of two).
    pub fn zeroed(len: usize, align: usize) -> Self {
        let align = align.max(1);
        let raw = vec![0u8; len + align];
        let off = raw.as_ptr().align_offset(align);
        Self { raw, off, len }
    }

    /// The aligned payload.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    /// The aligned payload, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_slices_cross_segments() {
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let c = [6u8, 7, 8, 9];
        let l = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let s = sub_slices(&l, 2, 5);
        let flat: Vec<u8> = s.iter().flat_map(|x| x.iter().copied()).collect();
        assert_eq!(flat, vec![3, 4, 5, 6, 7]);
        assert_eq!(s.len(), 3);
        let mut d = [0u8; 4];
        assert_eq!(gather(&l, 7, &mut d), 2);
        assert_eq!(&d[..2], &[8, 9]);
    }

    #[test]
    fn scatter_crosses_segments() {
        let mut a = [0u8; 2];
        let mut b = [0u8; 3];
        {
            let mut l = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
            assert_eq!(scatter(&mut l, 1, &[7, 8, 9, 10, 11]), 4);
        }
        assert_eq!(a, [0, 7]);
        assert_eq!(b, [8, 9, 10]);
    }

    #[test]
    fn aligned_buf_is_aligned() {
        for align in [512usize, 4096] {
            let b = AlignedBuf::zeroed(8192, align);
            assert_eq!(b.as_slice().as_ptr().align_offset(align), 0);
            assert_eq!(b.as_slice().len(), 8192);
            assert!(is_aligned(&[b.as_slice()], align));
        }
    }
}
