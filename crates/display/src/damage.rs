//! Damage accumulation: the rectangles of a scanout that changed since a
//! viewer last looked, kept small.
//!
//! A viewer that is slower than the guest does not queue frames: the
//! damage of the frames it has not fetched yet merges here, and when it
//! fetches, it reads the pixels as they are then, skipping the intermediate
//! frames. Overlapping or touching rectangles merge into their bounding box,
//! and past [`MAX_RECTS`] all of them merge into one.

use crate::Rect;

/// The most separate rectangles a set keeps before merging them all.
pub const MAX_RECTS: usize = 16;

/// `a` ∪ `b`'s bounding box.
pub fn union(a: Rect, b: Rect) -> Rect {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = right(a).max(right(b));
    let y1 = bottom(a).max(bottom(b));
    Rect::new(
        x0,
        y0,
        clamp32(x1 - u64::from(x0)),
        clamp32(y1 - u64::from(y0)),
    )
}

/// `r` clipped to a `width` x `height` area (empty when outside).
pub fn clip(r: Rect, width: u32, height: u32) -> Rect {
    if r.x >= width || r.y >= height {
        return Rect::default();
    }
    let w = (right(r).min(u64::from(width)) - u64::from(r.x)) as u32;
    let h = (bottom(r).min(u64::from(height)) - u64::from(r.y)) as u32;
    Rect::new(r.x, r.y, w, h)
}

/// Whether `outer` covers all of `inner`.
pub fn contains(outer: Rect, inner: Rect) -> bool {
    inner.x >= outer.x
        && inner.y >= outer.y
        && right(inner) <= right(outer)
        && bottom(inner) <= bottom(outer)
}

/// Whether `a` and `b` overlap or share an edge.
fn touches(a: Rect, b: Rect) -> bool {
    u64::from(a.x) <= right(b)
        && u64::from(b.x) <= right(a)
        && u64::from(a.y) <= bottom(b)
        && u64::from(b.y) <= bottom(a)
}

fn right(r: Rect) -> u64 {
    u64::from(r.x) + u64::from(r.width)
}

fn bottom(r: Rect) -> u64 {
    u64::from(r.y) + u64::from(r.height)
}

fn clamp32(v: u64) -> u32 {
    v.min(u64::from(u32::MAX)) as u32
}

/// A small set of damaged rectangles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DamageSet {
    rects: Vec<Rect>,
}

impl DamageSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.rects.is_empty()
    }

    /// The rectangles, none empty, none containing another.
    pub fn rects(&self) -> &[Rect] {
        &self.rects
    }

    pub fn clear(&mut self) {
        self.rects.clear();
    }

    /// Adds `r`, merging it with the rectangles it overlaps or touches.
    pub fn add(&mut self, r: Rect) {
        if r.is_empty() || self.rects.iter().any(|&e| contains(e, r)) {
            return;
        }
        let mut merged = r;
        // Merging can make the box touch rectangles it did not before:
        // repeat until nothing more merges.
        loop {
            let before = self.rects.len();
            self.rects.retain(|&e| {
                if touches(e, merged) {
                    merged = union(merged, e);
                    false
                } else {
                    true
                }
            });
            if self.rects.len() == before {
                break;
            }
        }
        self.rects.push(merged);
        if self.rects.len() > MAX_RECTS {
            let all = self.bounds();
            self.rects.clear();
            self.rects.push(all);
        }
    }

    /// The bounding box of everything (empty when the set is).
    pub fn bounds(&self) -> Rect {
        self.rects
            .iter()
            .fold(Rect::default(), |acc, &r| union(acc, r))
    }

    /// Takes the rectangles out, leaving the set empty.
    pub fn take(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.rects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_rects_are_ignored() {
        let mut d = DamageSet::new();
        d.add(Rect::new(5, 5, 0, 10));
        d.add(Rect::new(5, 5, 10, 0));
        assert!(d.is_empty());
    }

    #[test]
    fn disjoint_rects_stay_apart() {
        let mut d = DamageSet::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(100, 100, 10, 10));
        assert_eq!(
            d.rects(),
            &[Rect::new(0, 0, 10, 10), Rect::new(100, 100, 10, 10)]
        );
    }

    #[test]
    fn contained_rect_adds_nothing() {
        let mut d = DamageSet::new();
        d.add(Rect::new(0, 0, 100, 100));
        d.add(Rect::new(10, 10, 5, 5));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 100, 100)]);
    }

    #[test]
    fn overlapping_and_touching_rects_merge() {
        let mut d = DamageSet::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(5, 5, 10, 10));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 15, 15)]);
        // Shares the right edge.
        d.add(Rect::new(15, 0, 5, 5));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 20, 15)]);
    }

    #[test]
    fn merging_cascades() {
        let mut d = DamageSet::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(30, 0, 10, 10));
        assert_eq!(d.rects().len(), 2);
        // Bridges both.
        d.add(Rect::new(8, 0, 24, 2));
        assert_eq!(d.rects(), &[Rect::new(0, 0, 40, 10)]);
    }

    #[test]
    fn too_many_rects_collapse_to_the_bounding_box() {
        let mut d = DamageSet::new();
        for i in 0..=MAX_RECTS as u32 {
            d.add(Rect::new(i * 20, i * 20, 2, 2));
        }
        let last = MAX_RECTS as u32 * 20;
        assert_eq!(d.rects(), &[Rect::new(0, 0, last + 2, last + 2)]);
    }

    #[test]
    fn many_frames_of_the_same_area_stay_one_rect() {
        let mut d = DamageSet::new();
        for _ in 0..10_000 {
            d.add(Rect::new(0, 0, 1920, 1080));
        }
        assert_eq!(d.take(), vec![Rect::new(0, 0, 1920, 1080)]);
        assert!(d.is_empty());
    }

    #[test]
    fn clip_and_union_handle_extremes() {
        assert_eq!(
            clip(Rect::new(10, 10, 100, 100), 50, 40),
            Rect::new(10, 10, 40, 30)
        );
        assert!(clip(Rect::new(50, 0, 1, 1), 50, 40).is_empty());
        assert_eq!(
            clip(Rect::new(u32::MAX - 1, 0, u32::MAX, 1), u32::MAX, 1),
            Rect::new(u32::MAX - 1, 0, 1, 1)
        );
        let u = union(
            Rect::new(0, 0, 1, 1),
            Rect::new(u32::MAX - 1, 0, u32::MAX, 1),
        );
        assert_eq!(u, Rect::new(0, 0, u32::MAX, 1));
    }
}
