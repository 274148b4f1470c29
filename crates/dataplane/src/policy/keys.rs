//! The key fields of the policy verdict maps: which fields of a flow box a
//! map's key holds and in what order (read from the map's name), their nft
//! types and lookup expressions, and a flow box written as a key.

use tessera_policy::Family;

/// The canonical field order of a flow box key.
pub const CANONICAL_ORDER: [usize; 5] = [0, 1, 2, 3, 4];

/// The key fields of a map, from the last part of its name (0 source, 1
/// destination, 2 protocol, 3 source port, 4 destination port): all five
/// for an interval map (`m…`), in lookup order; the exact fields for a hash
/// map (`h…`). Canonical when the name has no valid list.
pub fn map_fields(name: &str) -> Vec<usize> {
    let Some(last) = name.rsplit('_').next() else { return CANONICAL_ORDER.to_vec() };
    let fields: Vec<usize> = last.bytes().map(|b| usize::from(b.wrapping_sub(b'0'))).collect();
    let mut seen = [false; 5];
    let valid = !fields.is_empty() && fields.iter().all(|f| *f < 5 && !std::mem::replace(&mut seen[*f], true));
    let complete = fields.len() == 5 || name.starts_with('h');
    if valid && complete {
        fields
    } else {
        CANONICAL_ORDER.to_vec()
    }
}

/// The address family of a policy map, from its name
/// (`m|h<S>_<D>_<i>_<layer>_<4|6>_…`).
pub fn map_family(name: &str) -> Option<Family> {
    match name.get(1..)?.split('_').nth(4)? {
        "4" => Some(Family::V4),
        "6" => Some(Family::V6),
        _ => None,
    }
}

/// Whether a map is a concatenated interval map (`m…`), rather than a hash
/// of exact keys (`h…`).
pub fn map_is_interval(name: &str) -> bool {
    !name.starts_with('h')
}

/// The data type of a key field.
fn field_type(family: Family, field: usize) -> &'static str {
    match (field, family) {
        (0 | 1, Family::V4) => "ipv4_addr",
        (0 | 1, Family::V6) => "ipv6_addr",
        (2, _) => "inet_proto",
        _ => "inet_service",
    }
}

/// The declaration of the policy verdict map `name`: `type ... : verdict;
/// [flags interval;] counter;`.
pub fn map_type(name: &str, family: Family) -> String {
    let types: Vec<&str> = map_fields(name).iter().map(|f| field_type(family, *f)).collect();
    let flags = if map_is_interval(name) { " flags interval;" } else { "" };
    format!("type {} : verdict;{flags} counter;", types.join(" . "))
}

fn field_expr(family: Family, field: usize) -> String {
    let sel = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    match field {
        0 => format!("{sel} saddr"),
        1 => format!("{sel} daddr"),
        2 => "meta l4proto".to_string(),
        3 => "th sport".to_string(),
        _ => "th dport".to_string(),
    }
}

/// The key expression that looks up a map with these key fields.
pub fn lookup_key(family: Family, fields: &[usize]) -> String {
    fields.iter().map(|f| field_expr(family, *f)).collect::<Vec<_>>().join(" . ")
}

/// A flow box as a key of a map with these key fields (the box's other
/// fields are the map's template).
pub fn key_text(key: &tessera_policy::FlowBox, fields: &[usize]) -> String {
    let canonical = key.to_string();
    let parts: Vec<&str> = canonical.split(" . ").collect();
    fields.iter().map(|f| parts[*f]).collect::<Vec<_>>().join(" . ")
}

/// The key of a flow box in the map `name`.
pub fn map_key_text(name: &str, key: &tessera_policy::FlowBox) -> String {
    key_text(key, &map_fields(name))
}

/// The projection of a flow box on a map's key fields, as ranges.
pub fn key_ranges(key: &tessera_policy::FlowBox, fields: &[usize]) -> Vec<(u128, u128)> {
    let dims = key.dims();
    fields.iter().map(|f| dims[*f]).collect()
}

/// The matches that stand for a hash map's template: the fields not in the
/// key, where they restrict anything (a full address range only fixes the
/// family).
pub(super) fn template_matches(template: &tessera_policy::FlowBox, key_fields: &[usize]) -> String {
    let canonical = template.to_string();
    let parts: Vec<&str> = canonical.split(" . ").collect();
    let dims = template.dims();
    let full = |f: usize| match f {
        0 | 1 => (0, template.family.max()),
        2 => (0, 255),
        _ => (0, 65535),
    };
    let mut out: Vec<String> = Vec::new();
    let addresses_free = !key_fields.contains(&0) && !key_fields.contains(&1) && dims[0] == full(0) && dims[1] == full(1);
    if addresses_free {
        out.push(match template.family {
            Family::V4 => "meta nfproto ipv4".into(),
            Family::V6 => "meta nfproto ipv6".into(),
        });
    }
    for f in 0..5 {
        if !key_fields.contains(&f) && dims[f] != full(f) {
            out.push(format!("{} {}", field_expr(template.family, f), parts[f]));
        }
    }
    out.join(" ")
}

/// The most selective first: fields ordered by how many distinct ranges the
/// boxes have in them (estimated on at most 4096 of them; the canonical
/// order breaks ties).
pub fn selective_order<'a>(keys: impl ExactSizeIterator<Item = &'a tessera_policy::FlowBox> + Clone) -> [usize; 5] {
    let step = keys.len().div_ceil(4096).max(1);
    let mut counts = [0usize; 5];
    for (f, count) in counts.iter_mut().enumerate() {
        let mut ranges: Vec<(u128, u128)> = keys.clone().step_by(step).map(|k| k.dims()[f]).collect();
        ranges.sort_unstable();
        ranges.dedup();
        *count = ranges.len();
    }
    let mut order = CANONICAL_ORDER;
    order.sort_by_key(|f| std::cmp::Reverse(counts[*f]));
    order
}
