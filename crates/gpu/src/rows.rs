//! What one forward call of the engine is told besides its tokens: the row table (per row: its position, its
//! sequence, and where its keys live in the KV cache) and the lists buffer (which rows each persona operation of
//! each residual index reads, and where its results go). Both are written once per call; the per-index kernels
//! find their list through a fixed directory at the start of the lists buffer, so their uniforms never change
//! between calls.

/// One row of a ragged batch (32 bytes, the shaders' `Row`). Key `j` of the row's sequence is at cache row
/// `prefix_base + j` for `j < prefix_len` and `own_base + (j - prefix_len)` otherwise.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Row {
    /// Absolute position of the row's token in its sequence.
    pub pos: u32,
    /// Wave index of the sequence (steering entries name it).
    pub seq: u32,
    /// Cache row this row's key and value are written to.
    pub kv_row: u32,
    pub own_base: u32,
    pub prefix_base: u32,
    pub prefix_len: u32,
    pub _pad: [u32; 2],
}

/// The WGSL of [`Row`], given to every shader that reads the row table as the `ROW` define (WGSL has no includes).
pub const ROW_WGSL: &str = "struct Row { pos: u32, seq: u32, kv_row: u32, own_base: u32, prefix_base: u32, \
     prefix_len: u32, _pad0: u32, _pad1: u32, }";

impl Row {
    /// Cache row of key `j` (`j <= pos`).
    pub fn key_row(&self, j: u32) -> u32 {
        if j < self.prefix_len {
            self.prefix_base + j
        } else {
            self.own_base + (j - self.prefix_len)
        }
    }
}

/// Which list a directory entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// (row, out offset) pairs: rows captured at residual index L.
    Capture(usize),
    /// (first row, rows, out offset, 0): runs of rows summed at residual index L.
    Sum(usize),
    /// (row, out base) pairs: rows projected at residual index L.
    Project(usize),
    /// (row, head row) pairs: rows gathered into the LM head's input for head chunk c.
    Head(usize),
    /// (head row, target token, out offset, 0): log-probabilities of head chunk c.
    Logprob(usize),
}

impl List {
    /// Words per entry.
    pub fn stride(self) -> usize {
        match self {
            List::Capture(_) | List::Project(_) | List::Head(_) => 2,
            List::Sum(_) | List::Logprob(_) => 4,
        }
    }
}

/// The lists buffer's layout: word 0 the row count, then a (first word, count) directory entry per list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Residual indices (N + 1).
    pub layers: usize,
    /// Head chunks per forward call.
    pub chunks: usize,
}

impl Layout {
    /// Word of the directory entry of `list`.
    pub fn dir(&self, list: List) -> usize {
        let l = self.layers;
        1 + 2 * match list {
            List::Capture(i) => i,
            List::Sum(i) => l + i,
            List::Project(i) => 2 * l + i,
            List::Head(c) => 3 * l + 2 * c,
            List::Logprob(c) => 3 * l + 2 * c + 1,
        }
    }

    fn header(&self) -> usize {
        1 + 2 * (3 * self.layers + 2 * self.chunks)
    }

    fn all(&self) -> impl Iterator<Item = List> + '_ {
        let per_layer = (0..self.layers).flat_map(|i| [List::Capture(i), List::Sum(i), List::Project(i)]);
        per_layer.chain((0..self.chunks).flat_map(|c| [List::Head(c), List::Logprob(c)]))
    }
}

/// The lists of one forward call, filled list by list in any order.
#[derive(Debug, Clone)]
pub struct Lists {
    layout: Layout,
    rows: u32,
    /// Entries per directory slot (indexed by directory word).
    entries: Vec<Vec<u32>>,
}

impl Lists {
    pub fn new(layout: Layout, rows: u32) -> Self {
        Lists { layout, rows, entries: vec![Vec::new(); layout.header()] }
    }

    /// Appends one entry (`list.stride()` words) to `list`.
    pub fn push(&mut self, list: List, entry: &[u32]) {
        debug_assert_eq!(entry.len(), list.stride());
        if let Some(e) = self.entries.get_mut(self.layout.dir(list)) {
            e.extend_from_slice(entry);
        }
    }

    /// Entries in `list`.
    pub fn count(&self, list: List) -> u32 {
        self.entries.get(self.layout.dir(list)).map_or(0, |e| (e.len() / list.stride()) as u32)
    }

    /// The buffer's words: header, directory, then every list.
    pub fn words(&self) -> Vec<u32> {
        let mut w = vec![0u32; self.layout.header()];
        w[0] = self.rows;
        for list in self.layout.all() {
            let dir = self.layout.dir(list);
            let e = &self.entries[dir];
            w[dir] = w.len() as u32;
            w[dir + 1] = (e.len() / list.stride()) as u32;
            w.extend_from_slice(e);
        }
        w
    }

    /// Upper bound of the words of a call with `rows` rows, `seqs` sequence runs and `head` head rows.
    pub fn capacity(layout: Layout, rows: usize, seqs: usize) -> usize {
        // Every row may be captured and projected at every index, every run summed at every index, and every row
        // may need its logits (gathered and given a log-probability).
        layout.header() + layout.layers * (2 * rows + 2 * rows + 4 * seqs) + 6 * rows
    }
}
