//! A FIFO bounded by the bytes it holds: every queue between the data channels and the local
//! sockets is one of these, so a stalled side can cost at most a known amount of memory.

use std::collections::VecDeque;

/// An item that knows its size in bytes.
pub trait ByteSize {
    fn size(&self) -> usize;
}

impl ByteSize for tungstenite::Message {
    fn size(&self) -> usize {
        self.len()
    }
}

/// One data-channel message waiting for the peer's send budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub binary: bool,
    pub data: tungstenite::Bytes,
}

impl ByteSize for Frame {
    fn size(&self) -> usize {
        self.data.len()
    }
}

/// The queue is full: the item was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Debug)]
pub struct ByteQueue<T> {
    items: VecDeque<T>,
    bytes: usize,
    limit: usize,
}

impl<T: ByteSize> ByteQueue<T> {
    pub fn new(limit: usize) -> ByteQueue<T> {
        ByteQueue {
            items: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Add at the back, unless that would pass the limit. An item larger than the whole limit
    /// is accepted only into an empty queue, so one big message cannot wedge a bridge.
    pub fn push(&mut self, item: T) -> Result<(), Full> {
        let size = item.size();
        if !self.items.is_empty() && self.bytes + size > self.limit {
            return Err(Full);
        }
        self.bytes += size;
        self.items.push_back(item);
        Ok(())
    }

    /// Add at the back whatever the limit: only for items bounded elsewhere (an HTTP proxy
    /// response, capped by the pool's body limit and delivered one at a time).
    pub fn push_bounded_elsewhere(&mut self, item: T) {
        self.bytes += item.size();
        self.items.push_back(item);
    }

    /// Put an item back at the front (it could not be sent after all). Never fails: it was
    /// counted before.
    pub fn push_front(&mut self, item: T) {
        self.bytes += item.size();
        self.items.push_front(item);
    }

    pub fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes -= item.size();
        Some(item)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The newest item, to change in ways that keep its size.
    pub fn back_mut(&mut self) -> Option<&mut T> {
        self.items.back_mut()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// At or above half the limit: time to stop taking more from the source.
    pub fn is_high(&self) -> bool {
        self.bytes >= self.limit / 2
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Frame {
        Frame {
            binary: true,
            data: vec![0; n].into(),
        }
    }

    #[test]
    fn bounded_by_bytes() {
        let mut q = ByteQueue::new(100);
        q.push(frame(60)).unwrap();
        assert!(q.is_high());
        assert_eq!(q.push(frame(50)), Err(Full));
        q.push(frame(40)).unwrap();
        assert_eq!(q.bytes(), 100);
        assert_eq!(q.pop().unwrap().data.len(), 60);
        assert_eq!(q.bytes(), 40);
        q.push_front(frame(60));
        assert_eq!(q.len(), 2);
        q.clear();
        assert!(q.is_empty());
        // One oversized item fits an empty queue.
        q.push(frame(500)).unwrap();
        assert_eq!(q.push(frame(1)), Err(Full));
    }
}
