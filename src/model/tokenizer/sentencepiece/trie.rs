//! The pieces of a vocabulary in a byte trie.

/// A byte trie of the matched pieces, walked from one position of the normalised text as
/// sentencepiece walks its double array: every piece that prefixes the text, shortest first.
#[derive(Default)]
pub(super) struct PieceTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Default)]
struct TrieNode {
    /// Children sorted by byte.
    children: Vec<(u8, u32)>,
    piece: Option<u32>,
}

impl PieceTrie {
    pub(super) fn insert(&mut self, key: &[u8], id: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut node = 0;
        for &b in key {
            let children = &self.nodes[node].children;
            node = match children.binary_search_by_key(&b, |&(c, _)| c) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes[node].children.insert(i, (b, next as u32));
                    self.nodes.push(TrieNode::default());
                    next
                }
            };
        }
        self.nodes[node].piece = Some(id);
    }

    /// `(length in bytes, piece id)` of every piece that prefixes `text`, shortest first.
    pub(super) fn prefixes<'a>(
        &'a self,
        text: &'a [u8],
    ) -> impl Iterator<Item = (usize, u32)> + 'a {
        let mut node = (!self.nodes.is_empty()).then_some(0usize);
        text.iter()
            .enumerate()
            .map_while(move |(i, &b)| {
                let children = &self.nodes[node?].children;
                let next = children
                    .binary_search_by_key(&b, |&(c, _)| c)
                    .ok()
                    .map(|j| children[j].1 as usize)?;
                node = Some(next);
                Some((i + 1, self.nodes[next].piece))
            })
            .filter_map(|(len, piece)| piece.map(|id| (len, id)))
    }
}
