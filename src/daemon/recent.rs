//! The ring of recently processed frames (embedding + thumbnail), so an operator can label
//! "frame 1234" after seeing its prediction: the embedding is reused (no second inference) and
//! the thumbnail is what the store keeps. Fixed capacity; the oldest frame falls out.

use std::collections::VecDeque;

/// One remembered frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentFrame {
    pub frame_id: u64,
    pub embedding: Vec<f32>,
    pub thumbnail: Option<Vec<u8>>,
}

/// The last `capacity` frames, oldest first.
#[derive(Debug)]
pub struct RecentFrames {
    capacity: usize,
    frames: VecDeque<RecentFrame>,
}

impl RecentFrames {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            frames: VecDeque::with_capacity(capacity),
        }
    }

    /// Remembers a frame, forgetting the oldest when full (capacity 0 keeps nothing).
    pub fn push(&mut self, frame: RecentFrame) {
        if self.capacity == 0 {
            return;
        }
        while self.frames.len() >= self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// The frame with this id, if still remembered.
    pub fn get(&self, frame_id: u64) -> Option<&RecentFrame> {
        self.frames.iter().rev().find(|f| f.frame_id == frame_id)
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: u64) -> RecentFrame {
        RecentFrame {
            frame_id: id,
            embedding: vec![id as f32],
            thumbnail: None,
        }
    }

    #[test]
    fn keeps_the_newest_frames() {
        let mut ring = RecentFrames::new(3);
        for id in 0..5 {
            ring.push(frame(id));
        }
        assert_eq!(ring.len(), 3);
        assert!(ring.get(1).is_none());
        assert_eq!(ring.get(4).unwrap().embedding, vec![4.0]);
        assert_eq!(ring.get(2).unwrap().frame_id, 2);
        let mut none = RecentFrames::new(0);
        none.push(frame(1));
        assert!(none.is_empty());
    }
}
