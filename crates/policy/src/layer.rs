//! Layering: how an ordered list of boxes (first match wins) becomes a few
//! lookups of non-overlapping boxes.
//!
//! Box `j` goes to layer `1 + max(layer(i))` over the earlier boxes `i` that
//! overlap it (0 when none does). Then no two boxes of a layer overlap (what
//! the kernel's concatenated interval maps require), and the first layer in
//! which a flow matches holds the box of the *first* rule that matches it:
//! every other matching box overlaps that one and, coming later, sits in a
//! higher layer. A box contained in an earlier box can never be the first
//! match; it is dropped ("shadowed"). Rules that do not overlap share a
//! layer whatever their verdicts, so a long list of disjoint rules is one
//! lookup, and a flow costs at most one lookup per layer.
//!
//! Finding overlapping pairs is a sweep along the most selective of the five
//! dimensions (the one with the most distinct ranges), checking the others
//! only for boxes that overlap in that one: `O(n log n + k)` for `k` pairs
//! overlapping in the swept dimension; quadratic only for lists whose boxes
//! pairwise overlap in every dimension.

use crate::flow::{Family, FlowBox};

/// For each box (in priority order): its layer, or `None` when an earlier
/// box contains it.
pub fn assign_layers(boxes: &[FlowBox]) -> Vec<Option<u32>> {
    let mut out = vec![None; boxes.len()];
    for family in Family::BOTH {
        let ids: Vec<usize> = (0..boxes.len()).filter(|&i| boxes[i].family == family).collect();
        if ids.is_empty() {
            continue;
        }
        let dims: Vec<[(u128, u128); 5]> = ids.iter().map(|&i| boxes[i].dims()).collect();
        for (k, layer) in layers_of(&dims).into_iter().enumerate() {
            out[ids[k]] = layer;
        }
    }
    out
}

fn overlaps(a: &[(u128, u128); 5], b: &[(u128, u128); 5]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.0 <= y.1 && y.0 <= x.1)
}

fn within(inner: &[(u128, u128); 5], outer: &[(u128, u128); 5]) -> bool {
    inner.iter().zip(outer).all(|(i, o)| o.0 <= i.0 && i.1 <= o.1)
}

/// The dimension with the most distinct ranges (estimated on a sample of
/// at most 4096 boxes).
fn sweep_dimension(dims: &[[(u128, u128); 5]]) -> usize {
    let step = dims.len().div_ceil(4096).max(1);
    let mut best = (0, 0);
    for d in 0..5 {
        let mut ranges: Vec<(u128, u128)> = dims.iter().step_by(step).map(|b| b[d]).collect();
        ranges.sort_unstable();
        ranges.dedup();
        if ranges.len() > best.1 {
            best = (d, ranges.len());
        }
    }
    best.0
}

fn layers_of(dims: &[[(u128, u128); 5]]) -> Vec<Option<u32>> {
    let n = dims.len();
    let d = sweep_dimension(dims);
    // earlier[j]: the boxes before j (in priority order) that overlap it.
    let mut earlier: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by_key(|&k| (dims[k][d].0, k));
    let mut active: Vec<usize> = Vec::new();
    for &j in &order {
        let lo = dims[j][d].0;
        active.retain(|&i| dims[i][d].1 >= lo);
        for &i in &active {
            if overlaps(&dims[i], &dims[j]) {
                let (a, b) = if i < j { (i, j) } else { (j, i) };
                earlier[b].push(a as u32);
            }
        }
        active.push(j);
    }
    let mut layer: Vec<Option<u32>> = vec![None; n];
    for j in 0..n {
        let mut l = 0u32;
        let mut shadowed = false;
        for &i in &earlier[j] {
            let i = i as usize;
            let Some(li) = layer[i] else { continue };
            if within(&dims[j], &dims[i]) {
                shadowed = true;
                break;
            }
            l = l.max(li + 1);
        }
        if !shadowed {
            layer[j] = Some(l);
        }
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(lo: u16, hi: u16) -> FlowBox {
        FlowBox { proto: (6, 6), dport: (lo, hi), ..FlowBox::everything(Family::V4) }
    }

    #[test]
    fn disjoint_boxes_share_one_layer() {
        let boxes: Vec<FlowBox> = (1..=1000).map(|p| port(p, p)).collect();
        assert!(assign_layers(&boxes).iter().all(|l| *l == Some(0)));
    }

    #[test]
    fn an_overlapping_later_box_goes_above() {
        let l = assign_layers(&[port(80, 80), port(70, 90), port(100, 100), port(85, 200)]);
        assert_eq!(l, vec![Some(0), Some(1), Some(0), Some(2)]);
    }

    #[test]
    fn a_contained_box_is_shadowed() {
        let l = assign_layers(&[port(70, 90), port(80, 80), port(80, 80)]);
        assert_eq!(l, vec![Some(0), None, None]);
    }

    #[test]
    fn families_never_overlap() {
        let v6 = FlowBox::everything(Family::V6);
        assert_eq!(assign_layers(&[port(80, 80), v6, port(80, 80)]), vec![Some(0), Some(0), None]);
    }
}
