//! The allocator of a binary that also serves as the extraction child: mimalloc in the child,
//! the system allocator everywhere else.
//!
//! pdf_oxide's layout analysis spends about a quarter of its time in malloc/free; with mimalloc
//! the child extracts ~25 % faster (BENCHMARKS.md). The server stays on the system allocator,
//! whose idle footprint is a third of mimalloc's. The choice is made once, at the process's first
//! allocation, from an environment variable that [`crate::isolate`] sets for the child, and
//! never changes afterwards, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// The variable that selects mimalloc (any value); set for the extraction child.
pub const CHILD_ALLOCATOR_ENV: &str = "AGENTDESK_PDF_CHILD_ALLOCATOR";

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The global allocator for `agentdesk` and the tests' extraction child:
/// `#[global_allocator] static A: ProcessAllocator = ProcessAllocator;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessAllocator;

fn mimalloc_chosen() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        SYSTEM => false,
        MIMALLOC => true,
        _ => {
            // The first allocation happens before `main`, on the only thread; reading the
            // environment must not allocate, hence libc's getenv. Should two threads ever race
            // here they read the same unchanged environment and agree.
            // SAFETY: the name is a valid NUL-terminated string; nothing modifies the
            // environment before the first allocation.
            let set = unsafe { !libc::getenv(c"AGENTDESK_PDF_CHILD_ALLOCATOR".as_ptr()).is_null() };
            CHOICE.store(if set { MIMALLOC } else { SYSTEM }, Ordering::Relaxed);
            set
        }
    }
}

// SAFETY: every call is forwarded to one allocator, the same one for the life of the process.
unsafe impl GlobalAlloc for ProcessAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if mimalloc_chosen() {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if mimalloc_chosen() {
                MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if mimalloc_chosen() {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if mimalloc_chosen() {
                MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_name_matches_the_one_read_before_main() {
        // getenv takes a C string literal; keep it and the public constant the same.
        assert_eq!(
            c"AGENTDESK_PDF_CHILD_ALLOCATOR".to_str().ok(),
            Some(CHILD_ALLOCATOR_ENV)
        );
    }
}
