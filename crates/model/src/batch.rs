//! The input of one forward pass: the new tokens of several sequences, flattened,
//! with what the model must know of each sequence.

/// Which logits a sequence wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRows {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last new token's (to sample the next token).
    Last,
    /// Every new token's (prompt log-probabilities).
    All,
}

/// One sequence of a batch.
#[derive(Debug, Clone)]
pub struct SeqInput {
    /// Its new tokens, in order.
    pub tokens: Vec<u32>,
    /// Tokens of this sequence already in the cache; the new tokens take
    /// positions `num_cached..num_cached + tokens.len()`.
    pub num_cached: usize,
    /// Cache blocks holding positions `0..` in order; must cover every position
    /// up to the last new token.
    pub block_table: Vec<u32>,
    pub logits: LogitsRows,
}

/// A flattened batch. The logits come back as one `[rows, vocab]` f32 matrix:
/// the requested rows of each sequence, sequences in order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub seqs: Vec<SeqInput>,
}

impl Batch {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}
