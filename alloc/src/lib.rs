//! The gateway's global allocator: mimalloc, reached through `mi_malloc` for the common
//! alignments instead of always through `mi_malloc_aligned`.
//!
//! The `mimalloc` crate's `GlobalAlloc` calls the aligned API for every allocation. mimalloc 3
//! serves an aligned request from its fast path only when the size class's free list has a
//! suitably aligned block ready; otherwise it takes a generic path that over-allocates
//! (`size + align - 1`) for any size whose block is not a power of two. A proxy makes dozens of
//! small, short-lived allocations per request, so that path showed up as several thousand
//! instructions per request. Every mimalloc block is at least 8-byte aligned (blocks are whole
//! words, and the first block of a page is 16-byte aligned), so requests with an alignment of
//! 8 or less go to the plain API; larger alignments keep the aligned API.
//!
//! This crate is separate because it needs `unsafe` (an allocator is an `unsafe` trait over a
//! foreign function interface), which the gateway crate forbids.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as mi;

/// Alignment every mimalloc block has whatever its size.
const WORD_ALIGN: usize = 8;

/// mimalloc as the global allocator.
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

// SAFETY: every method forwards to mimalloc with a size and an alignment that satisfy the
// layout: the plain calls are used only when `layout.align() <= WORD_ALIGN`, which every
// mimalloc block meets; the others pass the alignment on. `mi_free` accepts pointers from
// both families.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the allocation calls above.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from one of the allocation calls above with `layout`; the new
        // block keeps its alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn blocks_meet_their_alignment_and_keep_their_bytes() {
        let a = MiMalloc;
        let mut live = Vec::new();
        for size in 1..=4096usize {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: the layout has a non-zero size; the block is filled within its size,
                // read back, grown and freed with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    core::ptr::write_bytes(p, (size % 251) as u8, size);
                    let q = a.realloc(p, layout, size * 2);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == (size % 251) as u8));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    live.push((q, Layout::from_size_align_unchecked(size * 2, align)));
                    live.push((z, layout));
                }
            }
            if live.len() > 512 {
                for (p, l) in live.drain(..) {
                    // SAFETY: allocated above with this layout.
                    unsafe { a.dealloc(p, l) };
                }
            }
        }
        for (p, l) in live {
            // SAFETY: allocated above with this layout.
            unsafe { a.dealloc(p, l) };
        }
    }
}
