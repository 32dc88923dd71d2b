//! Connections keyed by their mio [`Token`]: a slab (a vector of slots and a free list), so
//! finding the connection of an event is an index, and tokens are reused instead of growing.

use mio::Token;

pub struct Table<T> {
    /// Tokens below this belong to the driver's fixed sources (waker, signals, UDP).
    first: usize,
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Table<T> {
    /// A table whose tokens start at `first`.
    pub fn new(first: usize) -> Table<T> {
        Table {
            first,
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// The token the next [`Table::insert`] will use.
    pub fn vacant(&self) -> Token {
        Token(self.first + self.free.last().copied().unwrap_or(self.slots.len()))
    }

    /// Store `make(token)` under a fresh token.
    pub fn insert(&mut self, make: impl FnOnce(Token) -> T) -> Token {
        let token = self.vacant();
        let value = make(token);
        match self.free.pop() {
            Some(i) => self.slots[i] = Some(value),
            None => self.slots.push(Some(value)),
        }
        self.len += 1;
        token
    }

    fn index(&self, token: Token) -> Option<usize> {
        token
            .0
            .checked_sub(self.first)
            .filter(|i| *i < self.slots.len())
    }

    pub fn get_mut(&mut self, token: Token) -> Option<&mut T> {
        let i = self.index(token)?;
        self.slots[i].as_mut()
    }

    pub fn get(&self, token: Token) -> Option<&T> {
        let i = self.index(token)?;
        self.slots[i].as_ref()
    }

    pub fn remove(&mut self, token: Token) -> Option<T> {
        let i = self.index(token)?;
        let value = self.slots[i].take()?;
        self.free.push(i);
        self.len -= 1;
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every token in use.
    pub fn tokens(&self) -> Vec<Token> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .map(|i| Token(self.first + i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_reused_and_foreign_ones_ignored() {
        let mut t = Table::new(3);
        let a = t.insert(|tok| tok.0 * 10);
        let b = t.insert(|tok| tok.0 * 10);
        assert_eq!((a, b), (Token(3), Token(4)));
        assert_eq!(t.get(b), Some(&40));
        assert_eq!(t.remove(a), Some(30));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(Token(0)), None);
        assert_eq!(t.get(Token(99)), None);
        assert_eq!(t.insert(|tok| tok.0), Token(3));
        assert_eq!(t.len(), 2);
        assert_eq!(t.tokens(), vec![Token(3), Token(4)]);
    }
}
