//! The guest's allocator and its two regions of linear memory.
//!
//! OPA's memory model: the host loads `data`, reads `opa_heap_ptr_get()`, and from then on
//! treats everything above that pointer as scratch: it writes each evaluation's input
//! there and hands the guest a fresh `heap_ptr` per `opa_eval`. So the guest
//!
//! * bump-allocates everything the host can see (values, strings, evaluation scratch) in
//!   the **scratch heap**, whose top is reset to the host's `heap_ptr` per evaluation; and
//! * keeps what must outlive an evaluation (the compiled policy, regorus' lazily built
//!   statics) in a **persistent arena** placed *below* the scratch heap, reserved on first
//!   use. Only code running inside [`persistent`] allocates there.
//!
//! Layout: `[stack | static data | embedded policy blob | arena | scratch heap →]`.
//! Untouched pages of a grown memory cost the host nothing, so the arena's reservation is
//! virtual until the compiled policy actually fills it.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::Cell;
use core::ptr;

const PAGE: usize = 64 * 1024;

/// Arena reservation when the bundle builder did not set one.
pub const DEFAULT_ARENA_BYTES: usize = 8 * 1024 * 1024;

unsafe extern "C" {
    /// First byte after the module's static data (set by wasm-ld).
    static __heap_base: u8;
}

/// The allocator state. wasm32-unknown-unknown has no threads, so `Cell` is enough.
pub struct Heap {
    ready: Cell<bool>,
    /// Start of the scratch heap; nothing the guest owns lives above it long-term.
    base: Cell<usize>,
    /// Next free byte of the scratch heap.
    top: Cell<usize>,
    arena_start: Cell<usize>,
    arena_top: Cell<usize>,
    arena_end: Cell<usize>,
    persistent: Cell<bool>,
}

// SAFETY: the guest is single-threaded (wasm32-unknown-unknown without atomics).
unsafe impl Sync for Heap {}

#[global_allocator]
pub static HEAP: Heap = Heap {
    ready: Cell::new(false),
    base: Cell::new(0),
    top: Cell::new(0),
    arena_start: Cell::new(0),
    arena_top: Cell::new(0),
    arena_end: Cell::new(0),
    persistent: Cell::new(false),
};

const fn align_up(addr: usize, align: usize) -> Option<usize> {
    match addr.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Grows linear memory so that `[0, end)` is addressable.
fn ensure_memory(end: usize) -> bool {
    let current = wasm32::memory_size(0) * PAGE;
    if end <= current {
        return true;
    }
    let pages = (end - current).div_ceil(PAGE);
    wasm32::memory_grow(0, pages) != usize::MAX
}

impl Heap {
    /// Lays the regions out on first use; the embedded blob (if any) sits at the old
    /// heap base and the bundle builder tells us where it ends.
    fn ready(&self) {
        if self.ready.get() {
            return;
        }
        let slot = crate::policy::slot();
        // Taking the address of a linker-provided symbol, never reading it.
        let linker_base = ptr::addr_of!(__heap_base) as usize;
        let start = if slot.heap_base != 0 {
            slot.heap_base as usize
        } else {
            linker_base
        };
        let arena_bytes = if slot.arena_bytes != 0 {
            slot.arena_bytes as usize
        } else {
            DEFAULT_ARENA_BYTES
        };
        let arena_start = align_up(start, 16).unwrap_or(start);
        let arena_end =
            align_up(arena_start.saturating_add(arena_bytes), PAGE).unwrap_or(usize::MAX);
        self.arena_start.set(arena_start);
        self.arena_top.set(arena_start);
        self.arena_end.set(arena_end);
        self.base.set(arena_end);
        self.top.set(arena_end);
        self.ready.set(true);
    }

    fn bump(cell: &Cell<usize>, layout: Layout, limit: usize) -> *mut u8 {
        let Some(start) = align_up(cell.get(), layout.align()) else {
            return ptr::null_mut();
        };
        let Some(end) = start.checked_add(layout.size()) else {
            return ptr::null_mut();
        };
        if end > limit || !ensure_memory(end) {
            return ptr::null_mut();
        }
        cell.set(end);
        start as *mut u8
    }

    fn region(&self) -> (&Cell<usize>, usize) {
        if self.persistent.get() {
            (&self.arena_top, self.arena_end.get())
        } else {
            (&self.top, usize::MAX)
        }
    }

    /// The scratch heap's current top (`opa_heap_ptr_get`).
    pub fn top(&self) -> usize {
        self.ready();
        self.top.get()
    }

    /// Resets the scratch heap (`opa_heap_ptr_set`, and per `opa_eval`). Never below the
    /// scratch base: the arena under it belongs to the guest.
    pub fn set_top(&self, addr: usize) {
        self.ready();
        self.top.set(addr.max(self.base.get()));
    }
}

/// Out of memory: report it with a static message (allocating now would recurse) and
/// trap. The host turns this into a `policy_error` deny and drops the instance.
fn out_of_memory(arena: bool) -> ! {
    let msg: &[u8] = if arena {
        b"wardmesh policy guest: out of memory: the compiled policy outgrew its arena\0"
    } else {
        b"wardmesh policy guest: out of memory: evaluation exceeded the host's memory cap\0"
    };
    crate::abort_static(msg)
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.ready();
        let (cell, limit) = self.region();
        let p = Self::bump(cell, layout, limit);
        if p.is_null() {
            out_of_memory(self.persistent.get());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Bump allocation: only the most recent block of a region is given back.
        let end = ptr as usize + layout.size();
        if end == self.top.get() && ptr as usize >= self.base.get() {
            self.top.set(ptr as usize);
        } else if end == self.arena_top.get() {
            self.arena_top.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, old: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let start = old as usize;
        let end = start + layout.size();
        let (cell, limit) = self.region();
        // The last block of the active region grows in place.
        let in_active_region = if self.persistent.get() {
            start < self.base.get()
        } else {
            start >= self.base.get()
        };
        if end == cell.get() && in_active_region {
            if let Some(new_end) = start.checked_add(new_size)
                && new_end <= limit
                && ensure_memory(new_end)
            {
                cell.set(new_end);
                return old;
            }
            out_of_memory(self.persistent.get());
        }
        // SAFETY: the caller guarantees `layout` describes `old`; the new layout keeps
        // its alignment and the copy is bounded by the smaller size.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                ptr::copy_nonoverlapping(old, new, layout.size().min(new_size));
                self.dealloc(old, layout);
            }
            new
        }
    }
}

/// Runs `f` with every allocation going to the persistent arena.
pub fn persistent<R>(f: impl FnOnce() -> R) -> R {
    let was = HEAP.persistent.replace(true);
    let out = f();
    HEAP.persistent.set(was);
    out
}
